using System.Text.RegularExpressions;
using Rannc.Capture;
using Rannc.Samples.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Generators.Tests.EndToEnd;

/// <summary>Names, text and DOT forms, boundary values and the conversion to the partitioner's graph.</summary>
public sealed class GraphFormTests
{
    private static readonly BertConfig s_bert = new(VocabularySize: 19, HiddenSize: 8, Layers: 3, Heads: 2, IntermediateSize: 12, MaxPositions: 6, DropoutProbability: 0);

    [Fact]
    public void ToDot_Bert_ShowsEveryLayerSplitIntoAttentionAndFeedForwardClusters()
    {
        using var scope = torch.NewDisposeScope();
        var graph = CapturedGraph.Build(new BertForMaskedLM(s_bert));
        var dot = graph.ToDot();

        for (var layer = 0; layer < s_bert.Layers; layer++)
        {
            Assert.Contains($"subgraph \"cluster_encoder.layers.{layer}\"", dot);
            Assert.Contains($"subgraph \"cluster_encoder.layers.{layer}.attention\"", dot);
            Assert.Contains($"subgraph \"cluster_encoder.layers.{layer}.feedForward\"", dot);
            Assert.Contains($"encoder.layers.{layer}.attention.matmul", dot);
            Assert.Contains($"encoder.layers.{layer}.feedForward.intermediate", dot);
        }
        Assert.DoesNotContain($"encoder.layers.{s_bert.Layers}.", dot);
        Assert.StartsWith("digraph \"BertForMaskedLM\" {", dot);
        Assert.Equal(dot.Count(c => c == '{'), dot.Count(c => c == '}'));
    }

    [Fact]
    public void Build_Bert_NamesNodesByModulePathWithSourceLocations()
    {
        using var scope = torch.NewDisposeScope();
        var graph = CapturedGraph.Build(new BertForMaskedLM(s_bert));

        var query = graph.Nodes.Single(n => n.Name == "encoder.layers.1.attention.query");
        Assert.Equal(NodeKind.Module, query.Kind);
        Assert.Equal(["encoder.layers.1.attention.query.weight", "encoder.layers.1.attention.query.bias"], query.Parameters);
        Assert.Matches(new Regex(@"^Bert\.cs\(\d+,\d+\)$"), query.Location);

        var softmax = graph.Nodes.Single(n => n.Name == "encoder.layers.2.attention.softmax");
        Assert.Equal(NodeKind.Function, softmax.Kind);
        Assert.Equal("encoder.layers.2.attention", softmax.ModulePath);
        Assert.Empty(softmax.Parameters);

        // shape-derived sizes are graph values, so one graph serves every batch size
        var batch = graph.Values.Where(v => v.Kind == ValueKind.Scalar).ToList();
        Assert.NotEmpty(batch);
        Assert.All(batch, value => Assert.Equal("long", value.TypeName));
    }

    [Fact]
    public void ToText_Mlp_ListsEveryNodeWithItsParametersAndLocation()
    {
        using var scope = torch.NewDisposeScope();
        var graph = CapturedGraph.Build(new Mlp(inputSize: 4, hiddenSize: 5, hiddenLayers: 2, classes: 3));
        var lines = graph.ToText().Split('\n', StringSplitOptions.RemoveEmptyEntries);

        Assert.Equal("graph Rannc.Samples.Models.Mlp(%0 input, %1 labels)", lines[0]);
        Assert.Matches(@"^  %2 = Module hidden\.0 \[forward\]\(%0\)  \{hidden\.0\.weight, hidden\.0\.bias\}  @Mlp\.cs\(\d+,\d+\)$", lines[1]);
        Assert.Contains(lines, line => line.Contains("Function cross_entropy [cross_entropy](", StringComparison.Ordinal));
        Assert.Equal("  return %" + graph.Outputs[0], lines[^1]);
        Assert.Equal(graph.Nodes.Count + 2, lines.Length);
    }

    [Fact]
    public void CreateStage_NonContiguousNodes_ComputesBoundaryValues()
    {
        using var scope = torch.NewDisposeScope();
        var graph = CapturedGraph.Build(new Mlp(inputSize: 4, hiddenSize: 5, hiddenLayers: 2, classes: 3));
        // nodes: 0 hidden.0, 1 relu, 2 hidden.1, 3 relu_1, 4 classifier, 5 cross_entropy
        Assert.Equal(6, graph.Nodes.Count);

        var stage = graph.CreateStage([1, 4]);

        Assert.Equal([1, 4], stage.NodeIds);
        Assert.Equal([graph.Nodes[0].Outputs[0], graph.Nodes[3].Outputs[0]], stage.InputValues);
        Assert.Equal([graph.Nodes[1].Outputs[0], graph.Nodes[4].Outputs[0]], stage.OutputValues);
        Assert.Equal([graph.Nodes[2].Outputs[0], graph.Inputs[1]], graph.ValuesCrossingCut(3));
    }

    [Fact]
    public void ExecuteStage_MissingBoundaryValue_SaysWhichValueIsMissing()
    {
        using var scope = torch.NewDisposeScope();
        var graph = CapturedGraph.Build(new Mlp(inputSize: 4, hiddenSize: 5, hiddenLayers: 1, classes: 3));
        var stages = graph.SplitContiguous([0, 2]);

        var error = Assert.Throws<ArgumentException>(() => graph.ExecuteStage(stages[1], new Dictionary<int, object?>()));

        Assert.Contains("relu", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ToPlanningGraph_Bert_SplitsValueBytesIntoPerSampleAndFixedParts()
    {
        using var scope = torch.NewDisposeScope();
        var model = new BertForMaskedLM(s_bert);
        var graph = CapturedGraph.Build(model);
        object?[] Inputs(int batch) =>
        [
            torch.randint(s_bert.VocabularySize, [batch, 5], dtype: ScalarType.Int64),
            torch.randint(s_bert.VocabularySize, [batch, 5], dtype: ScalarType.Int64),
        ];

        var planning = graph.ToPlanningGraph(microBatchSize: 2, Inputs);

        Assert.Equal(graph.Nodes.Count, planning.Nodes.Count);
        Assert.Equal(graph.Nodes.Select(n => n.Name), planning.Nodes.Select(n => n.Name));
        Assert.Equal(model.named_parameters().Count() + model.named_buffers().Count(), planning.Parameters.Count);
        Assert.Equal(model.parameters().Sum(p => p.NumberOfElements * 4), planning.Parameters.Where(p => p.Trainable).Sum(p => p.Bytes));
        var query = planning.Nodes.Single(n => n.Name == "encoder.layers.0.attention.query");
        var hidden = planning.Values[query.Outputs[0]];
        Assert.Equal(5 * s_bert.HiddenSize * 4, hidden.BytesPerSample);
        Assert.Equal(0, hidden.FixedBytes);
        Assert.True(hidden.RequiresGrad);
        var ids = planning.Values[planning.Inputs[0]];
        Assert.Equal(5 * 8, ids.BytesPerSample);
        Assert.False(ids.RequiresGrad);
        var loss = planning.Values[planning.Outputs[0]];
        Assert.Equal(0, loss.BytesPerSample);
        Assert.Equal(4, loss.FixedBytes);
    }

    [Fact]
    public void Build_ModuleWithoutRaNNC_ThrowsCaptureExceptionThatSaysWhatToDo()
    {
        using var scope = torch.NewDisposeScope();
        var plain = nn.Linear(2, 3);

        var error = Assert.Throws<CaptureException>(() => CapturedGraph.Build(plain));

        Assert.Contains("[RaNNC]", error.Message, StringComparison.Ordinal);
    }
}
