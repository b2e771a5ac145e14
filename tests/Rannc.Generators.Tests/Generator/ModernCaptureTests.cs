using System.Reflection;
using Rannc.Capture;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Generators.Tests.Generator;

/// <summary>
/// Constructs of current TorchSharp code (six forward() arguments of every kind, an optional tensor, tuple results,
/// branches on shapes and on non-tensor inputs, tuple and collection arguments, static helpers of another class,
/// in-place methods), compiled in memory, run through the captured graph and compared exactly with forward().
/// </summary>
public sealed class ModernCaptureTests
{
    private const string Source = """
        using System;
        using System.Collections.Generic;
        using Rannc;
        using TorchSharp;
        using TorchSharp.Modules;
        using static TorchSharp.torch;
        using static TorchSharp.torch.nn;

        namespace Modern;

        public enum Norm { Rms, None }

        public static class Ops
        {
            public static Tensor RmsNorm(Tensor x, Tensor weight, double eps = 1e-6) =>
                x * torch.rsqrt(x.pow(2).mean([-1L], keepdim: true) + eps) * weight;

            public static (Tensor, Tensor) Halves(Tensor t)
            {
                var half = t.size(-1) / 2;
                return (t.narrow(-1, 0, half), t.narrow(-1, half, half));
            }
        }

        [RaNNC]
        public sealed partial class Block : Module<Tensor, Tensor?, long, double, bool, Norm, (Tensor, Tensor)>
        {
            private readonly Linear proj;
            private readonly Parameter weight;
            private readonly long maxLen;

            public Block(int width, long maxLen) : base(nameof(Block))
            {
                proj = Linear(width, width);
                weight = Parameter(torch.ones(width));
                this.maxLen = maxLen;
                RegisterComponents();
            }

            public override (Tensor, Tensor) forward(Tensor x, Tensor? mask, long start, double scale, bool flag, Norm norm)
            {
                var seqLen = x.shape[1];
                var h = norm == Norm.Rms ? Ops.RmsNorm(x, weight) : x;
                h = proj.forward(h);
                if (seqLen > 1)
                {
                    h = h * 2;
                }
                if (mask is not null)
                {
                    h = h + mask;
                }
                h = h + (mask ?? torch.zeros_like(h)) * 0.5;
                for (var i = 0; i < seqLen - 1; i++)
                {
                    h = h * 0.5 + i;
                }
                switch (seqLen)
                {
                    case 1:
                        h = h - 1;
                        break;
                    case 3:
                        h = h * 3;
                        break;
                }
                var (a, b) = Ops.Halves(h);
                var joined = torch.cat(new List<Tensor> { b, a }, dim: -1);
                var stacked = torch.stack([joined, h], 0).sum(dim: 0);
                var pooled = functional.avg_pool2d(stacked.unsqueeze(1), kernel_size: (1, 2), stride: (1, 2));
                var fresh = proj.forward(stacked);
                fresh = fresh.add_(h).relu_();
                fresh += 1;
                var narrowed = x.size(1) > maxLen ? fresh.narrow(1, start, maxLen) : fresh;
                var y = flag ? narrowed * scale : narrowed;
                return (y.sum(dim: 1), pooled.flatten(1));
            }
        }

        /// <summary>Calls Block with constants, among them a null optional tensor: Block is inlined.</summary>
        [RaNNC]
        public sealed partial class Outer : Module<Tensor, Tensor>
        {
            private readonly Block block;

            public Outer(int width) : base(nameof(Outer))
            {
                block = new Block(width, maxLen: 2);
                RegisterComponents();
            }

            public override Tensor forward(Tensor x)
            {
                var (first, second) = block.forward(x, null, 0, 0.5, true, Norm.None);
                return first.sum() + second.sum();
            }
        }
        """;

    private static readonly Lazy<Assembly> s_assembly = new(() =>
    {
        var (output, _) = CompilationHelper.Generate(Source);
        Assert.Empty(CompilationHelper.CompilerErrors(output));
        Assert.Empty(CompilationHelper.Analyze(Source));
        return CompilationHelper.EmitAndLoad(output);
    });

    [Theory]
    [InlineData(3, true, true, "Rms")]
    [InlineData(1, false, false, "None")]
    [InlineData(2, true, false, "Rms")]
    public void Execute_Block_MatchesForwardOutputsAndGradients(int sequence, bool withMask, bool flag, string norm)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(3);
        var model = CreateBlock();
        var inputs = BlockInputs(sequence, withMask, flag, norm);

        var graph = CapturedGraph.Build(model, inputs);
        var (expectedFirst, expectedSecond) = Forward(model, inputs);
        (expectedFirst.sum() + expectedSecond.sum()).backward();
        var expectedGradients = model.named_parameters().ToDictionary(p => p.name, p => p.parameter.grad?.clone() ?? torch.zeros_like(p.parameter));
        model.zero_grad();
        var outputs = graph.Execute(inputs);
        (((Tensor)outputs[0]!).sum() + ((Tensor)outputs[1]!).sum()).backward();

