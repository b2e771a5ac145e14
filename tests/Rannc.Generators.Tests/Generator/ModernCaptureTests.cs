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
                var branches = new List<Tensor>();
                branches.Add(a);
                branches.Add(b * 2);
                var both = torch.cat(branches, dim: -1) + branches[0].sum() * branches.Count;
                var stacked = torch.stack([joined, h, both], 0).sum(dim: 0);
                var pooled = functional.avg_pool2d(stacked.unsqueeze(1), kernel_size: (1, 2), stride: (1, 2));
                var fresh = proj.forward(stacked);
                fresh = fresh.add_(h).relu_();
                fresh += 1;
                var narrowed = x.size(1) > maxLen ? fresh.narrow(1, start, maxLen) : fresh;
                var y = flag ? narrowed * scale : narrowed;
                return (y.sum(dim: 1), pooled.flatten(1));
            }
        }

        /// <summary>RMSNorm as LLaMA ports write it.</summary>
        [RaNNC]
        public sealed partial class RmsNorm : Module<Tensor, Tensor>
        {
            private readonly Parameter weight;
            private readonly double eps;

            public RmsNorm(int dim, double eps = 1e-5) : base(nameof(RmsNorm))
            {
                weight = Parameter(torch.ones(dim));
                this.eps = eps;
                RegisterComponents();
            }

            public override Tensor forward(Tensor x) => x * torch.rsqrt(x.pow(2).mean([-1L], keepdim: true) + eps) * weight;
        }

        /// <summary>A decoder block with four forward() arguments, rotary embedding and an optional mask.</summary>
        [RaNNC]
        public sealed partial class DecoderBlock : Module<Tensor, long, Tensor, Tensor?, Tensor>
        {
            private readonly int heads;
            private readonly int headDim;
            private readonly Linear wq, wk, wv, wo, w1, w2, w3;
            private readonly RmsNorm attentionNorm, ffnNorm;

            public DecoderBlock(int dim, int heads) : base(nameof(DecoderBlock))
            {
                this.heads = heads;
                headDim = dim / heads;
                wq = Linear(dim, dim, hasBias: false);
                wk = Linear(dim, dim, hasBias: false);
                wv = Linear(dim, dim, hasBias: false);
                wo = Linear(dim, dim, hasBias: false);
                w1 = Linear(dim, 2 * dim, hasBias: false);
                w2 = Linear(2 * dim, dim, hasBias: false);
                w3 = Linear(dim, 2 * dim, hasBias: false);
                attentionNorm = new RmsNorm(dim);
                ffnNorm = new RmsNorm(dim);
                RegisterComponents();
            }

            public override Tensor forward(Tensor x, long startPos, Tensor freqs, Tensor? mask)
            {
                var h = x + Attention(attentionNorm.forward(x), startPos, freqs, mask);
                var n = ffnNorm.forward(h);
                return h + w2.forward(functional.silu(w1.forward(n)) * w3.forward(n));
            }

            private Tensor Attention(Tensor x, long startPos, Tensor freqs, Tensor? mask)
            {
                var batch = x.shape[0];
                var seqLen = x.shape[1];
                var q = wq.forward(x).view(batch, seqLen, heads, headDim);
                var k = wk.forward(x).view(batch, seqLen, heads, headDim);
                var v = wv.forward(x).view(batch, seqLen, heads, headDim);
                (q, k) = Rotary.Apply(q, k, freqs.narrow(0, startPos, seqLen));
                var scores = torch.matmul(q.transpose(1, 2), k.transpose(1, 2).transpose(2, 3)) / Math.Sqrt(headDim);
                if (mask is not null)
                {
                    scores = scores + mask;
                }
                var attention = functional.softmax(scores, dim: -1);
                var output = torch.matmul(attention, v.transpose(1, 2)).transpose(1, 2).contiguous().view(batch, seqLen, -1);
                return wo.forward(output);
            }
        }

        public static class Rotary
        {
            public static Tensor Frequencies(int headDim, int length, double theta = 10000.0)
            {
                var inverse = 1.0 / torch.pow(theta, torch.arange(0, headDim, 2, dtype: ScalarType.Float64) / headDim);
                var angles = torch.outer(torch.arange(length, dtype: ScalarType.Float64), inverse);
                return torch.polar(torch.ones_like(angles), angles);
            }

            public static (Tensor, Tensor) Apply(Tensor q, Tensor k, Tensor freqs)
            {
                var qc = torch.view_as_complex(q.reshape(q.shape[0], q.shape[1], q.shape[2], -1, 2));
                var kc = torch.view_as_complex(k.reshape(k.shape[0], k.shape[1], k.shape[2], -1, 2));
                var f = freqs.view(1, freqs.shape[0], 1, freqs.shape[1]);
                return (torch.view_as_real(qc * f).flatten(3), torch.view_as_real(kc * f).flatten(3));
            }
        }

        /// <summary>A LLaMA-style decoder: the causal mask exists only when more than one position is processed.</summary>
        [RaNNC]
        public sealed partial class Decoder : Module<Tensor, long, Tensor>
        {
            private readonly Embedding embedding;
            private readonly ModuleList<DecoderBlock> layers = new();
            private readonly RmsNorm norm;
            private readonly Linear output;
            private readonly Tensor freqs;

            public Decoder(int vocabulary, int dim, int heads, int layerCount, int maxLength) : base(nameof(Decoder))
            {
                embedding = Embedding(vocabulary, dim);
                for (var i = 0; i < layerCount; i++) layers.Add(new DecoderBlock(dim, heads));
                norm = new RmsNorm(dim);
                output = Linear(dim, vocabulary, hasBias: false);
                freqs = Rotary.Frequencies(dim / heads, maxLength);
                RegisterComponents();
            }

            public override Tensor forward(Tensor tokens, long startPos)
            {
                var seqLen = tokens.shape[1];
                var h = embedding.forward(tokens);
                Tensor? mask = null;
                if (seqLen > 1)
                {
                    mask = torch.full([seqLen, seqLen], double.NegativeInfinity, dtype: h.dtype).triu(1);
                }
                foreach (var layer in layers)
                {
                    h = layer.forward(h, startPos, freqs, mask);
                }
                return output.forward(norm.forward(h)).to_type(ScalarType.Float64);
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
        Assert.Contains(graph.Nodes, n => n.ModifiesInput && n.Operation == "add_");
        Assert.Contains(graph.Nodes, n => n.ModifiesInput && n.Operation == "relu_");
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

    [Theory]
    [InlineData(4, 0L)]
    [InlineData(1, 3L)]
    public void Execute_LlamaStyleDecoder_MatchesForwardLogitsAndGradients(int sequence, long startPos)
    {
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(9);
        var model = (nn.Module<Tensor, long, Tensor>)Activator.CreateInstance(s_assembly.Value.GetType("Modern.Decoder")!, 11, 8, 2, 2, 6)!;
        model.to(ScalarType.Float64);
        var tokens = torch.randint(11, [2, sequence], dtype: ScalarType.Int64, generator: new torch.Generator(3));

        var graph = CapturedGraph.Build(model, [tokens, startPos]);
        var expected = model.forward(tokens, startPos);
        expected.sum().backward();
        var expectedGradients = model.named_parameters().ToDictionary(p => p.name, p => p.parameter.grad!.clone());
        model.zero_grad();
        var actual = (Tensor)graph.Execute(tokens, startPos)[0]!;
        actual.sum().backward();

        Assert.True(Same(expected, actual), "logits differ");
        foreach (var (name, parameter) in model.named_parameters())
        {
            Assert.True(Same(expectedGradients[name], parameter.grad!), $"gradient of {name} differs");
        }
        // every leaf layer is its own node: blocks, their norms and attention are inlined
        Assert.Contains(graph.Nodes, n => n.Name == "layers.1.wq" && n.Kind == NodeKind.Module);
        Assert.Contains(graph.Nodes, n => n.Name == "layers.0.attentionNorm.weight");
        Assert.Equal(sequence > 1 ? 0 : 1, graph.Guards.Single(g => g.Description == "if (seqLen > 1)").Choice);
        Assert.Equal(2, graph.Guards.Count(g => g.Description == "if (mask is not null)"));
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
