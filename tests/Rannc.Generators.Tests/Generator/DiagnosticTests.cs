using System.Text.RegularExpressions;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.Text;

namespace Rannc.Generators.Tests.Generator;

/// <summary>
/// Every diagnostic ID, with its exact span. Sources mark expected diagnostics as <c>{|RANNC0001:text|}</c>.
/// </summary>
public sealed class DiagnosticTests
{
    private const string Usings = """
        using System;
        using Rannc;
        using TorchSharp;
        using TorchSharp.Modules;
        using static TorchSharp.torch;
        using static TorchSharp.torch.nn;

        """;

    [Fact]
    public void Rannc0001_IfOnTensorValue_IsReportedOnTheCondition() => Verify("""
        [RaNNC]
        public partial class Net : Module<Tensor, Tensor>
        {
            public Net() : base("net") { }
            public override Tensor forward(Tensor x)
            {
                if ({|RANNC0001:x.sum().item<double>() > 0|})
                {
                    x = x * 2;
                }
                return x;
            }
        }
        """);

    [Fact]
    public void Rannc0001_LoopBoundFromTensorContents_IsReportedOnTheCondition() => Verify("""
        [RaNNC]
        public partial class Net : Module<Tensor, Tensor>
        {
            public Net() : base("net") { }
            public override Tensor forward(Tensor x)
            {
                for (var i = 0; {|RANNC0001:i < x.sum().item<long>()|}; i++)
                {
                    x = x + 1;
                }
                return x;
            }
        }
        """);

    [Fact]
    public void Rannc0008_LoopBoundThatTheBodyChanges_IsReportedOnTheLoop() => Verify("""
        [RaNNC]
        public partial class Net : Module<Tensor, Tensor>
        {
            public Net() : base("net") { }
            public override Tensor forward(Tensor x)
            {
                {|RANNC0008:for (var i = 0; i < x.shape[0]; i++)
                {
                    x = x.narrow(0, 1, 1);
                }|}
                return x;
            }
        }
        """);

    [Fact]
    public void Rannc0001_EarlyReturnOnTensorValue_IsReportedOnceOnTheCondition() => Verify("""
        [RaNNC]
        public partial class Net : Module<Tensor, Tensor>
        {
            public Net() : base("net") { }
            public override Tensor forward(Tensor x)
            {
                if ({|RANNC0001:x.max().item<double>() > 1|})
                {
                    return x / 2;
                }
                return x;
            }
        }
        """);

    [Fact]
    public void Rannc0002_CallOfAnInstanceMethodOfAnotherClass_IsReportedOnTheCall() => Verify("""
        public sealed class Scaler
        {
            public Tensor Scale(Tensor t) => t * 2;
        }

        [RaNNC]
        public partial class Net : Module<Tensor, Tensor>
        {
            private readonly Scaler scaler = new();
            public Net() : base("net") { }
            public override Tensor forward(Tensor x)
            {
                var y = {|RANNC0002:scaler.Scale(x)|};
                return y;
            }
        }
        """);

    [Fact]
    public void Rannc0002_StaticHelperUsingAPrivateMemberOfItsClass_IsReportedAtThatUse() => Verify("""
        public static class Helpers
        {
            private static double factor = 2;
            public static Tensor Scale(Tensor t) => t * {|RANNC0002:factor|};
        }

        [RaNNC]
        public partial class Net : Module<Tensor, Tensor>
        {
            public Net() : base("net") { }
            public override Tensor forward(Tensor x) => Helpers.Scale(x);
        }
        """);

    [Fact]
    public void Rannc0002_AddingToAListInALoop_IsReportedOnTheCall() => Verify("""
        [RaNNC]
        public partial class Net : Module<Tensor, Tensor>
        {
            private readonly int repeats = 2;
            public Net() : base("net") { }
            public override Tensor forward(Tensor x)
            {
                var parts = new System.Collections.Generic.List<Tensor>();
                for (var i = 0; i < repeats; i++)
                {
                    {|RANNC0002:parts.Add(x * i)|};
                }
                return torch.cat(parts, 1);
            }
        }
        """);