        Assert.Equal(2, outputs.Length);
        Assert.True(Same(expectedFirst, (Tensor)outputs[0]!), "first output differs");
        Assert.True(Same(expectedSecond, (Tensor)outputs[1]!), "second output differs");
        foreach (var (name, parameter) in model.named_parameters())
        {
            Assert.True(Same(expectedGradients[name], parameter.grad ?? torch.zeros_like(parameter)), $"gradient of {name} differs");
        }
        // every branch on shapes or on non-tensor inputs was resolved for this batch and is guarded
        Assert.Equal(
            ["norm == Norm.Rms ? ... : ...", "if (seqLen > 1)", "if (mask is not null)", "mask ?? ...", "for (i < seqLen - 1)", "switch (seqLen)", "x.size(1) > maxLen ? ... : ...", "flag ? ... : ..."],
            graph.Guards.Select(g => g.Description));
        Assert.Equal(sequence > 1 ? 0 : 1, graph.Guards[1].Choice);
        Assert.Equal(withMask ? 0 : 1, graph.Guards[2].Choice);
        Assert.Equal(withMask ? 0 : 1, graph.Guards[3].Choice);
        Assert.Equal(sequence - 1, graph.Guards[4].Choice);
        Assert.Equal(sequence switch { 1 => 0, 3 => 1, _ => 2 }, graph.Guards[5].Choice);
        Assert.Contains(graph.Nodes, n => n.InPlace && n.Operation == "add_");
        Assert.Contains(graph.Nodes, n => n.InPlace && n.Operation == "relu_");
        Assert.Equal(ValueKind.Scalar, graph.Values[graph.Inputs[2]].Kind);
        Assert.Equal(ValueKind.Other, graph.Values[graph.Inputs[5]].Kind);
    }

    [Fact]
    public void Execute_BatchThatTakesAnotherArm_FailsNamingTheCondition()
    {
        using var scope = torch.NewDisposeScope();
        var model = CreateBlock();
        var graph = CapturedGraph.Build(model, BlockInputs(3, true, true, "Rms"));

        // the same shapes run; a shorter sequence would take the other arm of 'if (seqLen > 1)'
        graph.Execute(BlockInputs(3, true, true, "Rms"));
        var error = Assert.Throws<CaptureException>(() => graph.Execute(BlockInputs(1, true, true, "Rms")));

        Assert.Contains("'if (seqLen > 1)'", error.Message, StringComparison.Ordinal);
        Assert.Contains("resolves to 0", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Build_WithoutASampleBatch_SaysHowToBuildForABranchOnShapes()
    {
        using var scope = torch.NewDisposeScope();
        var error = Assert.Throws<CaptureException>(() => CapturedGraph.Build(CreateBlock()));

        Assert.Contains("CapturedGraph.Build(model, inputs)", error.Message, StringComparison.Ordinal);
        Assert.Contains("Model.cs(", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Execute_OuterPassingNullAndConstants_InlinesBlockAndMatchesForward()
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(5);
        var model = (nn.Module<Tensor, Tensor>)Activator.CreateInstance(s_assembly.Value.GetType("Modern.Outer")!, 4)!;
        model.to(ScalarType.Float64);
        var x = torch.randn([2, 3, 4], dtype: ScalarType.Float64);

        var graph = CapturedGraph.Build(model, [x]);
        var expected = model.forward(x);
        var actual = (Tensor)graph.Execute(x)[0]!;

        Assert.True(Same(expected, actual), "output differs");
        Assert.Contains(graph.Nodes, n => n.Name == "block.proj");
        Assert.Equal(1, graph.Guards.Single(g => g.Description == "if (mask is not null)").Choice);
    }

    // exact: zero tolerance
    private static bool Same(Tensor expected, Tensor actual) => expected.allclose(actual, rtol: 0, atol: 0);

    private static nn.Module CreateBlock()
    {
        var model = (nn.Module)Activator.CreateInstance(s_assembly.Value.GetType("Modern.Block")!, 4, 2L)!;
        model.to(ScalarType.Float64);
        return model;
    }

    private static object?[] BlockInputs(int sequence, bool withMask, bool flag, string norm)
    {
        var generator = new torch.Generator(7);
        var normType = s_assembly.Value.GetType("Modern.Norm")!;
        return
        [
            torch.randn([2, sequence, 4], dtype: ScalarType.Float64, generator: generator),
            withMask ? torch.randn([2, sequence, 4], dtype: ScalarType.Float64, generator: generator) : null,
            0L,
            0.5,
            flag,
            Enum.Parse(normType, norm),
        ];
    }

    /// <summary>forward() of Block through reflection: its argument types come from the in-memory assembly.</summary>
    private static (Tensor, Tensor) Forward(nn.Module model, object?[] inputs) =>
        ((Tensor, Tensor))model.GetType().GetMethod("forward")!.Invoke(model, inputs)!;
}
