using Microsoft.CodeAnalysis;

namespace Rannc.Generators;

/// <summary>Every diagnostic Rannc reports. IDs are stable; each has a page under docs/diagnostics.</summary>
internal static class DiagnosticDescriptors
{
    private const string Category = "Rannc.Capture";

    public static readonly DiagnosticDescriptor DataDependentControlFlow = Create(
        "RANNC0001",
        "Control flow depends on tensor values",
        "Control flow in forward() of '{0}' depends on tensor values ({1}); compute both outcomes with tensor operations (for example torch.where), or make the condition depend only on fields set in the constructor or on shapes",
        DiagnosticSeverity.Warning);

    public static readonly DiagnosticDescriptor UncapturableCall = Create(
        "RANNC0002",
        "Call cannot be captured",
        "Call to '{0}' in forward() of '{1}' cannot be captured: {2}",
        DiagnosticSeverity.Warning);

    public static readonly DiagnosticDescriptor StateMutation = Create(
        "RANNC0003",
        "forward() writes module or captured state",
        "forward() of '{0}' writes '{1}'; a captured forward must not change state: keep the value in a local, or register a buffer in the constructor",
        DiagnosticSeverity.Warning);

    public static readonly DiagnosticDescriptor InPlaceOnSharedValue = Create(
        "RANNC0004",
        "In-place operation on a value that is also used elsewhere",
        "In-place operation '{0}' in forward() of '{1}' modifies a value that is also used elsewhere (or is an input, a parameter, or defined outside the enclosing loop); use the out-of-place '{2}' instead",
        DiagnosticSeverity.Warning);

    public static readonly DiagnosticDescriptor NotPartial = Create(
        "RANNC0005",
        "[RaNNC] class is not partial",
        "[RaNNC] class '{0}' must be declared 'partial' so that the generated capture code can be added to it",
        DiagnosticSeverity.Warning);

    public static readonly DiagnosticDescriptor UnsupportedSignature = Create(
        "RANNC0006",
        "Unsupported [RaNNC] class or forward() signature",
        "[RaNNC] class '{0}' cannot be captured: {1}",
        DiagnosticSeverity.Warning);

    public static readonly DiagnosticDescriptor LeafSubmodule = Create(
        "RANNC0007",
        "Submodule is captured as a single node",
        "Submodule '{0}' of type '{1}' is captured as one node; mark '{1}' [RaNNC] and partial to let Rannc partition inside it",
        DiagnosticSeverity.Info);

    public static readonly DiagnosticDescriptor UnsupportedConstruct = Create(
        "RANNC0008",
        "Construct cannot be captured",
        "forward() of '{0}' uses {1}, which cannot be captured; {2}",
        DiagnosticSeverity.Warning);

    public static readonly DiagnosticDescriptor ContainerSubmodule = Create(
        "RANNC0009",
        "Submodule's declared type does not say what it holds",
        "Submodule '{0}' is declared as '{1}', so its contents are not known at build time; when the graph is built, the call is looked through if the instance is a Sequential or a [RaNNC] class, and stays one node otherwise",
        DiagnosticSeverity.Info);

    private static DiagnosticDescriptor Create(string id, string title, string message, DiagnosticSeverity severity) =>
        new(id, title, message, Category, severity, isEnabledByDefault: true,
            description: "Explained, with examples and fixes, in docs/diagnostics/" + id + ".md of the Rannc repository.");
}
