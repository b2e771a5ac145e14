using System.Collections.Immutable;
using System.Reflection;
using System.Runtime.Loader;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;
using Microsoft.CodeAnalysis.Diagnostics;

namespace Rannc.Generators.Tests.Generator;

/// <summary>Compiles test sources against TorchSharp and Rannc.Runtime, runs the generator and the analyzer on them.</summary>
internal static class CompilationHelper
{
    private static readonly Lazy<ImmutableArray<MetadataReference>> s_references = new(() =>
        ((string)AppContext.GetData("TRUSTED_PLATFORM_ASSEMBLIES")!)
            .Split(Path.PathSeparator)
            .Where(path => path.EndsWith(".dll", StringComparison.Ordinal))
            .Select(path => (MetadataReference)MetadataReference.CreateFromFile(path))
            .ToImmutableArray());

    public static CSharpParseOptions ParseOptions { get; } = new(LanguageVersion.Latest);

    public static CSharpCompilation CreateCompilation(params string[] sources) =>
        CSharpCompilation.Create(
            "CaptureTest" + Guid.NewGuid().ToString("N"),
            sources.Select((source, i) => CSharpSyntaxTree.ParseText(source, ParseOptions, path: i == 0 ? "Model.cs" : $"Model{i}.cs")),
            s_references.Value,
            new CSharpCompilationOptions(OutputKind.DynamicallyLinkedLibrary, nullableContextOptions: NullableContextOptions.Enable));

    public static GeneratorDriver CreateDriver() =>
        CSharpGeneratorDriver.Create(
            [new RanncGenerator().AsSourceGenerator()],
            parseOptions: ParseOptions,
            driverOptions: new GeneratorDriverOptions(IncrementalGeneratorOutputKind.None, trackIncrementalGeneratorSteps: true));

    /// <summary>Runs the generator; returns the compilation with the generated sources and the generated texts by hint name.</summary>
    public static (Compilation Output, IReadOnlyDictionary<string, string> Generated) Generate(params string[] sources)
    {
        var compilation = CreateCompilation(sources);
        CreateDriver().RunGeneratorsAndUpdateCompilation(compilation, out var output, out var generatorDiagnostics);
        Assert.Empty(generatorDiagnostics);
        var generated = output.SyntaxTrees
            .Where(tree => tree.FilePath.EndsWith(".g.cs", StringComparison.Ordinal))
            .ToDictionary(tree => Path.GetFileName(tree.FilePath), tree => tree.GetText().ToString());
        return (output, generated);
    }

    /// <summary>Diagnostics of the analyzer on <paramref name="sources"/>, after the generator ran.</summary>
    public static ImmutableArray<Diagnostic> Analyze(params string[] sources)
    {
        var (output, _) = Generate(sources);
        var withAnalyzer = output.WithAnalyzers([new RanncAnalyzer()]);
        return withAnalyzer.GetAnalyzerDiagnosticsAsync().GetAwaiter().GetResult();
    }

    /// <summary>Errors of the C# compiler itself (after generation).</summary>
    public static IReadOnlyList<Diagnostic> CompilerErrors(Compilation compilation) =>
        compilation.GetDiagnostics().Where(d => d.Severity == DiagnosticSeverity.Error).ToList();

    /// <summary>Emits the compilation and loads it into a fresh collectible load context.</summary>
    public static Assembly EmitAndLoad(Compilation compilation)
    {
        using var stream = new MemoryStream();
        var result = compilation.Emit(stream);
        Assert.True(result.Success, string.Join(Environment.NewLine, result.Diagnostics.Where(d => d.Severity == DiagnosticSeverity.Error)));
        stream.Position = 0;
        var context = new AssemblyLoadContext("capture-test", isCollectible: true);
        return context.LoadFromStream(stream);
    }
}
