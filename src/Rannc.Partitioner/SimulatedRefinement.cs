namespace Rannc.Partitioner;

/// <summary>
/// Local search on a finished plan, judged by the simulator rather than by J: from the planner's best candidate it tries
/// small changes (move a stage boundary by one atomic unit, move one device between neighbouring stages or give it an
/// idle one, the next micro-batch count up or down on the grid, another allowed schedule), each with recomputation re-decided
/// where memory needs it (recomputing where a stage fits only lengthens its backward), and accepts a change only when the
/// plan still fits and its simulated step is strictly shorter. The neighbours of a plan are simulated in the order of their
/// J, so the likeliest improvements are tried first, and the search stops after a fixed number of simulated rank ×
/// micro-batch pairs (<see cref="SimulationBudget"/>): at a thousand ranks and micro-batches one simulation costs about a
/// second, so there the budget allows none and the plan is returned unchanged, while on tens of devices it allows
/// hundreds. Pure and deterministic: the budget counts work, not time.
/// </summary>
internal static class SimulatedRefinement
{
    /// <summary>Rank × micro-batch pairs the refinement may simulate in all (each simulation costs ranks used × micro-batches).</summary>
    public const long SimulationBudget = 250_000;

    /// <summary>
    /// A plan that simulates no slower than <paramref name="start"/> (strictly faster when any accepted change was found)
    /// and satisfies <see cref="PartitionPlan.FindViolations"/> whenever <paramref name="start"/> does. Returns
    /// <paramref name="start"/> itself when its stages are not ranges of atomic units or nothing better was found.
    /// </summary>
    public static PartitionPlan Refine(
        Graph graph, CostTable costs, Cluster cluster, PlanningOptions options, PartitionPlan start,
        Func<PlanShape, PartitionPlan> build, long budget = SimulationBudget)
    {
        IReadOnlyList<IReadOnlyList<int>> units = GraphBlocks.AtomicUnits(graph);
        List<int>? bounds = UnitBounds(units, graph.Nodes.Count, start);
        if (bounds is null)
        {
            return start;
        }

        var current = new State(bounds, start.Stages.Select(s => s.ReplicaRanks.Count).ToList(), start.MicroBatchCount, start.Schedule);
        PartitionPlan best = start;
        long spent = 0;
        bool improved = true;
        while (improved)
        {
            improved = false;
            if (spent + (long)current.Replicas.Sum() * (LowerMicroBatchCount(current.MicroBatches, options) ?? current.MicroBatches) > budget)
            {
                return best; // not even the cheapest neighbour could be simulated: skip building them
            }

            // Neighbours that fit, in order of J (ties: the order generated), each simulated until one is faster.
            var neighbours = new List<(double Objective, int Order, PlanShape Shape, State State)>();
            foreach (State next in Neighbours(current, units.Count, cluster.DeviceCount, options))
            {
                PlanShape? shape = ShapeOf(next, units, graph, costs, cluster, options, out double objective);
                if (shape is not null)
                {
                    neighbours.Add((objective, neighbours.Count, shape, next));
                }
            }

            foreach ((_, _, PlanShape shape, State state) in neighbours.OrderBy(n => n.Objective).ThenBy(n => n.Order))
            {
                long cost = (long)state.Replicas.Sum() * state.MicroBatches;
                if (spent + cost > budget)
                {
                    return best;
                }

                spent += cost;
                PartitionPlan candidate = build(shape);
                if (candidate.PredictedStepSeconds < best.PredictedStepSeconds
                    && candidate.FindViolations(graph, costs, cluster, options).Count == 0)
                {
                    best = candidate;
                    current = state;
                    improved = true;
                    break;
                }
            }
        }

        return best;
    }

    /// <summary>The shapes the local search considers from <paramref name="plan"/> (those that fit), with their J, in the
    /// order generated; empty when its stages are not ranges of atomic units. For the objective-versus-simulator
    /// measurements of the benchmark.</summary>
    public static IReadOnlyList<(PlanShape Shape, double Objective)> NeighbourShapes(
        Graph graph, CostTable costs, Cluster cluster, PlanningOptions options, PartitionPlan plan)
    {
        IReadOnlyList<IReadOnlyList<int>> units = GraphBlocks.AtomicUnits(graph);
        List<int>? bounds = UnitBounds(units, graph.Nodes.Count, plan);
        var shapes = new List<(PlanShape, double)>();
        if (bounds is null)
        {
            return shapes;
        }

        var state = new State(bounds, plan.Stages.Select(s => s.ReplicaRanks.Count).ToList(), plan.MicroBatchCount, plan.Schedule);
        foreach (State next in Neighbours(state, units.Count, cluster.DeviceCount, options))
        {
            if (ShapeOf(next, units, graph, costs, cluster, options, out double objective) is { } shape)
            {
                shapes.Add((shape, objective));
            }
        }

        return shapes;
    }

    /// <summary>A plan in unit terms: stage <c>s</c> holds units <c>[Bounds[s], Bounds[s + 1])</c>.</summary>
    private sealed record State(IReadOnlyList<int> Bounds, IReadOnlyList<int> Replicas, int MicroBatches, PipelineScheduleKind Schedule);

    /// <summary>The unit index where each stage starts (and the unit count at the end), or null when some stage is not a
    /// contiguous range of whole units.</summary>
    private static List<int>? UnitBounds(IReadOnlyList<IReadOnlyList<int>> units, int nodeCount, PartitionPlan plan)
    {
        int[] unitOf = new int[nodeCount];
        for (int u = 0; u < units.Count; u++)
        {
            foreach (int node in units[u])
            {
                unitOf[node] = u;
            }
        }

        var bounds = new List<int> { 0 };
        foreach (StagePlan stage in plan.Stages)
        {
            if (stage.NodeIds.Count == 0)
            {
                return null;
            }

            int first = stage.NodeIds.Min(n => unitOf[n]), last = stage.NodeIds.Max(n => unitOf[n]);
            int unitNodes = Enumerable.Range(first, last - first + 1).Sum(u => units[u].Count);
            if (first != bounds[^1] || unitNodes != stage.NodeIds.Count)
            {
                return null;
            }

            bounds.Add(last + 1);
        }

        return bounds[^1] == units.Count ? bounds : null;
    }

