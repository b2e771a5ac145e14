using Rannc.Capture;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Tests.Zoo;

/// <summary>
/// Models written the way TorchSharp code is written (Sequential stages, abstract Module fields, in-place
/// activations), with only [RaNNC] and partial added: each captures one node per layer and trains, cut inside its
/// Sequentials, exactly as plain TorchSharp does (float64, 1e-9), with SGD and Adam, on 2 and 4 in-process ranks.
/// </summary>
public sealed class ZooTests
{
    private static readonly Dictionary<string, ZooModel> Models = new()
    {
        ["resnet"] = ZooCatalog.ResNet,
        ["vgg"] = ZooCatalog.Vgg,
        ["mobilenet"] = ZooCatalog.MobileNet,
        ["inplace"] = ZooCatalog.InPlace,
        ["alias"] = ZooCatalog.Alias,
        ["unet"] = ZooCatalog.UNet,
        ["transformer"] = ZooCatalog.Transformer,
        ["text"] = ZooCatalog.TextClassifier,
        ["llama"] = ZooCatalog.Llama,
    };

    /// <summary>Per model: the planner's cut, and hand-made cuts inside Sequentials (before in-place layers where possible).</summary>
    public static TheoryData<string, string, string, string> Cases()
    {
        var data = new TheoryData<string, string, string, string>();
        void Add(string model, string two, string four, string twoByTwo)
        {
            data.Add(model, "planned 1,1", "gpipe", "sgd");
            data.Add(model, $"{two} 1,1", "1f1b", "adam");
            data.Add(model, $"{four} 1,1,1,1", "1f1b", "sgd");
            data.Add(model, $"{twoByTwo} 2,2", "gpipe", "adam");
        }
        Add("resnet", "layer1.1.conv1", "layer1.0.relu;layer1.1.conv1;layer2.0.conv2", "layer1.1.bn1");
        Add("vgg", "features.4", "features.1;features.4;classifier.1", "features.5");
        Add("mobilenet", "features.4.conv.2", "features.3.conv.2;features.4.conv.3;features.5.conv.5", "features.5.conv.2");
        Add("inplace", "relu_", "relu_;mul_;act_1", "mul_");
        Add("unet", "down1.1.3", "inc.2;down2.1.0;conv1.3", "down1.1.2");
        // Sequence-first inputs ([Batch(1)]) with a shared [NotBatched] mask, and a ragged batch cut by its offsets.
        Add("transformer", "decoder.0.feedForward.1", "encoder.0.feedForward.1;encoder.1.feedForward.2;decoder.1.feedForward.1", "encoder.1.feedForward.1");
        Add("text", "classifier.3", "classifier.1;classifier.3;classifier.5", "classifier.1");
        // Blocks of four arguments, a shape branch for the mask, a rotary table every stage reads (cuts between layers, no Sequential).
        Add("llama", "layers.0.ffnNorm.pow", "layers.0.wk;layers.0.ffnNorm.pow;layers.1.wv", "layers.1.attentionNorm.pow");
        // The middle stage writes into a received value that the last stage reads too: its gradient flows back through the ReLU.
        data.Add("alias", "act;addition 1,1,1", "1f1b", "sgd");
        data.Add("alias", "act;addition 1,1,1", "gpipe", "adam");
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Zoo_TrainsLikePlainTorchSharp(string model, string plan, string schedule, string optimizer)
    {
        string[] parts = plan.Split(' ');
        var replicas = parts[1].Split(',').Select(int.Parse).ToList();
        var zooPlan = parts[0] == "planned"
            ? new ZooPlan(replicas)
            : new ZooPlan(replicas, parts[0].Split(';'), InsideSequential: model is not ("inplace" or "alias" or "llama"));
        ZooHarness.AssertMatchesReference(Models[model], zooPlan, schedule, optimizer);
    }

    [Theory]
    [InlineData("resnet")]
    [InlineData("vgg")]
    [InlineData("mobilenet")]
    [InlineData("inplace")]
    [InlineData("unet")]
    [InlineData("transformer")]
    [InlineData("text")]
    [InlineData("llama")]
    public void Zoo_CapturesOneNodePerLeafLayer(string model)
    {
        nn.Module module = ZooHarness.CreateSeeded(Models[model]);
        ZooHarness.AssertOneNodePerLeafLayer(module, CapturedGraph.Build(module, ZooHarness.BatchOf(Models[model], 0).Cast<object?>().ToArray()));
    }

    /// <summary>[RaNNC] blocks are inlined whatever holds them; a Sequential inside a Sequential expands; a plain module stays one named node.</summary>
    [Fact]
    public void Containers_AreLookedThroughAndTheOpaqueModuleIsReported()
    {
        nn.Module model = ZooCatalog.Containers.Create();
        CapturedGraph graph = CapturedGraph.Build(model);
        var names = graph.Nodes.Select(n => n.Name).ToList();
        foreach (string path in new[] { "single", "list.0", "list.1", "dict.gate", "nested.0", "nested.2" })
        {
            Assert.Contains(path + ".linear", names);
            Assert.Contains(path + ".tanh", names);
        }
        // The array's and the list's elements are not registered submodules, so their nodes take the loop variable's name.
        Assert.Equal(3, names.Count(n => n.StartsWith("unit.linear", StringComparison.Ordinal)));
        Assert.Contains("nested.1.0", names);
        Assert.Contains("nested.1.1", names);
        CapturedNode head = graph.Nodes.Single(n => n.Name == "head");
        Assert.Contains("ZooOpaqueHead is not marked [RaNNC]", head.OpaqueReason);
        Assert.True(head.ModifiesInput); // unknown code may write into its input: it gets a copy where that matters
        string summary = OpaqueModules.Summary(graph)!;
        Assert.StartsWith("1 opaque module holds ", summary);
        Assert.Contains("head (ZooOpaqueHead is not marked [RaNNC]", summary);

        using var input = torch.randn([4, 6], generator: new Generator(9));
        using var labels = torch.tensor(new long[] { 0, 1, 2, 1 });
        var expected = ((nn.Module<Tensor, Tensor, Tensor>)model).forward(input, labels).item<float>();
        var actual = ((Tensor)graph.Execute(input, labels)[0]!).item<float>();
        Assert.Equal(expected, actual);
    }

    /// <summary>The graph runs an in-place ReLU module on its input on a copy, so the caller's tensor is unchanged.</summary>
    [Fact]
    public void InPlaceOnGraphInput_LeavesTheCallersTensorUnchanged()
    {
        var model = (nn.Module<Tensor, Tensor, Tensor>)ZooCatalog.InPlace.Create();
        CapturedGraph graph = CapturedGraph.Build(model);
        Assert.Equal(["act", "relu_", "mul_", "add_", "act_1"], graph.Nodes.Where(n => n.ModifiesInput).Select(n => n.Name));
        using var input = torch.randn([4, 5], generator: new Generator(2));
        using var copy = input.clone();
        using var labels = torch.tensor(new long[] { 0, 1, 2, 1 });
        var actual = ((Tensor)graph.Execute(input, labels)[0]!).item<float>();
        Assert.True(input.eq(copy).all().item<bool>());
        Assert.Equal(model.forward(input.clone(), labels).item<float>(), actual);
    }

    /// <summary>A node that fails says which node and where, with libtorch's first line and not its C++ stack.</summary>
    [Fact]
    public void FailingNode_NamesTheNodeAndItsSourceLine()
    {
        CapturedGraph graph = CapturedGraph.Build(ZooCatalog.InPlace.Create());
        using var wrongWidth = torch.randn([4, 7]);
        using var labels = torch.tensor(new long[] { 0, 1, 2, 1 });
        var error = Assert.Throws<NodeExecutionException>(() => graph.Execute(wrongWidth, labels));
        Assert.Equal("fc1", error.NodeName);
        Assert.StartsWith("Node 'fc1' (ZooContainers.cs(", error.Message);
        Assert.DoesNotContain("\n", error.Message);
    }
}
