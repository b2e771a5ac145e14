using Rannc.Capture;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Generators.Tests.EndToEnd;

/// <summary>
/// The captured graph of each sample model, at two sizes, computes exactly what forward() computes, whole and cut into
/// contiguous stages that see only their boundary values.
/// </summary>
public sealed class CaptureEquivalenceTests
{
    // Staged backward adds the gradient contributions of different stages in another order than one backward pass,
    // so gradients may differ in the last bits; anything beyond rounding would show up far above this bound.
    private const double StagedGradientTolerance = 1e-12;

    [Theory]
    [MemberData(nameof(SampleCase.Names), MemberType = typeof(SampleCase))]
    public void Execute_WholeGraph_MatchesForwardLossAndGradientsExactly(string caseName)
    {
        var sample = SampleCase.Get(caseName);
        using var scope = torch.NewDisposeScope();
        var model = sample.CreateModel(seed: 1);
        var inputs = sample.CreateInputs(seed: 2);
        var graph = CapturedGraph.Build(model);

        var expected = GradientTools.RunForward(model, inputs);
        var actual = GradientTools.RunGraph(graph, inputs);

        Assert.Equal(expected.Loss, actual.Loss);
        var (difference, parameter) = GradientTools.MaxDifference(expected.Gradients, actual.Gradients);
        Assert.True(difference == 0, $"gradient of {parameter} differs by {difference}");
        Assert.True(GradientTools.MaxMagnitude(expected.Gradients) > 0, "the reference gradients are all zero; the comparison would prove nothing");
    }

    [Theory]
    [MemberData(nameof(SampleCase.Names), MemberType = typeof(SampleCase))]
    public void ExecuteStage_RandomContiguousCuts_ReproduceLossAndGradients(string caseName)
    {
        var sample = SampleCase.Get(caseName);
        using var scope = torch.NewDisposeScope();
        var model = sample.CreateModel(seed: 3);
        var inputs = sample.CreateInputs(seed: 4);
        var graph = CapturedGraph.Build(model);
        var expected = GradientTools.RunForward(model, inputs);
        var scale = GradientTools.MaxMagnitude(expected.Gradients);
        var random = new Random(caseName.Length * 7919);
        Assert.True(graph.Nodes.Count >= 8, $"{caseName} has {graph.Nodes.Count} nodes, too few for 8 stages");

        for (var stageCount = 2; stageCount <= 8; stageCount++)
        {
            var starts = RandomStarts(random, graph.Nodes.Count, stageCount);
            var stages = graph.SplitContiguous(starts);
            using var stageScope = torch.NewDisposeScope();
            var actual = GradientTools.RunStaged(graph, stages, inputs);

            Assert.True(expected.Loss == actual.Loss, $"{stageCount} stages starting at [{string.Join(", ", starts)}]: loss {actual.Loss} != {expected.Loss}");
            var (difference, parameter) = GradientTools.MaxDifference(expected.Gradients, actual.Gradients);
            Assert.True(difference <= StagedGradientTolerance * scale,
                $"{stageCount} stages starting at [{string.Join(", ", starts)}]: gradient of {parameter} differs by {difference} (scale {scale})");
        }
    }

    [Theory]
    [MemberData(nameof(SampleCase.Names), MemberType = typeof(SampleCase))]
    public void Build_OwnedParameterNames_CoverNamedParametersExactlyOnce(string caseName)
    {
        var sample = SampleCase.Get(caseName);
        using var scope = torch.NewDisposeScope();
        var model = sample.CreateModel(seed: 5);
        var graph = CapturedGraph.Build(model);

        var owned = graph.Nodes.SelectMany(n => n.Parameters).ToList();
        var named = model.named_parameters().Select(p => p.name).ToList();
        Assert.Equal(named.Order(StringComparer.Ordinal), owned.Order(StringComparer.Ordinal));
        var ownedBuffers = graph.Nodes.SelectMany(n => n.Buffers).ToList();
        var namedBuffers = model.named_buffers().Select(b => b.name).ToList();
        Assert.Equal(namedBuffers.Order(StringComparer.Ordinal), ownedBuffers.Order(StringComparer.Ordinal));
        Assert.Equal(named.Count + namedBuffers.Count, graph.Parameters.Count);
    }

    [Theory]
    [MemberData(nameof(SampleCase.Names), MemberType = typeof(SampleCase))]
    public void Build_SameModelTwice_GivesTheSameNodesInTheSameOrder(string caseName)
    {
        var sample = SampleCase.Get(caseName);
        using var scope = torch.NewDisposeScope();
        var first = CapturedGraph.Build(sample.CreateModel(seed: 6));
        var second = CapturedGraph.Build(sample.CreateModel(seed: 7));

        Assert.Equal(first.ToText(), second.ToText());
        Assert.Equal(first.Nodes.Count, first.Nodes.Select(n => n.Name).Distinct().Count());
        for (var i = 0; i < first.Nodes.Count; i++)
        {
            // topological: every input is a graph input or produced by an earlier node
            Assert.All(first.Nodes[i].Inputs, value => Assert.True(first.Values[value].Producer < i));
        }
    }

    private static int[] RandomStarts(Random random, int nodeCount, int stageCount)
    {
        var cuts = new SortedSet<int>();
        while (cuts.Count < stageCount - 1)
        {
            cuts.Add(random.Next(1, nodeCount));
        }
        return [0, .. cuts];
    }
}
