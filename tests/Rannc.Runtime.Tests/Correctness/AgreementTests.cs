using Rannc.Communication;
using Rannc.Execution;
using Rannc.Samples;
using Rannc.Samples.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Tests.Correctness;

/// <summary>
/// Ranks that start, feed or step differently: rank 0's weights are broadcast at deployment, and inputs, training mode
/// and backward calls are compared on every step, so these fail clearly or train right instead of silently wrong.
/// </summary>
public sealed class AgreementTests
{
    private static readonly SampleTask Mlp = SampleTasks.Mlp(inputSize: 6, hiddenSize: 10, hiddenLayers: 3, classes: 3);

    private static Tensor[][] MlpBatches(int steps) =>
        Enumerable.Range(0, steps).Select(step => Mlp.CreateBatch(8, step).Select(t => t.is_floating_point() ? t.to_type(ScalarType.Float64) : t).ToArray()).ToArray();

    /// <summary>The README's snippet without a lock: every rank seeds differently; all train like plain TorchSharp seeded as rank 0.</summary>
    [Theory]
    [InlineData(OptimizerKind.Sgd, "2,2", "1f1b")]
    [InlineData(OptimizerKind.Adam, "1,1,1", "gpipe")]
    [InlineData(OptimizerKind.Sgd, "4", "gpipe")]
    public void RanksSeededDifferently_TrainLikeRankZero(OptimizerKind optimizer, string plan, string schedule)
    {
        Tensor[][] batches = MlpBatches(3);
        var reference = Equivalence.Reference(Mlp.CreateModel, 100, batches, optimizer);
        var ranks = Equivalence.Rannc(Mlp.CreateModel, rank => 100 + 17 * rank, batches, optimizer,
            plan.Split(',').Select(int.Parse).ToList(), schedule, microBatches: 2);
        Equivalence.AssertEqual(reference, ranks);
    }

    [Fact]
    public void RankGivenADifferentBatch_FailsNamingTheInput()
    {
        Tensor[][] batches = MlpBatches(2);
        Tensor[] other = MlpBatches(3)[2];
        var failure = Assert.Throws<RankFailedException>(() => Equivalence.Rannc(Mlp.CreateModel, _ => 1, batches, OptimizerKind.Sgd, [1, 1], "gpipe",
            batchOfRank: (rank, step) => rank == 1 && step == 1 ? other : batches[step]));
        string message = Flatten(failure);
        Assert.Contains("disagree at step 1", message);
        Assert.Contains("input 0 differs", message);
        Assert.Contains("rank 1:", message);
    }

    [Fact]
    public void RankThatSkipsBackward_FailsAtTheNextStep()
    {
        Tensor[][] batches = MlpBatches(3);
        var options = new RanncOptions { ForcedReplicas = [1, 1], PlanCacheDirectory = "", ProfileRepeats = 1, Log = _ => { } };
        var failure = Assert.Throws<RankFailedException>(() => InProcessLauncher.Run(2, comm =>
        {
            nn.Module model = SeededModels.Create(Mlp.CreateModel, 3);
            var optimizer = torch.optim.SGD(model.parameters(), 0.1);
            using var rannc = new RanncModule(model, optimizer, comm, options);
            for (int step = 0; step < batches.Length; step++)
            {
                optimizer.zero_grad();
                Tensor loss = rannc.forward(batches[step]);
                if (!(comm.Rank == 0 && step == 1)) loss.backward();
                optimizer.step();
            }
            return 0;
        }, new InProcessOptions(Timeout: TimeSpan.FromMinutes(1))));
        string message = Flatten(failure);
        Assert.Contains("did not call backward()", message);
        Assert.Contains("rank 0: skipped backward of step 1", message);
    }

    [Fact]
    public void RankThatDoesNotTrain_WhileOthersDo_Fails()
    {
        Tensor[][] batches = MlpBatches(1);
        var options = new RanncOptions { ForcedReplicas = [2], PlanCacheDirectory = "", ProfileRepeats = 1, Log = _ => { } };
        var failure = Assert.Throws<RankFailedException>(() => InProcessLauncher.Run(2, comm =>
        {
            nn.Module model = SeededModels.Create(Mlp.CreateModel, 3);
            using var rannc = new RanncModule(model, torch.optim.SGD(model.parameters(), 0.1), comm, options);
            using var noGrad = comm.Rank == 1 ? torch.no_grad() : null;
            rannc.forward(batches[0]);
            return 0;
        }, new InProcessOptions(Timeout: TimeSpan.FromMinutes(1))));
        Assert.Contains("some ranks train and others do not", Flatten(failure));
    }