    /// <summary>The changes tried from <paramref name="state"/>, in a fixed order.</summary>
    private static IEnumerable<State> Neighbours(State state, int unitCount, int deviceCount, PlanningOptions options)
    {
        int stages = state.Replicas.Count;
        // A stage boundary one unit earlier or later (no stage becomes empty).
        for (int k = 1; k < stages; k++)
        {
            foreach (int step in new[] { -1, 1 })
            {
                int moved = state.Bounds[k] + step;
                if (moved > state.Bounds[k - 1] && moved < state.Bounds[k + 1])
                {
                    var bounds = state.Bounds.ToList();
                    bounds[k] = moved;
                    yield return state with { Bounds = bounds };
                }
            }
        }

        if (options.ForcedReplicasPerStage is null)
        {
            // One device from a stage to its neighbour, or an idle device to a stage.
            for (int s = 0; s + 1 < stages; s++)
            {
                foreach ((int from, int to) in new[] { (s, s + 1), (s + 1, s) })
                {
                    if (state.Replicas[from] > 1)
                    {
                        var replicas = state.Replicas.ToList();
                        replicas[from]--;
                        replicas[to]++;
                        yield return state with { Replicas = replicas };
                    }
                }
            }

            if (state.Replicas.Sum() < deviceCount)
            {
                for (int s = 0; s < stages; s++)
                {
                    var replicas = state.Replicas.ToList();
                    replicas[s]++;
                    yield return state with { Replicas = replicas };
                }
            }
        }

        // The neighbouring micro-batch counts on the grid the search uses (dense up to its limit, then the batch's divisors
        // and powers of two).
        if (LowerMicroBatchCount(state.MicroBatches, options) is { } lower)
        {
            yield return state with { MicroBatches = lower };
        }

        for (int m = state.MicroBatches + 1; m <= Math.Min(options.MaxMicroBatches, options.GlobalBatchSize); m++)
        {
            if (OnMicroBatchGrid(m, options))
            {
                yield return state with { MicroBatches = m };
                break;
            }
        }

        // Every allowed schedule, the zero-bubble one included (the search leaves it to the simulated choice).
        foreach (PipelineScheduleKind schedule in options.Schedules.Distinct())
        {
            if (schedule != state.Schedule)
            {
                yield return state with { Schedule = schedule };
            }
        }
    }

    private static bool OnMicroBatchGrid(int microBatches, PlanningOptions options) =>
        microBatches <= options.DenseMicroBatchLimit || StageSearch.IsEvenCount(microBatches, options.GlobalBatchSize);

    /// <summary>The next smaller micro-batch count on the grid, or null.</summary>
    private static int? LowerMicroBatchCount(int microBatches, PlanningOptions options)
    {
        for (int m = microBatches - 1; m >= options.MinMicroBatches; m--)
        {
            if (OnMicroBatchGrid(m, options))
            {
                return m;
            }
        }

        return null;
    }

    /// <summary>The plan shape of <paramref name="state"/> with recomputation only where a stage does not fit otherwise,
    /// and its J; null when it does not fit, breaks a slice floor or has more replicas than samples.</summary>
    private static PlanShape? ShapeOf(
        State state, IReadOnlyList<IReadOnlyList<int>> units, Graph graph, CostTable costs, Cluster cluster, PlanningOptions options,
        out double objective)
    {
        objective = double.PositiveInfinity;
        var layout = new MicroBatchLayout(options.GlobalBatchSize, state.MicroBatches);
        if (state.Replicas.Any(r => r > layout.SmallestMicroBatch))
        {
            return null;
        }

        var stages = new List<IReadOnlyList<int>>();
        for (int s = 0; s < state.Replicas.Count; s++)
        {
            stages.Add(Enumerable.Range(state.Bounds[s], state.Bounds[s + 1] - state.Bounds[s]).SelectMany(u => units[u]).Order().ToList());
        }

        RangeTable table = RangeTable.BuildStages(graph, costs, stages);
        long usable = CostModel.UsableBytes(cluster, options);
        bool recomputeAllowed = options.AllowRecompute && state.Schedule != PipelineScheduleKind.ZeroBubble;
        var recompute = new bool[stages.Count];
        for (int s = 0; s < stages.Count; s++)
        {
            StageProfile profile = table.Get(s, s + 1);
            if (layout.SmallestMicroBatch / state.Replicas[s] < Math.Max(profile.MinSamplesPerSlice, options.MinSamplesPerSlice))
            {
                return null;
            }

            int slice = layout.LargestSlice(state.Replicas[s]);
            int inFlight = CostModel.InFlightMicroBatches(state.Schedule, state.MicroBatches, stages.Count - s);
            if (CostModel.PeakBytes(profile, slice, inFlight, recompute: false, options.OptimizerStateFactor) > usable)
            {
                if (!recomputeAllowed || CostModel.PeakBytes(profile, slice, inFlight, recompute: true, options.OptimizerStateFactor) > usable)
                {
                    return null;
                }

                recompute[s] = true;
            }
        }

        var shape = new PlanShape(stages, state.Replicas, recompute, state.MicroBatches, state.Schedule);
        objective = PlanObjective.Evaluate(table, cluster, options, shape).ObjectiveSeconds;
        return shape;
    }
}
