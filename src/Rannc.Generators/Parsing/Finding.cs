using Microsoft.CodeAnalysis;

namespace Rannc.Generators.Parsing;

/// <summary>A diagnostic found while parsing; the analyzer reports it, the generator only keeps its message.</summary>
internal sealed class Finding
{
    public Finding(DiagnosticDescriptor descriptor, Location location, object[] arguments)
    {
        Descriptor = descriptor;
        Location = location;
        Arguments = arguments;
    }

    public DiagnosticDescriptor Descriptor { get; }

    public Location Location { get; }

    public object[] Arguments { get; }

    /// <summary>True when the finding prevents capture (everything except the informational ones).</summary>
    public bool PreventsCapture => Descriptor.DefaultSeverity != DiagnosticSeverity.Info;

    public Diagnostic ToDiagnostic() => Diagnostic.Create(Descriptor, Location, Arguments);
}
