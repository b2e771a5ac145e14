using System.Globalization;

namespace Rannc.Capture;

/// <summary>
/// The module nodes the partitioner cannot cut inside (user modules that are neither TorchSharp's layers nor captured
/// <c>[RaNNC]</c> classes), summarised so that a plan's log says how much of the model they hold and why.
/// </summary>
public static class OpaqueModules
{
    /// <summary>
    /// One line such as "2 opaque modules hold 41 % of the parameters: head (Head is not marked [RaNNC] …), …", or
    /// null when every module node is a TorchSharp layer.
    /// </summary>
    public static string? Summary(CapturedGraph graph)
    {
        ArgumentNullException.ThrowIfNull(graph);
        var opaque = graph.Nodes.Where(n => n.OpaqueReason is not null).ToList();
        if (opaque.Count == 0)
        {
            return null;
        }
        var bytes = graph.Parameters.Where(p => !p.IsBuffer).ToDictionary(p => p.Name, p => p.Bytes, StringComparer.Ordinal);
        long total = bytes.Values.Sum();
        long held = opaque.SelectMany(n => n.Parameters).Distinct().Sum(p => bytes.GetValueOrDefault(p));
        var share = total == 0 ? 0 : 100.0 * held / total;
        var modules = string.Join(", ", opaque.Select(n => $"{n.Name} ({n.OpaqueReason})"));
        return string.Create(CultureInfo.InvariantCulture,
            $"{opaque.Count} opaque module{(opaque.Count == 1 ? "" : "s")} hold{(opaque.Count == 1 ? "s" : "")} {share:0} % of the parameters " +
            $"(no cut can fall inside {(opaque.Count == 1 ? "it" : "them")}): {modules}");
    }
}
