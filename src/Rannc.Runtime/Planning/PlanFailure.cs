using Rannc.Capture;
using Rannc.Partitioner;

namespace Rannc.Planning;

/// <summary>Explains why the planner found no plan: memory, or a forced plan the graph cannot be cut into.</summary>
internal static class PlanFailure
{
    /// <summary>
    /// Null when the graph has at least as many nodes as the forced plan has stages; otherwise why the plan cannot be
    /// made (checked before profiling, which would be wasted).
    /// </summary>
    public static string? TooFewNodes(CapturedGraph graph, IReadOnlyList<int>? forced)
    {
        if (forced is null || forced.Count <= graph.Nodes.Count) return null;
        return CannotCut(graph, forced, $"the graph has only {graph.Nodes.Count} node(s)");
    }

    /// <summary>The message for a <see cref="NoFeasiblePlanException"/> from planning <paramref name="graph"/>.</summary>
    public static string Explain(NoFeasiblePlanException e, CapturedGraph graph, IReadOnlyList<int>? forced, int worldSize, string budget, double margin)
    {
        if (e.RequiredPeakBytes < 0)
        {
            // No plan shape exists at all: memory was never the question.
            return forced is not null
                ? CannotCut(graph, forced, $"the planner found no way to cut the graph's {graph.Nodes.Count} node(s) into {forced.Count} stages") + $" Planner: {e.Message}"
                : $"No plan shape is allowed by the options on {worldSize} rank(s). Planner: {e.Message}";
        }
        return $"The model does not fit: the smallest plan needs {Bytes(e.RequiredPeakBytes)} per rank before the {margin:P0} margin, " +
            $"but each of the {worldSize} rank(s) has {budget} (set RANNC_DEVICE_MEMORY or add ranks). Planner: {e.Message}";
    }

    private static string CannotCut(CapturedGraph graph, IReadOnlyList<int> forced, string why)
    {
        string opaque = OpaqueModules.Summary(graph) is { } summary ? $" {summary}." : "";
        return $"The forced plan [{string.Join(", ", forced)}] ({forced.Count} stages) cannot be made: too few nodes to cut, {why}.{opaque} " +
            "Force fewer stages (RANNC_PLAN), or mark the submodules [RaNNC] so that the graph looks inside them.";
    }

    private static string Bytes(long bytes) =>
        bytes >= 1L << 30 ? $"{bytes / (double)(1L << 30):0.00} GiB" : bytes >= 1L << 20 ? $"{bytes / (double)(1L << 20):0.0} MiB" : $"{bytes / 1024.0:0.0} KiB";
}
