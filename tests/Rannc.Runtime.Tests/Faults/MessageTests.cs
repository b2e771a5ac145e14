using Rannc.Communication;
using Rannc.Execution;
using Rannc.Samples;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Tests.Faults;

/// <summary>Errors say what to do: option errors name the variable and the accepted form, impossible plans name the constraint.</summary>
public sealed class MessageTests
{
    private static readonly SampleTask Mlp = SampleTasks.Mlp(inputSize: 6, hiddenSize: 8, hiddenLayers: 2, classes: 3);

    [Theory]
    [InlineData("RANNC_DEVICE_MEMORY", "0", "RANNC_DEVICE_MEMORY='0' must be a size above zero")]
    [InlineData("RANNC_DEVICE_MEMORY", "12XB", "RANNC_DEVICE_MEMORY='12XB': '12XB' has an unknown unit")]
    [InlineData("RANNC_DEVICE_MEMORY", "lots", "RANNC_DEVICE_MEMORY='lots': 'lots' is not a size")]
    [InlineData("RANNC_PLAN", "2y2", "RANNC_PLAN: '2y2' is not a plan shape")]
    [InlineData("RANNC_SCHEDULE", "zigzag", "RANNC_SCHEDULE: 'zigzag' is not a schedule; use auto, gpipe, 1f1b or zb")]
    [InlineData("RANNC_MICRO_BATCHES", "-1", "RANNC_MICRO_BATCHES='-1' must be a positive integer")]
    [InlineData("RANNC_VERIFY", "yes", "RANNC_VERIFY='yes'")]
    [InlineData("RANNC_MEM_MARGIN", "1.5", "RANNC_MEM_MARGIN='1.5' must be a number in [0, 1)")]
    [InlineData("RANNC_CHECK_INPUTS", "some", "RANNC_CHECK_INPUTS='some' must be 'all' or a number of steps (0 or more)")]
    [InlineData("RANNC_MIN_SLICE_SAMPLES", "0", "RANNC_MIN_SLICE_SAMPLES='0' must be a positive integer")]
    [InlineData("RANNC_PROFILE_REPEATS", "x", "RANNC_PROFILE_REPEATS='x' must be a positive integer")]
    public void BadEnvironmentVariable_NamesTheVariableAndTheForm(string name, string value, string expected)
    {
        var failure = Assert.Throws<FormatException>(() => new RanncOptions().WithVariables(n => n == name ? value : null));
        Assert.Contains(expected, failure.Message);
    }

    [Theory]
    [InlineData(1, 2)]
    [InlineData(3, 2)]
    public void WrongNumberOfInputsAfterTheFirstStep_IsAClearError(int count, int expected)
    {
        Tensor[] batch = Batch();
        var failure = Assert.Throws<RankFailedException>(() => InProcessLauncher.Run(1, comm =>
        {
            using var rannc = Create(comm, new RanncOptions());
            rannc.forward(batch).backward();
            Tensor[] wrong = count < batch.Length ? batch[..count] : [.. batch, batch[0]];
            rannc.forward(wrong);
            return 0;
        }, new InProcessOptions(Timeout: TimeSpan.FromMinutes(1))));
        Assert.Contains($"takes {expected} input(s), but {count} were given", failure.ToString());
    }

    [Fact]
    public void InputOfAnotherDtype_IsAClearError()
    {
        Tensor[] batch = Batch();
        var failure = Assert.Throws<RankFailedException>(() => InProcessLauncher.Run(1, comm =>
        {
            using var rannc = Create(comm, new RanncOptions());
            rannc.forward(batch).backward();
            rannc.forward([batch[0].to_type(ScalarType.Float32), batch[1]]);
            return 0;
        }, new InProcessOptions(Timeout: TimeSpan.FromMinutes(1))));
        string message = failure.ToString();
        Assert.True(message.Contains("is tensor Float32") && message.Contains("the plan was made for tensor Float64"), message);
    }

    [Theory]
    [InlineData("8", null, "has a stage with 8 replicas, but the batch has only 4 samples")]
    [InlineData("1", 6, "asks for 6 micro-batches, but the batch has only 4 samples")]
    [InlineData("2", 4, "4 micro-batches on a stage of 2 replicas need at least 8 samples, but the batch has 4")]
    public void ImpossibleForcedPlan_NamesTheConstraint(string plan, int? microBatches, string expected)
    {
        Tensor[] batch = Batch();
        var options = new RanncOptions { ForcedReplicas = RanncOptions.ParsePlan(plan), MicroBatches = microBatches };
        int ranks = options.ForcedReplicas!.Sum();
        var failure = Assert.Throws<RankFailedException>(() => InProcessLauncher.Run(ranks, comm =>
        {
            using var rannc = Create(comm, options);
            rannc.forward(batch);
            return 0;
        }, new InProcessOptions(Timeout: TimeSpan.FromMinutes(1))));
        Assert.Contains(expected, failure.ToString());
        Assert.DoesNotContain("does not fit", failure.ToString());
    }

    private static Tensor[] Batch() => Mlp.CreateBatch(4, 0).Select(t => t.is_floating_point() ? t.to_type(ScalarType.Float64) : t).ToArray();

    private static RanncModule Create(ICommunicator comm, RanncOptions options)
    {
        nn.Module model = SeededModels.Create(Mlp.CreateModel, 3);
        return new RanncModule(model, torch.optim.SGD(model.parameters(), 0.1), comm,
            options with { PlanCacheDirectory = "", ProfileRepeats = 1, Log = _ => { } });
    }
}
