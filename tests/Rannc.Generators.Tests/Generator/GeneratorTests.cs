using System.Reflection;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;
using Rannc.Capture;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Generators.Tests.Generator;

/// <summary>Generated source against baseline files, incremental caching, and models that cannot be captured.</summary>
public sealed class GeneratorTests
{
    private const string Usings = """
        using System;
        using Rannc;
        using TorchSharp;
        using TorchSharp.Modules;
        using static TorchSharp.torch;
        using static TorchSharp.torch.nn;

        """;

    private const string LoopModel = Usings + """
        namespace Baseline;

        [RaNNC]
        public sealed partial class Stack : Module<Tensor, Tensor, Tensor>
        {
            private readonly ModuleList<Linear> layers = new();
            private readonly bool residual;
            private readonly Parameter scale = Parameter(torch.ones(4));

            public Stack(int depth, bool residual) : base(nameof(Stack))
            {
                for (var i = 0; i < depth; i++) layers.Add(Linear(4, 4));
                this.residual = residual;
                RegisterComponents();
            }

            public override Tensor forward(Tensor input, Tensor labels)
            {
                var x = input * scale;
                foreach (var layer in layers)
                {
                    x = residual ? x + functional.relu(layer.forward(x)) : functional.relu(layer.forward(x));
                }
                var (values, _) = x.max(1L);
                var batch = x.shape[0];
                return functional.mse_loss(values.view(batch, -1), labels);
            }
        }
        """;

    private const string DataDependentModel = Usings + """
        namespace Baseline;

        [RaNNC]
        public sealed partial class Gate : Module<Tensor, Tensor>
        {
            public Gate() : base(nameof(Gate)) { }

            public override Tensor forward(Tensor x)
            {
                if (x.sum().item<double>() > 0)
                {
                    x = x * 2;
                }
                return x;
            }
        }
        """;

    public static TheoryData<string, string> Baselines => new()
    {
        { "Stack", LoopModel },
        { "Gate", DataDependentModel },
    };

    [Theory]
    [MemberData(nameof(Baselines))]
    public void Generate_RepresentativeModel_MatchesBaselineFile(string name, string source)
    {
        var (output, generated) = CompilationHelper.Generate(source);

        Assert.Empty(CompilationHelper.CompilerErrors(output));
        var text = Assert.Single(generated).Value;
        var baselinePath = Path.Combine(BaselineDirectory(), name + ".g.cs.txt");
        if (Environment.GetEnvironmentVariable("RANNC_UPDATE_BASELINES") == "1")
        {
            File.WriteAllText(baselinePath, text);
        }
        Assert.True(File.Exists(baselinePath), $"missing baseline {baselinePath}; run the tests with RANNC_UPDATE_BASELINES=1 to create it");
        Assert.Equal(File.ReadAllText(baselinePath), text);
    }

    [Fact]
    public void Generate_SameSourceTwice_GivesIdenticalText()
    {
        var first = CompilationHelper.Generate(LoopModel).Generated;
        var second = CompilationHelper.Generate(LoopModel).Generated;

        Assert.Equal(first, second);
    }

    [Fact]
    public void Generate_UnrelatedEdit_ReusesTheCachedModelAndSource()
    {
        var compilation = CompilationHelper.CreateCompilation(LoopModel);
        var driver = CompilationHelper.CreateDriver().RunGenerators(compilation);

        var unrelated = CSharpSyntaxTree.ParseText("namespace Other; public static class Unrelated { public static int Answer => 42; }", CompilationHelper.ParseOptions);
        driver = driver.RunGenerators(compilation.AddSyntaxTrees(unrelated));
        var run = driver.GetRunResult().Results.Single();

        var models = run.TrackedSteps[RanncGenerator.CaptureModelsStep].SelectMany(step => step.Outputs).ToList();
        Assert.NotEmpty(models);
        Assert.All(models, output => Assert.True(
            output.Reason is IncrementalStepRunReason.Cached or IncrementalStepRunReason.Unchanged, $"model step was {output.Reason}"));
        var sources = run.TrackedOutputSteps.SelectMany(step => step.Value).SelectMany(step => step.Outputs).ToList();
        Assert.All(sources, output => Assert.Equal(IncrementalStepRunReason.Cached, output.Reason));
    }

    [Fact]
    public void Generate_EditOfForward_RegeneratesTheSource()
    {
        var compilation = CompilationHelper.CreateCompilation(LoopModel);
        var driver = CompilationHelper.CreateDriver().RunGenerators(compilation);
        var oldTree = compilation.SyntaxTrees.Single();
        var newTree = oldTree.WithChangedText(Microsoft.CodeAnalysis.Text.SourceText.From(
            LoopModel.Replace("var x = input * scale;", "var x = input * scale * 2;", StringComparison.Ordinal)));

        driver = driver.RunGenerators(compilation.ReplaceSyntaxTree(oldTree, newTree));
        var run = driver.GetRunResult().Results.Single();

        Assert.Contains(run.TrackedSteps[RanncGenerator.CaptureModelsStep].SelectMany(step => step.Outputs),
            output => output.Reason == IncrementalStepRunReason.Modified);
        Assert.Contains("* (2)", run.GeneratedSources.Single().SourceText.ToString(), StringComparison.Ordinal);
    }

    [Fact]
    public void UncapturableModel_StillCompiles_AndBuildSaysWhy()
    {
        var (output, _) = CompilationHelper.Generate(DataDependentModel);
        Assert.Empty(CompilationHelper.CompilerErrors(output));
        var assembly = CompilationHelper.EmitAndLoad(output);
        using var scope = torch.NewDisposeScope();
        var model = (nn.Module<Tensor, Tensor>)Activator.CreateInstance(assembly.GetType("Baseline.Gate")!)!;

        var template = ((ICapturedModule)model).CaptureTemplate;
        var error = Assert.Throws<CaptureException>(() => CapturedGraph.Build(model));

        Assert.False(template.IsCaptured);
        Assert.Contains("RANNC0001", error.Message, StringComparison.Ordinal);
        Assert.Contains("Model.cs(16,13)", error.Message, StringComparison.Ordinal);
        // the model itself still runs eagerly
        Assert.Equal(4.0, model.forward(torch.full(2, 1.0, dtype: ScalarType.Float64)).sum().item<double>());
    }

    [Fact]
    public void NotPartialModel_CompilesWithoutGeneratedSource()
    {
        var source = DataDependentModel.Replace("public sealed partial class Gate", "public sealed class Gate", StringComparison.Ordinal);

        var (output, generated) = CompilationHelper.Generate(source);

        Assert.Empty(generated);
        Assert.Empty(CompilationHelper.CompilerErrors(output));
        Assert.Contains(CompilationHelper.Analyze(source), d => d.Id == "RANNC0005");
    }

    private static string BaselineDirectory([System.Runtime.CompilerServices.CallerFilePath] string thisFile = "") =>
        Path.Combine(Path.GetDirectoryName(thisFile)!, "Baselines");
}
