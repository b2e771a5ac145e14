using Rannc.Samples;
using Rannc.Samples.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Tests.Correctness;

/// <summary>
/// The zero-bubble schedule (RANNC_SCHEDULE=zb: each backward split into an input-gradient pass and a later
/// weight-gradient pass) trains exactly like plain TorchSharp: losses, last-step gradients and final parameters in
/// float64 to 1e-9, with SGD and Adam, on 2 and 4 in-process ranks (pipelines and a replicated stage).
/// </summary>
public sealed class ZeroBubbleEquivalenceTests
{
    private const int BatchSize = 8;

    private static (Func<nn.Module> Create, Tensor[][] Batches) Task(string name, int steps)
    {
        SampleTask task = name switch
        {
            "mlp" => SampleTasks.Mlp(inputSize: 6, hiddenSize: 10, hiddenLayers: 4, classes: 3),
            _ => SampleTasks.Bert(new BertConfig(40, 16, 2, 2, 24, 8, 0), sequenceLength: 6, maskedPerSequence: 2),
        };
        Tensor[][] batches = Enumerable.Range(0, steps)
            .Select(step => task.CreateBatch(BatchSize, step).Select(t => t.is_floating_point() ? t.to_type(ScalarType.Float64) : t).ToArray())
            .ToArray();
        return (task.CreateModel, batches);
    }

    [Theory]
    [InlineData("mlp", OptimizerKind.Sgd, "1,1", 4)]
    [InlineData("mlp", OptimizerKind.Adam, "1,1", 4)]
    [InlineData("mlp", OptimizerKind.Sgd, "1,1,1,1", 4)]
    [InlineData("mlp", OptimizerKind.Adam, "1,1,1,1", 8)]
    [InlineData("mlp", OptimizerKind.Adam, "2,1,1", 2)]
    [InlineData("bert", OptimizerKind.Sgd, "1,1", 4)]
    [InlineData("bert", OptimizerKind.Adam, "1,1,1,1", 4)]
    [InlineData("bert", OptimizerKind.Sgd, "1,2,1", 2)]
    public void ZeroBubble_TrainsLikePlainTorchSharp(string model, OptimizerKind optimizer, string plan, int microBatches)
    {
        (Func<nn.Module> create, Tensor[][] batches) = Task(model, steps: 3);

        var reference = Equivalence.Reference(create, 7, batches, optimizer);
        var ranks = Equivalence.Rannc(create, _ => 7, batches, optimizer, plan.Split(',').Select(int.Parse).ToList(), "zb", microBatches);

        Equivalence.AssertEqual(reference, ranks);
    }
}

/// <summary>
/// Micro-batch counts above the former caps (64 in the planner, 128 in the executor): message tags now number the
/// values of the plan's widest boundary only, so a narrow pipeline runs hundreds of micro-batches, equal to plain TorchSharp.
/// </summary>
public sealed class ManyMicroBatchTests
{
    [Theory]
    [InlineData("1f1b")]
    [InlineData("zb")]
    public void ManyMicroBatches_TrainLikePlainTorchSharp(string schedule)
    {
        SampleTask task = SampleTasks.Mlp(inputSize: 6, hiddenSize: 10, hiddenLayers: 2, classes: 3);
        Tensor[][] batches = Enumerable.Range(0, 2)
            .Select(step => task.CreateBatch(300, step).Select(t => t.is_floating_point() ? t.to_type(ScalarType.Float64) : t).ToArray())
            .ToArray();

        var reference = Equivalence.Reference(task.CreateModel, 5, batches, OptimizerKind.Adam);
        var ranks = Equivalence.Rannc(task.CreateModel, _ => 5, batches, OptimizerKind.Adam, [1, 1], schedule, microBatches: 300);

        Equivalence.AssertEqual(reference, ranks);
    }
}
