using Rannc.Capture;
using Rannc.Partitioner;

namespace Rannc.Execution;

/// <summary>
/// Which stages hold each parameter and buffer of a plan. A parameter read by nodes of several stages (a tied
/// embedding) is held by each of them: every holder computes the gradient of its own uses, and the copies' gradients
/// are summed among all ranks of the holding stages before the step, so the copies stay equal (the way Megatron keeps
/// its word-embedding group in sync). Names are the graph's (<see cref="CapturedGraph.CanonicalName"/>).
/// </summary>
internal sealed class ParameterPlacement
{
    private readonly Dictionary<string, int[]> _holders;

    public ParameterPlacement(CapturedGraph graph, PartitionPlan plan)
    {
        var holders = new Dictionary<string, SortedSet<int>>(StringComparer.Ordinal);
        foreach (StagePlan stage in plan.Stages)
        {
            foreach (int node in stage.NodeIds)
            {
                foreach (string name in graph.Nodes[node].Parameters.Concat(graph.Nodes[node].Buffers))
                {
                    if (!holders.TryGetValue(name, out SortedSet<int>? stages)) holders[name] = stages = [];
                    stages.Add(stage.Index);
                }
            }
        }
        _holders = holders.ToDictionary(h => h.Key, h => h.Value.ToArray(), StringComparer.Ordinal);
        var buffers = graph.Parameters.Where(p => p.IsBuffer).Select(p => p.Name).ToHashSet(StringComparer.Ordinal);
        SharedGroups = _holders.Where(h => h.Value.Length > 1 && !buffers.Contains(h.Key))
            .GroupBy(h => string.Join(",", h.Value), StringComparer.Ordinal)
            .OrderBy(g => g.Key, StringComparer.Ordinal)
            .Select(g => new SharedParameterGroup(g.First().Value, g.Select(h => h.Key).Order(StringComparer.Ordinal).ToArray()))
            .ToArray();
        // A buffer that only field reads use, and that no node writes into, stays as rank 0 broadcast it (a rotary
        // table): every stage that reads it may hold a copy. One a module reads (batch norm's statistics) may change.
        ReadOnlyBuffers = buffers.Where(name => graph.Nodes.Where(n => n.Buffers.Contains(name)).All(n =>
            n.Kind == NodeKind.Attribute && !n.Outputs.Any(graph.ModifiedInPlace.Contains))).ToHashSet(StringComparer.Ordinal);
        SharedBuffers = _holders.Where(h => h.Value.Length > 1 && buffers.Contains(h.Key) && !ReadOnlyBuffers.Contains(h.Key))
            .Select(h => h.Key).ToArray();
    }

    /// <summary>Buffers no node changes: only read as fields, never written in place. Stages may share them.</summary>
    public IReadOnlySet<string> ReadOnlyBuffers { get; }

    /// <summary>Parameters held by more than one stage, grouped by the set of stages that hold them.</summary>
    public IReadOnlyList<SharedParameterGroup> SharedGroups { get; }

    /// <summary>Buffers read in more than one stage: they would diverge between the copies, so such plans are refused.</summary>
    public IReadOnlyList<string> SharedBuffers { get; }

    /// <summary>Every parameter and buffer some node uses.</summary>
    public IEnumerable<string> Names => _holders.Keys;

    /// <summary>The stages whose nodes use <paramref name="name"/> (empty when no node does).</summary>
    public IReadOnlyList<int> HoldersOf(string name) => _holders.TryGetValue(name, out int[]? stages) ? stages : [];

    public bool IsHeldBy(string name, int stage) => _holders.TryGetValue(name, out int[]? stages) && stages.Contains(stage);

    public bool IsShared(string name) => _holders.TryGetValue(name, out int[]? stages) && stages.Length > 1;
}

/// <summary>Parameters held by the same stages; their gradients are summed over every rank of those stages.</summary>
/// <param name="Stages">The holding stages, ascending.</param>
/// <param name="Names">The parameters' graph names, in a fixed order (the same on every rank).</param>
internal sealed record SharedParameterGroup(int[] Stages, string[] Names);