    [Fact]
    public void Rannc0002_AddingToAListThroughASecondLocal_IsReportedOnTheCall() => Verify("""
        [RaNNC]
        public partial class Net : Module<Tensor, Tensor>
        {
            public Net() : base("net") { }
            public override Tensor forward(Tensor x)
            {
                var parts = new System.Collections.Generic.List<Tensor> { x };
                var alias = parts;
                {|RANNC0002:alias.Add(x * 2)|};
                return torch.cat(parts, 1);
            }
        }
        """);

    [Fact]
    public void Rannc0002_Lambda_IsReported() => Verify("""
        [RaNNC]
        public partial class Net : Module<Tensor, Tensor>
        {
            public Net() : base("net") { }
            public override Tensor forward(Tensor x)
            {
                Func<Tensor, Tensor> twice = {|RANNC0002:t => t * 2|};
                return x;
            }
        }
        """);

    [Fact]
    public void Rannc0003_FieldWrite_IsReportedOnTheAssignment() => Verify("""
        [RaNNC]
        public partial class Net : Module<Tensor, Tensor>
        {
            private int calls;
            public Net() : base("net") { }
            public override Tensor forward(Tensor x)
            {
                {|RANNC0003:calls = 1|};
                return x * calls;
            }
        }
        """);

    [Fact]
    public void Rannc0004_InPlaceOnSharedValue_IsReportedButInPlaceOnAFreshValueIsNot() => Verify("""
        [RaNNC]
        public partial class Net : Module<Tensor, Tensor>
        {
            private readonly Linear fc = Linear(3, 3);
            public Net() : base("net") { RegisterComponents(); }
            public override Tensor forward(Tensor x)
            {
                var y = fc.forward(x);
                var z = {|RANNC0004:y.add_(1)|};
                var fresh = fc.forward(z).relu_();
                return y + fresh;
            }
        }
        """);

    [Fact]
    public void Rannc0005_ClassNotPartial_IsReportedOnTheName() => Verify("""
        [RaNNC]
        public class {|RANNC0005:Net|} : Module<Tensor, Tensor>
        {
            public Net() : base("net") { }
            public override Tensor forward(Tensor x) => x * 2;
        }
        """);

    [Fact]
    public void Rannc0006_ClassThatIsNotATypedModule_IsReportedOnTheName() => Verify("""
        [RaNNC]
        public partial class {|RANNC0006:Net|} : Module
        {
            public Net() : base("net") { }
        }
        """);

    [Fact]
    public void Rannc0006_ForwardReturningAList_IsReportedOnForward() => Verify("""
        [RaNNC]
        public partial class Net : Module<Tensor, System.Collections.Generic.List<Tensor>>
        {
            public Net() : base("net") { }
            public override System.Collections.Generic.List<Tensor> {|RANNC0006:forward|}(Tensor x) => new() { x };
        }
        """);

    [Fact]
    public void Rannc0007_UserSubmoduleWithoutRaNNC_IsAnInfoOnTheCall() => Verify("""
        public class Plain : Module<Tensor, Tensor>
        {
            public Plain() : base("plain") { }
            public override Tensor forward(Tensor x) => x * 2;
        }

        [RaNNC]
        public partial class Net : Module<Tensor, Tensor>
        {
            private readonly Plain inner = new();
            public Net() : base("net") { RegisterComponents(); }
            public override Tensor forward(Tensor x) => {|RANNC0007:inner.forward(x)|} + 1;
        }
        """);

    [Fact]
    public void Rannc0009_CallThroughSequentialOrAbstractModuleField_IsAnInfoOnTheCall() => Verify("""
        [RaNNC]
        public partial class Net : Module<Tensor, Tensor>
        {
            private readonly Sequential features = Sequential(Linear(3, 3), ReLU());
            private readonly Module<Tensor, Tensor> head = Linear(3, 2);
            public Net() : base("net") { RegisterComponents(); }
            public override Tensor forward(Tensor x)
            {
                var h = {|RANNC0009:features.forward(x)|};
                return {|RANNC0009:head.call(h)|};
            }
        }
        """);

