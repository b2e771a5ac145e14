using System.Collections.Immutable;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.Diagnostics;
using Rannc.Generators.Parsing;

namespace Rannc.Generators;

/// <summary>Reports why a <c>[RaNNC]</c> class cannot be captured (or can only be captured coarsely), with locations.</summary>
[DiagnosticAnalyzer(LanguageNames.CSharp)]
public sealed class RanncAnalyzer : DiagnosticAnalyzer
{
    public override ImmutableArray<DiagnosticDescriptor> SupportedDiagnostics { get; } = ImmutableArray.Create(
        DiagnosticDescriptors.DataDependentControlFlow,
        DiagnosticDescriptors.UncapturableCall,
        DiagnosticDescriptors.StateMutation,
        DiagnosticDescriptors.InPlaceOnSharedValue,
        DiagnosticDescriptors.NotPartial,
        DiagnosticDescriptors.UnsupportedSignature,
        DiagnosticDescriptors.LeafSubmodule,
        DiagnosticDescriptors.UnsupportedConstruct,
        DiagnosticDescriptors.ContainerSubmodule);

    public override void Initialize(AnalysisContext context)
    {
        context.ConfigureGeneratedCodeAnalysis(GeneratedCodeAnalysisFlags.None);
        context.EnableConcurrentExecution();
        context.RegisterCompilationStartAction(static start => RegisterCaptureCheck(start));
    }

    private static void RegisterCaptureCheck(CompilationStartAnalysisContext start)
    {
        var known = KnownSymbols.Create(start.Compilation);
        if (known.RaNNCAttribute is null)
        {
            return;
        }
        start.RegisterSymbolAction(
            symbolContext =>
            {
                var type = (INamedTypeSymbol)symbolContext.Symbol;
                if (!known.HasRaNNCAttribute(type))
                {
                    return;
                }
                var compilation = symbolContext.Compilation;
                // forward() and its helper methods may sit in several files of the partial class, and only
                // [RaNNC] classes (a handful per project) get here, so asking for their semantic models is cheap.
#pragma warning disable RS1030
                var result = ModuleParser.Parse(type, known, tree => compilation.GetSemanticModel(tree), symbolContext.CancellationToken);
#pragma warning restore RS1030
                foreach (var finding in result.Findings)
                {
                    symbolContext.ReportDiagnostic(finding.ToDiagnostic());
                }
            },
            SymbolKind.NamedType);
    }
}
