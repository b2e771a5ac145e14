using Microsoft.CodeAnalysis;

namespace Rannc.Generators.Tests.Generator;

/// <summary>
/// The generator never emits code that does not compile: every construct, in a form it captures and in a form it
/// refuses, is generated and compiled. Captured forms give a template and no warning; refused forms give the failed
/// template and exactly the expected diagnostics, and the user's project still builds.
/// </summary>
public sealed class GeneratedCodeCorpusTests
{
    private const string Usings = """
        using System;
        using System.Collections.Generic;
        using Rannc;
        using TorchSharp;
        using TorchSharp.Modules;
        using static TorchSharp.torch;
        using static TorchSharp.torch.nn;

        namespace Corpus;

        public enum Mode { Plain, Scaled }

        public static class Ops
        {
            public static Tensor Scale(Tensor t, double factor = 2) => t * factor;
            public static (Tensor, Tensor) Halves(Tensor t) => (t * 0.5, t - t * 0.5);
            public static Tensor Doubled(this Tensor t) => t + t;
        }

        public static class Hidden
        {
            private enum Kind { A, B }
            private sealed class Box { public double Factor => 2; }
            public static Tensor Use(Tensor t) => t * (int)Kind.B * new Box().Factor;
        }

        """;

    /// <summary>Name, members and forward() of a [RaNNC] class, and the diagnostic IDs expected (empty: captured without findings).</summary>
    public static TheoryData<string, string, string, string, string[]> Cases => new()
    {
        // ---- tuples
        { "tuple argument in forward", "Module<Tensor, Tensor>", "Tensor x",
            "return functional.max_pool2d(x, kernel_size: (2, 2), stride: (1, 1));", [] },
        { "module built with tuple arguments", "Module<Tensor, Tensor>", "Tensor x",
            "return Conv2d(2, 2, kernel_size: (1, 1), stride: (1, 1)).forward(x);", [] },
        { "tuple literal in a branch that never runs", "Module<Tensor, Tensor>", "Tensor x",
            "if (useTuple) { var (a, b) = (x * 2, x * 3); x = a + b; var k = (1, 1); x = functional.avg_pool2d(x, kernel_size: k); } return x;", [] },
        { "tuple of tensors where one value is needed", "Module<Tensor, Tensor>", "Tensor x",
            "var pair = (x, x * 2); return wrapped.forward(pair);", ["RANNC0007", "RANNC0008"] },
        // ---- collections
        { "collection expression of longs", "Module<Tensor, Tensor>", "Tensor x",
            "return x.mean([-1L], keepdim: true) + x.view([-1, 4]).sum();", [] },
        { "array creations", "Module<Tensor, Tensor>", "Tensor x",
            "var y = x * 2; return torch.cat(new[] { x, y }, 1).sum(new long[] { -1 }, keepdim: true);", [] },
        { "list of tensors for torch.cat", "Module<Tensor, Tensor>", "Tensor x",
            "var y = x + 1; return torch.cat(new List<Tensor> { x, y }, dim: 1) + torch.stack([x, y], 0).sum(dim: 0);", [] },
        { "spread in a collection expression", "Module<Tensor, Tensor>", "Tensor x",
            "return x.mean([.. dims], keepdim: true);", ["RANNC0008"] },
        { "list built by Add in straight-line code", "Module<Tensor, Tensor>", "Tensor x",
            "var parts = new List<Tensor>(); parts.Add(x); parts.Add(functional.relu(x)); return torch.cat(parts, 1) * parts.Count + parts[1];", [] },
        { "list filled in a loop", "Module<Tensor, Tensor>", "Tensor x",
            "var parts = new List<Tensor>(); for (var i = 0; i < maxLen; i++) { parts.Add(x * i); } return torch.cat(parts, 1);", ["RANNC0002"] },
        // ---- arguments and constants
        { "named and optional arguments, string and enum constants", "Module<Tensor, Tensor>", "Tensor x",
            "var p = functional.softmax(x, dim: -1); var e = torch.einsum(\"ij,ij->ij\", p, x); return e.to_type(ScalarType.Float64).sum(dim: 1, keepdim: true) * (mode == Mode.Scaled ? 2.0 : 1.0);", [] },
        // ---- null checks, ternaries
        { "is null and is not null on configuration", "Module<Tensor, Tensor>", "Tensor x",
            "if (proj is not null) { x = proj.forward(x); } var y = extra is null ? x : extra.forward(x); return y;", [] },
        { "ternary on configuration with graph work", "Module<Tensor, Tensor>", "Tensor x",
            "return useTuple ? functional.relu(x) : functional.gelu(x);", [] },
        { "ternary on tensor contents", "Module<Tensor, Tensor>", "Tensor x",
            "return x.sum().item<double>() > 0 ? functional.relu(x) : functional.gelu(x);", ["RANNC0001"] },
        // ---- helpers
        { "tuple results of helpers, own and of another class", "Module<Tensor, Tensor>", "Tensor x",
            "var (a, b) = Split(x); var (c, d) = Ops.Halves(a); return Ops.Scale(c + d) + b.Doubled() + Ops.Scale(b, factor: 3);", [] },
        { "static helper using types private to its class", "Module<Tensor, Tensor>", "Tensor x",
            "return Hidden.Use(x);", ["RANNC0002", "RANNC0002"] },
        { "instance method of another object", "Module<Tensor, Tensor>", "Tensor x",
            "return new Corpus.Plain().forward(x) + new System.Random().Next() * x;", ["RANNC0002"] },
        { "lambda", "Module<Tensor, Tensor>", "Tensor x",
            "Func<Tensor, Tensor> f = t => t * 2; return x;", ["RANNC0002"] },
        // ---- in-place
        { "in-place methods and compound assignment on fresh values", "Module<Tensor, Tensor>", "Tensor x",
            "var h = proj!.forward(x); h = h.add_(x).relu_(); h += 1; h.mul_(2); return h;", [] },
        { "in-place method on an input", "Module<Tensor, Tensor>", "Tensor x",
            "x.add_(1); return x;", ["RANNC0004"] },
        // ---- signatures
        { "six arguments of every kind", "Module<Tensor, Tensor?, long, double, bool, Mode, (Tensor, Tensor)>",
            "Tensor x, Tensor? mask, long startPos, double scale, bool flag, Mode kind",
            "var y = x.narrow(1, startPos, 2) * scale; if (mask is not null) { y = y + mask; } if (flag && kind == Mode.Scaled) { y = y * 2; } return (y, y.sum());", [] },
        // ---- shapes
        { "condition on a shape", "Module<Tensor, Tensor>", "Tensor x",
            "var seqLen = x.shape[1]; if (seqLen > 1) { x = x * 2; } else { x = x + 1; } var n = x.size(1) > maxLen ? maxLen : x.size(1); return x.narrow(1, 0, n);", [] },
        { "early return on a shape", "Module<Tensor, Tensor>", "Tensor x",
            "if (x.size(0) == 1) { return x; } return x * 2;", [] },
        { "ternary on a shape with graph work", "Module<Tensor, Tensor>", "Tensor x",
            "return x.dim() > 2 ? x.flatten(1) : functional.relu(x);", [] },
        { "switch on a shape", "Module<Tensor, Tensor>", "Tensor x",
            "switch (x.dim()) { case 2: x = x * 2; break; case 3: case 4: x = x.flatten(1); break; default: x = x + 1; break; } return x;", [] },
        { "condition on tensor contents", "Module<Tensor, Tensor>", "Tensor x",
            "if (x.max().item<double>() > 1) { x = x / 2; } return x;", ["RANNC0001"] },
        { "loop bound from a shape", "Module<Tensor, Tensor>", "Tensor x",
            "var n = x.shape[0]; for (var i = 1; i < n; i++) { x = x + i; } return x;", [] },
        { "loop bound the body changes", "Module<Tensor, Tensor>", "Tensor x",
            "for (var i = 0; i < x.shape[0]; i++) { x = x.narrow(0, 1, 1); } return x;", ["RANNC0008"] },
        { "loop bound from tensor contents", "Module<Tensor, Tensor>", "Tensor x",
            "for (var i = 0; i < x.sum().item<long>(); i++) { x = x + 1; } return x;", ["RANNC0001"] },
        // ---- containers
        { "calls through Sequential and abstract module fields", "Module<Tensor, Tensor>", "Tensor x",
            "return head.forward(features.forward(x));", ["RANNC0009", "RANNC0009"] },
        // ---- expressions whose translation could name something that does not exist in the generated code
        { "generic helper", "Module<Tensor, Tensor>", "Tensor x",
            "return Twice<Tensor>(x, x);", ["RANNC0002"] },
        { "array results, index from end, as-conversion", "Module<Tensor, Tensor>", "Tensor x",
            "var parts = x.chunk(2, 1); var last = parts[^1] as Tensor; return parts[0] * last!.shape[^1];", [] },
        { "interpolated string", "Module<Tensor, Tensor>", "Tensor x",
            "var label = $\"{x.size(0)}\"; return x;", ["RANNC0008"] },
        { "conditional access", "Module<Tensor, Tensor>", "Tensor x",
            "var y = extra?.forward(x); return x;", ["RANNC0008"] },
        { "coalescing an optional input and configuration", "Module<Tensor, Tensor?, Tensor>", "Tensor x, Tensor? mask",
            "var m = mask ?? torch.zeros_like(x); var layer = extra ?? proj; return (m + x) * (maxName ?? \"n\").Length + layer!.forward(x);", [] },
        { "type tests", "Module<Tensor, Tensor>", "Tensor x",
            "var isLinear = proj is Linear l; var kind = typeof(Tensor); return x;", ["RANNC0008", "RANNC0008"] },
        { "local function", "Module<Tensor, Tensor>", "Tensor x",
            "Tensor Local(Tensor t) => t * 2; return Local(x);", ["RANNC0002", "RANNC0008"] },
        { "torchvision-style residual block with an optional downsample", "Module<Tensor, Tensor>", "Tensor x",
            "var identity = x; var o = functional.relu(proj!.forward(x)); if (downsample is not null) { identity = downsample.forward(x); } o += identity; return functional.relu(o);", ["RANNC0009"] },
        // ---- other refused statements
        { "while loop", "Module<Tensor, Tensor>", "Tensor x",
            "var i = 0; while (i < maxLen) { x = x + 1; i++; } return x;", ["RANNC0008"] },
        { "state mutation", "Module<Tensor, Tensor>", "Tensor x",
            "maxLen = 3; return x;", ["RANNC0003"] },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void Generate_Construct_CompilesAndReportsExactlyTheExpectedDiagnostics(
        string name, string baseType, string parameters, string body, string[] expected)
    {
        var returnType = baseType.Substring(baseType.LastIndexOf(',') + 1).TrimEnd('>').Trim();
        if (baseType.Contains("(Tensor, Tensor)", StringComparison.Ordinal))
        {
            returnType = "(Tensor, Tensor)";
        }
        var source = Usings + $$"""
            public class Plain : Module<Tensor, Tensor>
            {
                public Plain() : base("plain") { }
                public override Tensor forward(Tensor x) => x * 2;
            }

            public class Wrapped : Module<(Tensor, Tensor), Tensor>
            {
                public Wrapped() : base("wrapped") { }
                public override Tensor forward((Tensor, Tensor) pair) => pair.Item1 + pair.Item2;
            }

            [RaNNC]
            public partial class Net : {{baseType}}
            {
                private readonly bool useTuple = false;
                private readonly Mode mode = Mode.Scaled;
                private long maxLen = 4;
                private readonly long[] dims = { 1 };
                private readonly string? maxName = null;
                private readonly Linear? proj = Linear(4, 4);
                private readonly Linear? extra = null;
                private readonly Wrapped wrapped = new();
                private readonly Sequential features = Sequential(Linear(4, 4), ReLU());
                private readonly Module<Tensor, Tensor> head = Linear(4, 2);
                private readonly Module<Tensor, Tensor>? downsample = null;

                public Net() : base("net") { RegisterComponents(); }

                public override {{returnType}} forward({{parameters}})
                {
                    {{body}}
                }

                private (Tensor, Tensor) Split(Tensor t) => (t * 2, t + 3);

                private static T Twice<T>(T first, T second) where T : Tensor => (T)(first + second);
            }
            """;

        var (output, generated) = CompilationHelper.Generate(source);

        Assert.Empty(CompilationHelper.CompilerErrors(output));
        var text = Assert.Single(generated).Value;
        var diagnostics = CompilationHelper.Analyze(source).Select(d => d.Id).Order(StringComparer.Ordinal).ToList();
        Assert.Equal(expected.Order(StringComparer.Ordinal), diagnostics);
        if (name.StartsWith("coalescing", StringComparison.Ordinal))
        {
            // a submodule chosen by ?? is still called as a submodule (the node that owns its parameters)
            Assert.Contains("    return ((this.extra) ?? (this.proj));", text, StringComparison.Ordinal);
        }
        var refused = expected.Any(id => id is not "RANNC0007" and not "RANNC0009");
        Assert.True(refused == text.Contains("CaptureTemplate.Failed(", StringComparison.Ordinal),
            $"{name}: expected the {(refused ? "failed" : "captured")} template");
        if (!refused)
        {
            // the captured template really is the construct, not an empty body
            Assert.Contains("new global::Rannc.Capture.TemplateNode(", text, StringComparison.Ordinal);
            Assert.DoesNotContain(output.GetDiagnostics(), d => d.Severity == DiagnosticSeverity.Warning && d.Location.SourceTree?.FilePath.EndsWith(".g.cs", StringComparison.Ordinal) == true);
        }
    }
}
