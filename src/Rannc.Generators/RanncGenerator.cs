using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp.Syntax;
using Rannc.Generators.Model;
using Rannc.Generators.Parsing;

namespace Rannc.Generators;

/// <summary>
/// Captures forward() of every <c>[RaNNC]</c> class at build time and adds an implementation of
/// <c>Rannc.Capture.ICapturedModule</c> to it. Parsing produces an equatable <see cref="CaptureModel"/>; emitting
/// depends only on that model, so edits that do not change the model do not regenerate source. Diagnostics are
/// reported by <see cref="RanncAnalyzer"/>, which runs the same parser.
/// </summary>
[Generator(LanguageNames.CSharp)]
public sealed class RanncGenerator : IIncrementalGenerator
{
    /// <summary>Tracking name of the step that produces the capture models (used by the incremental tests).</summary>
    public const string CaptureModelsStep = "RanncCaptureModels";

    public void Initialize(IncrementalGeneratorInitializationContext context)
    {
        var models = context.SyntaxProvider
            .ForAttributeWithMetadataName(
                KnownSymbols.RaNNCAttributeName,
                static (node, _) => node is ClassDeclarationSyntax,
                static (attributeContext, cancellation) =>
                {
                    var compilation = attributeContext.SemanticModel.Compilation;
                    var type = (INamedTypeSymbol)attributeContext.TargetSymbol;
                    var result = ModuleParser.Parse(
                        type,
                        KnownSymbols.Create(compilation),
                        tree => tree == attributeContext.SemanticModel.SyntaxTree ? attributeContext.SemanticModel : compilation.GetSemanticModel(tree),
                        cancellation);
                    return result.Model;
                })
            .Where(static model => model is not null)
            .WithTrackingName(CaptureModelsStep);

        context.RegisterSourceOutput(models, static (output, model) => output.AddSource(model!.Type.HintName, Emitter.Emit(model)));
    }
}
