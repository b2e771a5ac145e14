namespace Rannc.Partitioner;

/// <summary>
/// The first two levels of the search. Atomic units: every batch-dependent node together with the
/// batch-independent nodes (parameter transposes, constants) that feed it, placed right before their first
/// batch-dependent consumer, so no stage ever holds only parameter arithmetic. Blocks: adjacent units merged
/// until at most <see cref="PlanningOptions.MaxBlocks"/> remain, always merging the adjacent pair with the
/// smallest combined weight (share of compute time plus share of parameter bytes), which keeps blocks balanced.
/// Units and blocks are contiguous ranges of one topological order, hence convex.
/// </summary>
public static class GraphBlocks
{
    /// <summary>Atomic units in pipeline order, each a list of node ids in execution order. A value that cannot cross a
    /// stage boundary (<see cref="GraphValue.CanCrossStage"/>) never leaves its unit.</summary>
    public static IReadOnlyList<IReadOnlyList<int>> AtomicUnits(Graph graph)
    {
        int nodeCount = graph.Nodes.Count;
        var graphInputs = new HashSet<int>(graph.Inputs);
        var consumers = new List<int>[graph.Values.Count];
        foreach (GraphNode node in graph.Nodes)
        {
            foreach (int v in node.Inputs)
            {
                (consumers[v] ??= []).Add(node.Id);
            }
        }

        bool IsBatchDependent(GraphNode node) =>
            node.Inputs.Any(v => graph.Values[v].BytesPerSample > 0 || graphInputs.Contains(v))
            || node.Outputs.Any(v => graph.Values[v].BytesPerSample > 0);

        // anchor[n] = the node whose unit n joins: itself if batch-dependent (or unused), else its first consumer's anchor.
        int[] anchor = new int[nodeCount];
        for (int n = nodeCount - 1; n >= 0; n--)
        {
            GraphNode node = graph.Nodes[n];
            int first = int.MaxValue;
            if (!IsBatchDependent(node))
            {
                foreach (int v in node.Outputs)
                {
                    foreach (int c in consumers[v] ?? [])
                    {
                        first = Math.Min(first, anchor[c]);
                    }
                }
            }

            anchor[n] = first == int.MaxValue ? n : first;
        }

        var members = new List<int>[nodeCount];
        for (int n = 0; n < nodeCount; n++)
        {
            (members[anchor[n]] ??= []).Add(n);
        }

        var units = new List<List<int>>();
        int[] unitOfNode = new int[nodeCount];
        for (int n = 0; n < nodeCount; n++)
        {
            if (anchor[n] == n)
            {
                units.Add(members[n]!);
            }
        }

        for (int u = 0; u < units.Count; u++)
        {
            foreach (int n in units[u])
            {
                unitOfNode[n] = u;
            }
        }

        // A value the runtime cannot send joins its producer's and readers' units (and those between, so units stay
        // intervals of one order): no stage boundary can then fall between them.
        int[] reach = new int[units.Count];
        for (int u = 0; u < units.Count; u++)
        {
            reach[u] = u;
        }

        foreach (GraphNode node in graph.Nodes)
        {
            foreach (int v in node.Outputs)
            {
                if (!graph.Values[v].CanCrossStage)
                {
                    int from = unitOfNode[node.Id];
                    foreach (int c in consumers[v] ?? [])
                    {
                        reach[from] = Math.Max(reach[from], unitOfNode[c]);
                    }
                }
            }
        }

        var merged = new List<IReadOnlyList<int>>();
        for (int u = 0; u < units.Count;)
        {
            var unit = new List<int>();
            int end = reach[u];
            for (; u <= end; u++)
            {
                end = Math.Max(end, reach[u]);
                unit.AddRange(units[u]);
            }

            merged.Add(unit);
        }

        return merged;
    }

    /// <summary>Merges adjacent units into at most <paramref name="maxBlocks"/> balanced blocks.</summary>
    public static IReadOnlyList<IReadOnlyList<int>> Coarsen(
        Graph graph, CostTable costs, IReadOnlyList<IReadOnlyList<int>> units, int maxBlocks)
    {
        var blocks = units.Select(u => new List<int>(u)).ToList();
        if (blocks.Count <= maxBlocks)
        {
            return blocks;
        }

        var time = blocks.Select(b => b.Sum(n => NodeTime(costs.Nodes[n]))).ToList();
        var bytes = blocks.Select(b => (double)ParameterBytes(graph, b)).ToList();
        double totalTime = Math.Max(time.Sum(), double.Epsilon), totalBytes = Math.Max(bytes.Sum(), 1);
        var weight = time.Select((t, i) => t / totalTime + bytes[i] / totalBytes).ToList();
        while (blocks.Count > maxBlocks)
        {
            int best = 0;
            for (int i = 1; i + 1 < blocks.Count; i++)
            {
                if (weight[i] + weight[i + 1] < weight[best] + weight[best + 1])
                {
                    best = i;
                }
            }

            blocks[best].AddRange(blocks[best + 1]);
            weight[best] += weight[best + 1];
            blocks.RemoveAt(best + 1);
            weight.RemoveAt(best + 1);
        }

        return blocks;
    }

    private static double NodeTime(NodeCost cost) =>
        cost.ForwardFixedSeconds + cost.ForwardSecondsPerSample + cost.BackwardFixedSeconds + cost.BackwardSecondsPerSample;

    private static long ParameterBytes(Graph graph, IEnumerable<int> nodes) =>
        nodes.SelectMany(n => graph.Nodes[n].Parameters).Distinct().Sum(p => graph.Parameters[p].Bytes);
}
