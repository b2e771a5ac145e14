using Rannc.Communication;
using Rannc.Execution;
using Rannc.Partitioner;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace Rannc.Tests.Training;

/// <summary>A classifier whose forward() returns logits; the loss is computed by the caller.</summary>
[RaNNC]
public sealed partial class LogitsNet : Module<Tensor, Tensor>
{
    private readonly Linear first;
    private readonly Linear second;
    private readonly Linear third;

    public LogitsNet()
        : base(nameof(LogitsNet))
    {
        first = Linear(5, 12);
        second = Linear(12, 12);
        third = Linear(12, 4);
        RegisterComponents();
    }

    public override Tensor forward(Tensor input) => third.forward(functional.tanh(second.forward(functional.relu(first.forward(input)))));
}

/// <summary>
/// A model that returns logits: the output is gathered to every rank, the caller computes the loss, and
/// <c>backward</c> with its gradient runs the pipeline's backward passes; training equals plain TorchSharp.
/// </summary>
public sealed class OutputTrainingTests
{
    [Theory]
    [InlineData("2x1", "gpipe")]
    [InlineData("2x2", "auto")]
    [InlineData("1x2", "gpipe")]
    [InlineData("3x1", "auto")]
    public void LogitsModel_TrainedWithTheCallersLoss_MatchesSingleProcessTraining(string plan, string schedule)
    {
        using var inputs = torch.randn([8, 5], ScalarType.Float64, generator: new Generator(3));
        using var labels = torch.randint(0, 4, [8], ScalarType.Int64, generator: new Generator(4));
        var reference = (LogitsNet)SeededModels.Create(() => new LogitsNet(), 17);
        var referenceOptimizer = torch.optim.SGD(reference.parameters(), learningRate: 0.1);
        var expected = new List<double>();
        for (int step = 0; step < 3; step++)
        {
            referenceOptimizer.zero_grad();
            Tensor loss = functional.cross_entropy(reference.forward(inputs), labels);
            loss.backward();
            referenceOptimizer.step();
            expected.Add(loss.item<double>());
        }

        IReadOnlyList<int> replicas = RanncOptions.ParsePlan(plan)!;
        var results = InProcessLauncher.Run(replicas.Sum(), comm =>
        {
            nn.Module model = SeededModels.Create(() => new LogitsNet(), 17);
            var optimizer = torch.optim.SGD(model.parameters(), learningRate: 0.1);
            using var rannc = new RanncModule(model, optimizer, comm, new RanncOptions
            {
                ForcedReplicas = replicas, Schedule = RanncOptions.ParseSchedule(schedule), PlanCacheDirectory = "", Log = _ => { },
            });
            var losses = new List<double>();
            for (int step = 0; step < 3; step++)
            {
                optimizer.zero_grad();
                Tensor logits = rannc.forward(inputs);
                Tensor loss = functional.cross_entropy(logits, labels);
                loss.backward();
                optimizer.step();
                losses.Add(loss.item<double>());
            }
            // The executor runs every forward before the caller's loss exists: the plan must be GPipe's, whose memory it counts.
            Assert.Equal(PipelineScheduleKind.GPipe, rannc.Plan!.Schedule);
            return (losses, rannc.StateDict());
        }, new InProcessOptions(Timeout: TimeSpan.FromMinutes(2)));

        var referenceState = reference.state_dict();
        foreach ((List<double> losses, Dictionary<string, Tensor> state) in results)
        {
            for (int s = 0; s < 3; s++) Assert.True(Math.Abs(losses[s] - expected[s]) <= 1e-9 * expected[s], $"step {s}: {expected[s]:R} vs {losses[s]:R}");
            foreach ((string name, Tensor value) in referenceState)
                Assert.True((state[name] - value).abs().max().item<double>() <= 1e-9 * value.abs().max().item<double>(), $"{name} differs");
        }
    }

    [Theory]
    [InlineData("1f1b")]
    [InlineData("zb")]
    public void LogitsModel_WithAScheduleOtherThanGPipe_IsRefusedSayingWhy(string schedule)
    {
        using var inputs = torch.randn([8, 5], ScalarType.Float64, generator: new Generator(3));
        var failure = Assert.Throws<RankFailedException>(() => InProcessLauncher.Run(2, comm =>
        {
            nn.Module model = SeededModels.Create(() => new LogitsNet(), 17);
            using var rannc = new RanncModule(model, torch.optim.SGD(model.parameters(), learningRate: 0.1), comm, new RanncOptions
            {
                ForcedReplicas = [1, 1], Schedule = RanncOptions.ParseSchedule(schedule), PlanCacheDirectory = "", Log = _ => { },
            });
            return rannc.forward(inputs).sum().item<double>();
        }, new InProcessOptions(Timeout: TimeSpan.FromMinutes(2))));
        Assert.Contains("returns a tensor that is not the loss", failure.ToString());
        Assert.Contains("runs every forward first (GPipe)", failure.ToString());
    }
}
