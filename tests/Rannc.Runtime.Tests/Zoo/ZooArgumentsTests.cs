using Rannc.Communication;
using Rannc.Execution;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Tests.Zoo;

/// <summary>RanncModule.forward with a number and an optional tensor argument (given or null), against plain TorchSharp.</summary>
public sealed class ZooArgumentsTests
{
    private const int Batch = 8;

    [Theory]
    [InlineData(true, "1,1", "gpipe", "sgd")]
    [InlineData(false, "1,1", "1f1b", "adam")]
    [InlineData(true, "2,2", "1f1b", "adam")]
    [InlineData(false, "1,1,1", "gpipe", "sgd")]
    public void NumberAndOptionalArguments_TrainLikePlainTorchSharp(bool withScale, string plan, string schedule, string optimizerName)
    {
        object?[] Arguments(int step) =>
            [ZooData.Vectors(Batch, 7, step), 2L, withScale ? torch.linspace(0.5, 1.5, 10, ScalarType.Float64) : null, ZooData.Labels(Batch, 3, step)];

        var reference = (ZooArgumentsNet)SeededModels.Create(() => new ZooArgumentsNet(), 4321);
        optim.Optimizer referenceOptimizer = CreateOptimizer(reference, optimizerName);
        (double[] referenceLosses, _) = TrainingLoop.Run(reference, referenceOptimizer, step =>
        {
            object?[] a = Arguments(step);
            return reference.forward((Tensor)a[0]!, (long)a[1]!, (Tensor?)a[2], (Tensor)a[3]!);
        }, ZooHarness.Steps);
        var referenceParameters = reference.named_parameters().ToDictionary(p => p.name, p => p.parameter.detach().clone());

        var replicas = plan.Split(',').Select(int.Parse).ToList();
        var options = new RanncOptions
        {
            ForcedReplicas = replicas, Schedule = RanncOptions.ParseSchedule(schedule), PlanCacheDirectory = "", ProfileRepeats = 1,
            MicroBatches = 2, Log = _ => { },
        };
        var results = InProcessLauncher.Run(replicas.Sum(), comm =>
        {
            var model = (ZooArgumentsNet)SeededModels.Create(() => new ZooArgumentsNet(), 4321);
            optim.Optimizer optimizer = CreateOptimizer(model, optimizerName);
            using var rannc = new RanncModule(model, optimizer, comm, options);
            (double[] losses, _) = TrainingLoop.Run(model, optimizer, step => rannc.forward(Arguments(step)), ZooHarness.Steps);
            Assert.Equal(replicas.Count, rannc.Plan!.Stages.Count);
            return (losses, rannc.StateDict());
        }, new InProcessOptions(Timeout: TimeSpan.FromMinutes(2)));

        foreach ((double[] losses, Dictionary<string, Tensor> state) in results)
        {
            for (int s = 0; s < ZooHarness.Steps; s++)
                Assert.True(Math.Abs(referenceLosses[s] - losses[s]) <= 1e-9 * Math.Abs(referenceLosses[s]), $"loss of step {s}: {referenceLosses[s]:R} vs {losses[s]:R}");
            foreach ((string name, Tensor value) in referenceParameters) ZooHarness.AssertClose(value, state[name], $"parameter {name}", 0);
        }
    }

    [Theory]
    [InlineData(1, "Int64 1", "Int64 2")]
    [InlineData(2, "tensor Float64 with 1 dimension(s)", "null")]
    public void AnArgumentThatChangesAfterTheFirstStep_IsRefusedNamingIt(int changed, string now, string first)
    {
        object?[] Arguments(int step)
        {
            object?[] a = [ZooData.Vectors(Batch, 7, step), 2L, null, ZooData.Labels(Batch, 3, step)];
            if (step == 1 && changed == 1) a[1] = 1L;
            if (step == 1 && changed == 2) a[2] = torch.ones(10, ScalarType.Float64);
            return a;
        }
        var options = new RanncOptions { ForcedReplicas = [1, 1], PlanCacheDirectory = "", ProfileRepeats = 1, Log = _ => { } };
        var error = Assert.Throws<RankFailedException>(() => InProcessLauncher.Run(2, comm =>
        {
            var model = (ZooArgumentsNet)SeededModels.Create(() => new ZooArgumentsNet(), 4321);
            var optimizer = torch.optim.SGD(model.parameters(), learningRate: 0.1);
            using var rannc = new RanncModule(model, optimizer, comm, options);
            TrainingLoop.Run(model, optimizer, step => rannc.forward(Arguments(step)), 2);
        }, new InProcessOptions(Timeout: TimeSpan.FromMinutes(2))));
        Assert.IsType<ArgumentException>(error.InnerException);
        string name = changed == 1 ? "start" : "scale";
        Assert.Contains($"Argument {changed} ('{name}') of forward() is {now}, but the plan was made for {first}", error.InnerException!.Message);
    }

    private static optim.Optimizer CreateOptimizer(nn.Module model, string name) => name == "sgd"
        ? torch.optim.SGD(model.parameters(), learningRate: 0.1)
        : torch.optim.Adam(model.parameters(), lr: 0.01);
}