    [Fact]
    public void Rannc0001_SwitchOnTensorContents_IsReportedOnTheSelector() => Verify("""
        [RaNNC]
        public partial class Net : Module<Tensor, Tensor>
        {
            public Net() : base("net") { }
            public override Tensor forward(Tensor x)
            {
                switch ({|RANNC0001:x.sum().item<long>()|})
                {
                    case 1:
                        x = x * 2;
                        break;
                }
                return x;
            }
        }
        """);

    [Fact]
    public void Rannc0008_SpreadInACollectionExpression_IsReportedOnTheSpread() => Verify("""
        [RaNNC]
        public partial class Net : Module<Tensor, Tensor>
        {
            private readonly long[] dims = { 1 };
            public Net() : base("net") { }
            public override Tensor forward(Tensor x) => x.mean([{|RANNC0008:.. dims|}], keepdim: true);
        }
        """);

    [Fact]
    public void Rannc0008_ReturnInsideALoop_IsReportedOnTheReturn() => Verify("""
        [RaNNC]
        public partial class Net : Module<Tensor, Tensor>
        {
            private readonly int repeats = 2;
            public Net() : base("net") { }
            public override Tensor forward(Tensor x)
            {
                for (var i = 0; i < repeats; i++)
                {
                    {|RANNC0008:return x;|}
                }
                return x;
            }
        }
        """);

    [Fact]
    public void Rannc0004_InPlaceOnAnInput_IsReportedOnTheCall() => Verify("""
        [RaNNC]
        public partial class Net : Module<Tensor, Tensor>
        {
            public Net() : base("net") { }
            public override Tensor forward(Tensor x)
            {
                {|RANNC0004:x.mul_(2)|};
                return x;
            }
        }
        """);

    [Fact]
    public void Rannc0008_WhileLoop_IsReportedOnTheLoop() => Verify("""
        [RaNNC]
        public partial class Net : Module<Tensor, Tensor>
        {
            private readonly int repeats = 2;
            public Net() : base("net") { }
            public override Tensor forward(Tensor x)
            {
                var i = 0;
                {|RANNC0008:while (i < repeats) { x = x + 1; i++; }|}
                return x;
            }
        }
        """);

    [Fact]
    public void Rannc0008_BreakInALoop_IsReportedOnTheBreak() => Verify("""
        [RaNNC]
        public partial class Net : Module<Tensor, Tensor>
        {
            private readonly int repeats = 2;
            public Net() : base("net") { }
            public override Tensor forward(Tensor x)
            {
                for (var i = 0; i < repeats; i++)
                {
                    x = x + 1;
                    {|RANNC0008:break;|}
                }
                return x;
            }
        }
        """);

    [Fact]
    public void Rannc0008_SwitchExpression_IsReportedOnTheExpression() => Verify("""
        [RaNNC]
        public partial class Net : Module<Tensor, Tensor>
        {
            private readonly int mode = 1;
            public Net() : base("net") { }
            public override Tensor forward(Tensor x) => x * {|RANNC0008:mode switch { 1 => 2.0, _ => 1.0 }|};
        }
        """);

    [Fact]
    public void Rannc0008_PatternCaseLabel_IsReportedOnTheLabel() => Verify("""
        [RaNNC]
        public partial class Net : Module<Tensor, Tensor>
        {
            private readonly int mode = 1;
            public Net() : base("net") { }
            public override Tensor forward(Tensor x)
            {
                switch (mode)
                {
                    {|RANNC0008:case > 0:|}
                        x = x * 2;
                        break;
                }
                return x;
            }
        }
        """);

    [Fact]
    public void Rannc0008_TupleReturnedInsideABranch_IsReportedOnTheBranch() => Verify("""
        [RaNNC]
        public partial class Net : Module<Tensor, (Tensor, Tensor)>
        {
            private readonly bool swap = true;
            public Net() : base("net") { }
            public override (Tensor, Tensor) forward(Tensor x)
            {
                {|RANNC0008:if (swap) { return (x * 2, x); }|}
                return (x, x * 2);
            }
        }
        """);