    /// <summary>NaN in the input of step 1 propagates as in plain TorchSharp: NaN losses, no crash.</summary>
    [Theory]
    [InlineData("1,1", "1f1b", OptimizerKind.Sgd)]
    [InlineData("2,1", "gpipe", OptimizerKind.Sgd)]
    [InlineData("1,2", "1f1b", OptimizerKind.Adam)]
    public void NaNInTheInput_GivesNaNLossesLikePlainTorchSharp(string plan, string schedule, OptimizerKind optimizer)
    {
        Tensor[][] batches = MlpBatches(3);
        batches[1][0] = batches[1][0].clone();
        batches[1][0][3, 2] = torch.tensor(double.NaN, ScalarType.Float64);
        var reference = Equivalence.Reference(Mlp.CreateModel, 5, batches, optimizer);
        Assert.True(double.IsNaN(reference.Losses[1]));
        var ranks = Equivalence.Rannc(Mlp.CreateModel, _ => 5, batches, optimizer, plan.Split(',').Select(int.Parse).ToList(), schedule, microBatches: 2);
        foreach (var rank in ranks)
        {
            for (int s = 0; s < batches.Length; s++) Equivalence.AssertClose(reference.Losses[s], rank.Losses[s], $"loss of step {s}");
        }
    }

    private static string Flatten(Exception e) => e.InnerException is null ? e.Message : e.Message + "\n" + Flatten(e.InnerException);
}

/// <summary>Options and plans come from one place: ranks with different budgets plan together; different options fail clearly.</summary>
public sealed class SharedDecisionTests
{
    private static readonly SampleTask Mlp = SampleTasks.Mlp(inputSize: 6, hiddenSize: 10, hiddenLayers: 3, classes: 3);

    [Fact]
    public void RanksWithDifferentBudgets_ShareOnePlanForTheSmallest()
    {
        Tensor[] batch = Mlp.CreateBatch(8, 0).Select(t => t.is_floating_point() ? t.to_type(ScalarType.Float64) : t).ToArray();
        var plans = InProcessLauncher.Run(2, comm =>
        {
            var options = new RanncOptions { DeviceMemoryBytes = comm.Rank == 0 ? 1L << 30 : 1L << 29, PlanCacheDirectory = "", ProfileRepeats = 1, Log = _ => { } };
            nn.Module model = SeededModels.Create(Mlp.CreateModel, 3);
            using var rannc = new RanncModule(model, torch.optim.SGD(model.parameters(), 0.1), comm, options);
            rannc.forward(batch).backward();
            return Rannc.Partitioner.PlanJson.Serialize(rannc.Plan!);
        }, new InProcessOptions(Timeout: TimeSpan.FromMinutes(1)));
        Assert.Equal(plans[0], plans[1]);
    }

    [Fact]
    public void RanksWithDifferentOptions_FailNamingTheOption()
    {
        Tensor[] batch = Mlp.CreateBatch(8, 0).Select(t => t.is_floating_point() ? t.to_type(ScalarType.Float64) : t).ToArray();
        var failure = Assert.Throws<RankFailedException>(() => InProcessLauncher.Run(2, comm =>
        {
            var options = new RanncOptions { ForcedReplicas = comm.Rank == 0 ? [1, 1] : [2], PlanCacheDirectory = "", ProfileRepeats = 1, Log = _ => { } };
            nn.Module model = SeededModels.Create(Mlp.CreateModel, 3);
            using var rannc = new RanncModule(model, torch.optim.SGD(model.parameters(), 0.1), comm, options);
            rannc.forward(batch);
            return 0;
        }, new InProcessOptions(Timeout: TimeSpan.FromMinutes(1))));
        Assert.Contains("started with different Rannc options", failure.ToString());
        Assert.Contains("Plan: rank 0: 1,1; rank 1: 2", failure.ToString());
    }
}
