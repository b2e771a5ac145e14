using System.Reflection;
using Rannc.Capture;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Generators.Tests.Generator;

/// <summary>
/// The constructs the generator must capture (two and three inputs, tuple results, call and property submodules,
/// configuration if/switch/?:, for and foreach loops, helpers, deconstruction, dispose scopes, parameters and buffers,
/// integer values), compiled in memory, executed through the captured graph and compared with forward().
/// </summary>
public sealed class FeatureCaptureTests
{
    private static readonly Lazy<Assembly> s_assembly = new(() =>
    {
        var (output, _) = CompilationHelper.Generate(FeatureModels.Source);
        Assert.Empty(CompilationHelper.CompilerErrors(output));
        // the only finding: the loop over tail.children() calls modules through the abstract Module<Tensor, Tensor>
        Assert.Equal(["RANNC0009"], CompilationHelper.Analyze(FeatureModels.Source).Select(d => d.Id));
        return CompilationHelper.EmitAndLoad(output);
    });

    [Theory]
    [InlineData(2, "Relu", true, "mean")]
    [InlineData(0, "Gelu", false, "max")]
    [InlineData(5, "Tanh", true, "sum")]
    public void Execute_FeatureModel_MatchesForwardOutputsAndGradients(int repeats, string activation, bool useBias, string pooling)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(11);
        var model = CreateFeatures(width: 4, repeats, activation, useBias, pooling);
        var inputs = new object[]
        {
            torch.randn([3, 4], dtype: ScalarType.Float64),
            torch.randn([3, 4], dtype: ScalarType.Float64),
            torch.ones([3, 2], dtype: ScalarType.Int64),
        };
        var graph = CapturedGraph.Build(model);

        var (expectedResult, expectedCount) = ((nn.Module<Tensor, Tensor, Tensor, (Tensor, Tensor)>)model)
            .forward((Tensor)inputs[0], (Tensor)inputs[1], (Tensor)inputs[2]);
        expectedResult.sum().backward();
        var expectedGradients = model.named_parameters().ToDictionary(p => p.name, p => p.parameter.grad?.clone() ?? torch.zeros_like(p.parameter));
        model.zero_grad();
        var outputs = graph.Execute(inputs);
        ((Tensor)outputs[0]!).sum().backward();

        Assert.Equal(2, outputs.Length);
        Assert.True(Same(expectedResult, (Tensor)outputs[0]!), "first output differs");
        Assert.True(Same(expectedCount, (Tensor)outputs[1]!), "second output differs");
        foreach (var (name, parameter) in model.named_parameters())
        {
            Assert.True(Same(expectedGradients[name], parameter.grad ?? torch.zeros_like(parameter)), $"gradient of {name} differs");
        }
        // loop trip counts and branch arms come from the instance
        Assert.Equal(repeats, graph.Nodes.Count(n => n.Name.StartsWith("stack.", StringComparison.Ordinal)));
        Assert.Contains(graph.Nodes, n => n.Name == "mixer.left" && n.Kind == NodeKind.Module);
        Assert.Equal(["scale"], graph.Nodes.Where(n => n.Kind == NodeKind.Attribute && n.Parameters.Count > 0).SelectMany(n => n.Parameters));
        Assert.Equal(useBias, graph.Nodes.Any(n => n.Buffers.Contains("offset")));
    }

    [Fact]
    public void Build_FeatureModel_OneTemplateServesEveryConfiguration()
    {
        using var scope = torch.NewDisposeScope();
        var shallow = CapturedGraph.Build(CreateFeatures(4, 1, "Relu", true, "mean"));
        var deep = CapturedGraph.Build(CreateFeatures(4, 4, "Relu", true, "mean"));

        Assert.Same(((ICapturedModule)shallow.Model).CaptureTemplate, ((ICapturedModule)deep.Model).CaptureTemplate);
        Assert.Equal(shallow.Nodes.Count + (3 * 3), deep.Nodes.Count); // each extra iteration: stack call, multiply, add
    }

    // exact: zero tolerance
    private static bool Same(Tensor expected, Tensor actual) => expected.allclose(actual, rtol: 0, atol: 0);

    private static nn.Module CreateFeatures(int width, int repeats, string activation, bool useBias, string pooling)
    {
        var assembly = s_assembly.Value;
        var activationType = assembly.GetType("Features.Activation")!;
        var model = (nn.Module)Activator.CreateInstance(
            assembly.GetType("Features.Features")!, width, repeats, Enum.Parse(activationType, activation), useBias, pooling)!;
        model.to(ScalarType.Float64);
        return model;
    }
}