    [Fact]
    public void Rannc0008_ObjectInitializerSettingMembers_IsReportedOnTheInitializer() => Verify("""
        public sealed class Options { public double Scale { get; set; } }

        [RaNNC]
        public partial class Net : Module<Tensor, Tensor>
        {
            public Net() : base("net") { }
            public override Tensor forward(Tensor x)
            {
                var options = new Options { {|RANNC0008:Scale = 2|} };
                return x;
            }
        }
        """);

    [Fact]
    public void Rannc0008_TupleOfGraphValuesPassedWhole_IsReportedOnTheArgument() => Verify("""
        public class Pair : Module<(Tensor, Tensor), Tensor>
        {
            public Pair() : base("pair") { }
            public override Tensor forward((Tensor, Tensor) pair) => pair.Item1 + pair.Item2;
        }

        [RaNNC]
        public partial class Net : Module<Tensor, Tensor>
        {
            private readonly Pair pair = new();
            public Net() : base("net") { RegisterComponents(); }
            public override Tensor forward(Tensor x) => {|RANNC0007:pair.forward({|RANNC0008:(x, x * 2)|})|};
        }
        """);

    [Fact]
    public void CapturableModel_HasNoDiagnostics() => Verify("""
        [RaNNC]
        public partial class Net : Module<Tensor, Tensor>
        {
            private readonly ModuleList<Linear> layers = new();
            private readonly bool residual = true;
            public Net() : base("net") { layers.Add(Linear(3, 3)); RegisterComponents(); }
            public override Tensor forward(Tensor x)
            {
                foreach (var layer in layers)
                {
                    x = residual ? x + layer.forward(x) : layer.forward(x);
                }
                return functional.relu(x);
            }
        }
        """);

    [Fact]
    public void Diagnostics_HaveMessagesThatSayWhatToChange()
    {
        var diagnostic = Assert.Single(CompilationHelper.Analyze(Usings + """
            [RaNNC]
            public partial class Net : Module<Tensor, Tensor>
            {
                public Net() : base("net") { }
                public override Tensor forward(Tensor x)
                {
                    if (x.sum().item<double>() > 0) { x = x * 2; }
                    return x;
                }
            }
            """));

        Assert.Equal(DiagnosticSeverity.Warning, diagnostic.Severity);
        Assert.Contains("torch.where", diagnostic.GetMessage(), StringComparison.Ordinal);
        Assert.Contains("docs/diagnostics/RANNC0001.md", diagnostic.Descriptor.Description.ToString(), StringComparison.Ordinal);
    }

    private static readonly Regex s_open = new(@"\G\{\|(RANNC\d{4}):");

    /// <summary>Strips the markup (which may nest), runs generator and analyzer, and compares (id, span) pairs exactly.</summary>
    private static void Verify(string markedSource)
    {
        var source = Usings + markedSource;
        var expected = new List<(string Id, TextSpan Span)>();
        var open = new Stack<(string Id, int Start)>();
        var plain = new System.Text.StringBuilder();
        for (var i = 0; i < source.Length;)
        {
            var opening = s_open.Match(source, i);
            if (opening.Success)
            {
                open.Push((opening.Groups[1].Value, plain.Length));
                i += opening.Length;
            }
            else if (open.Count > 0 && string.CompareOrdinal(source, i, "|}", 0, 2) == 0)
            {
                var (id, start) = open.Pop();
                expected.Add((id, new TextSpan(start, plain.Length - start)));
                i += 2;
            }
            else
            {
                plain.Append(source[i]);
                i++;
            }
        }
        Assert.Empty(open);

        var actual = CompilationHelper.Analyze(plain.ToString())
            .Select(d => (d.Id, d.Location.SourceSpan))
            .OrderBy(d => d.SourceSpan.Start)
            .ToList();

        Assert.Equal(expected.OrderBy(e => e.Span.Start).Select(e => $"{e.Id} {plain.ToString(e.Span.Start, e.Span.Length)}"),
            actual.Select(a => $"{a.Id} {plain.ToString(a.SourceSpan.Start, a.SourceSpan.Length)}"));
        Assert.Equal(expected.OrderBy(e => e.Span.Start).Select(e => e.Span), actual.Select(a => a.SourceSpan));
    }
}
