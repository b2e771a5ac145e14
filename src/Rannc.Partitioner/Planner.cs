namespace Rannc.Partitioner;

/// <summary>
/// The planner: <c>Plan(graph, costs, cluster, options)</c> chooses by simulated step time (<see cref="PipelineSimulator"/>)
/// among the search's plans, the baselines (<see cref="Baselines"/>: uniform, parameter-balanced, data parallel) and the
/// cycle-balanced split (<see cref="CycleBalancedSplit"/>), then improves the chosen plan by a local search judged by the
/// simulator within a fixed budget (<see cref="SimulatedRefinement"/>), so it never returns a plan that simulates slower
/// than any of them. The search's plans: the J-best plan found
/// (<see cref="PlanObjective"/>; below the best baseline's J, which bounds the search) and, for 1F1B configurations, the
/// best plan under J with adjacent-stage coupling. Smallest simulated time wins; ties go to the smaller objective, then
/// to the earlier candidate (the J-best plan first). Exact mode (<see cref="PlanningOptions.SearchBeamWidth"/> = 0 and an
/// exhaustive search, <see cref="PartitionPlan.SearchWasExhaustive"/>) returns the J-optimal plan itself.
/// Pure: no I/O, no clock, no global state; the same inputs give the same plan, byte for byte.
/// </summary>
public static class Planner
{
    /// <summary>How many of the coarse search's best configurations the refinement pass searches again on finer blocks.</summary>
    private const int RefinedConfigurations = 3;

    /// <summary>How much wider the refinement pass's beam is than <see cref="PlanningOptions.SearchBeamWidth"/>.</summary>
    private const int RefinementBeamFactor = 2;

    /// <summary>Relative slack on the cycle-balanced candidate's J as the search's bound, so that an equal J is still found.</summary>
    private const double TieTolerance = 1e-9;

    /// <summary>Plans how to run <paramref name="graph"/> on <paramref name="cluster"/>.</summary>
    /// <exception cref="NoFeasiblePlanException">No plan fits in device memory; the message says how much memory the
    /// best plan would need.</exception>
    public static PartitionPlan Plan(Graph graph, CostTable costs, Cluster cluster, PlanningOptions options)
    {
        IReadOnlyList<PartitionPlan> candidates = Candidates(graph, costs, cluster, options);
        PartitionPlan plan = candidates[0];
        foreach (PartitionPlan candidate in candidates.Skip(1))
        {
            if (IsBetter(candidate, plan))
            {
                plan = candidate;
            }
        }

        if (options.SearchBeamWidth == 0 && plan.SearchWasExhaustive)
        {
            return plan; // exact mode: the J-optimal plan itself
        }

        // Local changes judged by the simulator, within a fixed budget of simulated work (see SimulatedRefinement).
        string fingerprint = plan.Fingerprint;
        return SimulatedRefinement.Refine(graph, costs, cluster, options, plan,
            shape => BuildPlan(graph, costs, cluster, options, fingerprint, shape, exhaustive: false));
    }

    /// <summary>Smaller simulated step time; on a tie, smaller objective.</summary>
    private static bool IsBetter(PartitionPlan candidate, PartitionPlan incumbent) =>
        candidate.PredictedStepSeconds < incumbent.PredictedStepSeconds
        || (candidate.PredictedStepSeconds == incumbent.PredictedStepSeconds && candidate.ObjectiveSeconds < incumbent.ObjectiveSeconds);

    /// <summary>The plans <see cref="Plan"/> chooses from, the J-best first (the only one when the search was
    /// exhaustive or fell back to the memory-optimal plan); see <see cref="Plan"/>.</summary>
    internal static IReadOnlyList<PartitionPlan> Candidates(Graph graph, CostTable costs, Cluster cluster, PlanningOptions options)
    {
        IReadOnlyList<PartitionPlan> candidates = SearchAndBaselineCandidates(graph, costs, cluster, options);
        if (!options.Schedules.Contains(PipelineScheduleKind.ZeroBubble) || options.Schedules.All(s => s == PipelineScheduleKind.ZeroBubble))
        {
            return candidates;
        }

        // The zero-bubble schedule keeps 1F1B's memory (at most GPipe's) and 1F1B's objective, so the search finds no
        // shapes of its own for it (StageSearch.SearchedSchedules): each pipelined candidate without recomputation is
        // also simulated with it, once per distinct shape.
        var withZeroBubble = candidates.ToList();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (PartitionPlan plan in candidates.Where(p => p.Stages.Count > 1 && p.Schedule != PipelineScheduleKind.ZeroBubble
            && !p.Stages.Any(s => s.Recompute)))
        {
            var shape = new PlanShape(
                plan.Stages.Select(s => s.NodeIds).ToList(),
                plan.Stages.Select(s => s.ReplicaRanks.Count).ToList(),
                plan.Stages.Select(s => s.Recompute).ToList(),
                plan.MicroBatchCount,
                PipelineScheduleKind.ZeroBubble);
            string key = string.Join("|", shape.Stages.Select(st => string.Join(",", st))) + ";"
                + string.Join(",", shape.Replicas) + ";" + shape.MicroBatchCount;
            if (seen.Add(key))
            {
                withZeroBubble.Add(BuildPlan(graph, costs, cluster, options, plan.Fingerprint, shape, exhaustive: false));
            }
        }

        return withZeroBubble;
    }

    private static IReadOnlyList<PartitionPlan> SearchAndBaselineCandidates(Graph graph, CostTable costs, Cluster cluster, PlanningOptions options)
    {
        GraphChecks.EnsureValid(graph);
        costs.EnsureMatches(graph);
        cluster.EnsureValid();
        options.EnsureValid();
        string fingerprint = PlanCacheKey.Compute(graph, costs, cluster, options);
        // Never slower than a naive split, by construction: the baselines are candidates of the simulated choice. They
        // are cheap, so they come first and their best objective bounds the search (which then only looks for better
        // plans), except in exact mode (beam 0), which returns the J-optimal plan itself.
        bool exactMode = options.SearchBeamWidth == 0;
        List<PartitionPlan> baselines = BaselineCandidates(graph, costs, cluster, options, fingerprint);
        double bound = exactMode || baselines.Count == 0 ? double.PositiveInfinity : baselines.Min(p => p.ObjectiveSeconds);
        if (!exactMode && CycleBalancedSplit.BestShape(graph, costs, cluster, options) is { } balancedShape)
        {
            // Stages balanced by cycle on the atomic units, finer than the search's blocks (see CycleBalancedSplit). Its J
            // bounds the search too, loosened by a hair so that on a tie the search's plan (which may be exhaustive) is
            // still found and comes first. Not when the zero-bubble schedule is allowed: its candidates are the search's
            // shapes re-simulated with it, and a search plan with a larger J may be the faster one under that schedule.
            PartitionPlan balanced = BuildPlan(graph, costs, cluster, options, fingerprint, balancedShape, exhaustive: false);
            baselines.Add(balanced);
            if (!options.Schedules.Contains(PipelineScheduleKind.ZeroBubble))
            {
                bound = Math.Min(bound, balanced.ObjectiveSeconds * (1 + TieTolerance));
            }
        }

        List<PartitionPlan> candidates;
        try
        {
            candidates = SearchCandidates(graph, costs, cluster, options, fingerprint, bound,
                baselines.Select(p => (p.MicroBatchCount, p.Schedule)).Distinct().ToList(), out bool exact);
            if (exact && exactMode)
            {
                return candidates; // exact mode: the J-optimal plan, exactly (what the brute-force oracle checks)
            }

            if (candidates.Count == 0)
            {
                // Nothing beat the baselines' J: the J-best of them comes first, as the search's plan would.
                return baselines.OrderBy(p => p.ObjectiveSeconds).ToList();
            }
        }
        catch (NoFeasiblePlanException)
        {
            // The search found nothing that fits; a baseline that fits must still be returned.
            if (baselines.Count == 0)
            {
                throw;
            }

            return baselines;
        }

        candidates.AddRange(baselines);
        return candidates;
    }

    /// <summary>The plan of a given <paramref name="shape"/> (ranks placed as the planner does, peaks from the memory model,
    /// simulated step time), e.g. a baseline's (<see cref="Baselines.BestShape"/>). It is not checked; call
    /// <see cref="PartitionPlan.FindViolations"/> for that.</summary>
    public static PartitionPlan PlanFromShape(Graph graph, CostTable costs, Cluster cluster, PlanningOptions options, PlanShape shape) =>
        BuildPlan(graph, costs, cluster, options, PlanCacheKey.Compute(graph, costs, cluster, options),
            shape with { Stages = shape.Stages.Select(s => (IReadOnlyList<int>)s.Order().ToList()).ToList() }, exhaustive: false);

    private static List<PartitionPlan> BaselineCandidates(
        Graph graph, CostTable costs, Cluster cluster, PlanningOptions options, string fingerprint)
    {
        var plans = new List<PartitionPlan>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (BaselineSplit split in Enum.GetValues<BaselineSplit>())
        {
            // Uniform and parameter-balanced splits often coincide (uniform layers): simulate each distinct shape once.
            if (Baselines.BestShape(graph, costs, cluster, options, split) is { } shape
                && seen.Add(string.Join("|", shape.Stages.Select(st => st.Count > 0 ? $"{st[0]}-{st[^1]}" : "")) + ";"
                    + string.Join(",", shape.Replicas) + ";" + string.Join(",", shape.Recompute) + ";" + shape.MicroBatchCount + ";" + shape.Schedule))
            {
                plans.Add(BuildPlan(graph, costs, cluster, options, fingerprint, shape, exhaustive: false));
            }
        }

        return plans;
    }

    /// <summary>The search's candidates with an objective below <paramref name="bound"/> (the best baseline's; empty when
    /// none beats it). <paramref name="baselineConfigurations"/>: the (micro-batch count, schedule) of the baselines, which
    /// the finer blocks search when nothing on the coarse blocks beat them.</summary>
    private static List<PartitionPlan> SearchCandidates(
        Graph graph, CostTable costs, Cluster cluster, PlanningOptions options, string fingerprint, double bound,
        IReadOnlyList<(int MicroBatches, PipelineScheduleKind Schedule)> baselineConfigurations, out bool exact)
    {
        exact = false;
        bool bounded = !double.IsPositiveInfinity(bound);

        // Search coarse blocks first (fast), then finer blocks with the coarse optimum as the bound to beat, so the
        // stage boundaries are not limited to the coarse grid. Without coarsening both levels are the atomic units.
        IReadOnlyList<IReadOnlyList<int>> units = GraphBlocks.AtomicUnits(graph);
        IReadOnlyList<IReadOnlyList<int>> coarse = GraphBlocks.Coarsen(graph, costs, units, options.MaxBlocks);
        IReadOnlyList<IReadOnlyList<int>> fine = GraphBlocks.Coarsen(graph, costs, units, Math.Max(options.MaxBlocks, options.RefinementBlocks));
        var coarseSearch = new StageSearch(RangeTable.Build(graph, costs, coarse), cluster, options);
        SearchOutcome? best = coarseSearch.FindBest(bound);
        double bestObjective = best?.Value ?? double.PositiveInfinity; // a memory-optimal fallback has no objective yet
        IReadOnlyList<IReadOnlyList<int>> bestBlocks = coarse;
        bool truncated = coarseSearch.Truncated || coarse.Count < units.Count;
        var fineSearch = coarseSearch;
        List<(int MicroBatches, PipelineScheduleKind Schedule)> refinedConfigurations = coarseSearch.Improvements.TakeLast(RefinedConfigurations)
            .Select(o => (o.MicroBatchCount, o.Schedule)).Reverse().ToList();
        if (fine.Count > coarse.Count)
        {
            // Refine the configurations (micro-batches, schedule) of the last few improvements of the coarse search.
            // The refinement pass sees few configurations, so it can afford a wider beam.
            PlanningOptions fineOptions = options with { SearchBeamWidth = options.SearchBeamWidth * RefinementBeamFactor };
            fineSearch = new StageSearch(RangeTable.Build(graph, costs, fine), cluster, fineOptions);
            if (best is null && bounded)
            {
                // Nothing on the coarse blocks beat the baselines (or fitted): the finer blocks may, in the baselines'
                // configurations (searching every configuration on them cost seconds at the 100B scale and found nothing
                // there); a baseline fits anyway.
                foreach ((int microBatches, PipelineScheduleKind schedule) in baselineConfigurations)
                {
                    if (fineSearch.FindBest(microBatches, schedule, best?.Value ?? bound) is { } found)
                    {
                        best = found;
                    }
                }

                if (best is null)
                {
                    return [];
                }

                bestObjective = best.Value;
                bestBlocks = fine;
            }
            else if (best is null)
            {
                // Nothing fitted on the coarse blocks. The finer ones may fit: check that cheaply first, then search them fully.
                SearchOutcome? smallest = fineSearch.FindSmallestPeak();
                if (smallest is null || smallest.Value > CostModel.UsableBytes(cluster, options))
                {
                    throw Infeasible(smallest, fine.Count, units.Count, cluster, options);
                }

                // The beam may lose every completion that fits; the memory-optimal plan found above always does.
                best = fineSearch.FindBest() ?? smallest;
                bestObjective = best == smallest ? double.PositiveInfinity : best.Value;
                bestBlocks = fine;
            }

            foreach ((int microBatches, PipelineScheduleKind schedule) in refinedConfigurations)
            {
                SearchOutcome? refined = fineSearch.FindBest(microBatches, schedule, bestObjective);
                if (refined is not null)
                {
                    best = refined;
                    bestObjective = refined.Value;
                    bestBlocks = fine;
                }
            }

            truncated = true; // the fine blocks saw only some configurations
        }

        if (best is null && bounded)
        {
            return []; // nothing beats the baselines
        }

        if (best is null)
        {
            SearchOutcome? smallest = fineSearch.FindSmallestPeak();
            if (smallest is null || smallest.Value > CostModel.UsableBytes(cluster, options))
            {
                throw Infeasible(smallest, fine.Count, units.Count, cluster, options);
            }

            best = smallest; // the beam lost every completion that fits; the memory-optimal plan fits
            bestBlocks = fine;
            truncated = true;
        }

        PartitionPlan plan = BuildPlan(graph, costs, cluster, options, fingerprint, bestBlocks, best, exhaustive: !truncated);
        var candidates = new List<PartitionPlan> { plan };
        exact = !truncated;
        if (!truncated || double.IsPositiveInfinity(bestObjective))
        {
            return candidates; // exhaustive: the J-optimal plan, exactly; memory fallback: the only plan known to fit
        }

        // Heuristic mode: J has one bottleneck term, but in the 1F1B steady state adjacent stages wait for each other's
        // transfers, so a pipeline of several equally loaded stages is slower than J says. The final choice is made by
        // simulated step time between the J-best plan and, for each 1F1B configuration among the J-best plan's
        // micro-batch count and the refined ones, the best plan under J with adjacent-stage coupling
        // (StageSearch.FindBestWithAdjacentCoupling), searched below the incumbent's simulated time, only when the J-best
        // plan simulates slower than its J. Smallest simulated time wins; ties: smaller objective, then the earlier candidate.
        PartitionPlan incumbent = plan;
        // A coupled value is at least the plan's J, which the J-best search found no smaller than bestObjective, so when
        // the J-best plan's simulation does not exceed its objective no candidate can beat it: skip the extra searches.
        if (options.Schedules.Contains(PipelineScheduleKind.OneFOneB) && plan.PredictedStepSeconds > plan.ObjectiveSeconds)
        {
            IEnumerable<int> microBatchCounts = refinedConfigurations
                .Where(c => c.Schedule == PipelineScheduleKind.OneFOneB)
                .Select(c => c.MicroBatches)
                .Prepend(best.MicroBatchCount)
                .Distinct();
            foreach (int microBatches in microBatchCounts.ToList())
            {
                SearchOutcome? candidate = fineSearch.FindBestWithAdjacentCoupling(microBatches, incumbent.PredictedStepSeconds);
                if (candidate is null)
                {
                    continue;
                }

                PartitionPlan built = BuildPlan(graph, costs, cluster, options, fingerprint, fine, candidate, exhaustive: false);
                candidates.Add(built);
                if (IsBetter(built, incumbent))
                {
                    incumbent = built;
                }
            }
        }

        return candidates;
    }

    private static PartitionPlan BuildPlan(
        Graph graph, CostTable costs, Cluster cluster, PlanningOptions options,
        string fingerprint, IReadOnlyList<IReadOnlyList<int>> blocks, SearchOutcome outcome, bool exhaustive)
    {
        var stageNodes = outcome.Stages
            .Select(s => (IReadOnlyList<int>)Enumerable.Range(s.FirstBlock, s.EndBlock - s.FirstBlock)
                .SelectMany(b => blocks[b]).Order().ToList())
            .ToList();
        var shape = new PlanShape(
            stageNodes,
            outcome.Stages.Select(s => s.Replicas).ToList(),
            outcome.Stages.Select(s => s.Recompute).ToList(),
            outcome.MicroBatchCount,
            outcome.Schedule);
        return BuildPlan(graph, costs, cluster, options, fingerprint, shape, exhaustive);
    }

    private static PartitionPlan BuildPlan(
        Graph graph, CostTable costs, Cluster cluster, PlanningOptions options, string fingerprint, PlanShape shape, bool exhaustive)
    {
        var layout = new MicroBatchLayout(options.GlobalBatchSize, shape.MicroBatchCount);
        PlanEstimate estimate = PlanObjective.Evaluate(graph, costs, cluster, options, shape);
        var stages = new List<StagePlan>();
        int[] firstRanks = PlanObjective.FirstRanks(shape.Replicas, cluster.DeviceCount);
        for (int s = 0; s < shape.Stages.Count; s++)
        {
            int replicas = shape.Replicas[s];
            stages.Add(new StagePlan(
                s,
                shape.Stages[s],
                Enumerable.Range(firstRanks[s], replicas).ToList(),
                shape.Recompute[s],
                layout.LargestSlice(replicas),
                estimate.PeakBytesPerStage[s]));
        }

        var plan = new PartitionPlan(
            fingerprint,
            cluster.DeviceCount,
            options.GlobalBatchSize,
            Enumerable.Range(0, shape.MicroBatchCount).Select(layout.MicroBatchSize).ToList(),
            shape.Schedule,
            stages,
            estimate.ObjectiveSeconds,
            PredictedStepSeconds: 0,
            exhaustive);
        SimulationResult simulated = PipelineSimulator.Simulate(plan, graph, costs, cluster, options);
        return plan with { PredictedStepSeconds = simulated.StepSeconds };
    }

    private static NoFeasiblePlanException Infeasible(
        SearchOutcome? smallest, int blockCount, int unitCount, Cluster cluster, PlanningOptions options)
    {
        long device = cluster.MemoryBytesPerDevice;
        if (smallest is null)
        {
            return new NoFeasiblePlanException(
                $"No plan shape satisfies the options on {cluster.DeviceCount} devices and {blockCount} blocks "
                + $"(stages {options.MinStages}…{options.MaxStages}, micro-batches {options.MinMicroBatches}…{options.MaxMicroBatches}, "
                + $"global batch {options.GlobalBatchSize}"
                + (options.ForcedReplicasPerStage is { } f ? $", forced replicas [{string.Join(", ", f)}]" : "") + ").",
                -1, device);
        }

        long peak = (long)smallest.Value;
        long neededDevice = (long)Math.Ceiling(peak / (1 - options.MemoryMargin));
        return new NoFeasiblePlanException(
            $"No plan fits in device memory: the best plan needs {Units.Bytes(peak)} per device, that is "
            + $"{Units.Bytes(neededDevice)} of device memory with the {options.MemoryMargin:P0} margin, but each device has "
            + $"{Units.Bytes(device)} ({Units.Bytes(CostModel.UsableBytes(cluster, options))} usable). "
            + $"That plan has {smallest.Stages.Count} stage(s) with [{string.Join(", ", smallest.Stages.Select(s => s.Replicas))}] "
            + $"replicas, {smallest.MicroBatchCount} micro-batch(es), {smallest.Schedule}."
            + (blockCount < unitCount
                ? $" (Stages were made of {blockCount} blocks coarsened from {unitCount} atomic units; raise RefinementBlocks for finer stages.)"
                : ""),
            peak, device);
    }
}

/// <summary>Structural checks of a <see cref="Graph"/> before planning.</summary>
public static class GraphChecks
{
    /// <summary>Throws <see cref="ArgumentException"/> naming the first broken rule: ids equal indices, nodes in
    /// topological order, each value produced once (or a graph input), references in range.</summary>
    public static void EnsureValid(Graph graph)
    {
        if (graph.Nodes.Count == 0)
        {
            throw new ArgumentException("The graph has no nodes.");
        }

        for (int i = 0; i < graph.Values.Count; i++)
        {
            if (graph.Values[i].Id != i || graph.Values[i].BytesPerSample < 0 || graph.Values[i].FixedBytes < 0)
            {
                throw new ArgumentException($"Value at index {i} has id {graph.Values[i].Id} or negative bytes.");
            }
        }

        for (int i = 0; i < graph.Parameters.Count; i++)
        {
            if (graph.Parameters[i].Id != i || graph.Parameters[i].Bytes < 0)
            {
                throw new ArgumentException($"Parameter at index {i} has id {graph.Parameters[i].Id} or negative bytes.");
            }
        }

        bool[] available = new bool[graph.Values.Count];
        foreach (int input in graph.Inputs)
        {
            CheckValue(graph, input, "graph input");
            available[input] = true;
        }

        for (int i = 0; i < graph.Nodes.Count; i++)
        {
            GraphNode node = graph.Nodes[i];
            if (node.Id != i)
            {
                throw new ArgumentException($"Node at index {i} has id {node.Id}.");
            }

            foreach (int v in node.Inputs)
            {
                CheckValue(graph, v, $"input of node {i} ('{node.Name}')");
                if (!available[v])
                {
                    throw new ArgumentException(
                        $"Node {i} ('{node.Name}') reads value {v} ('{graph.Values[v].Name}') before it is produced: nodes must be in topological order.");
                }
            }

            foreach (int v in node.Outputs)
            {
                CheckValue(graph, v, $"output of node {i} ('{node.Name}')");
                if (available[v])
                {
                    throw new ArgumentException($"Value {v} ('{graph.Values[v].Name}') is produced twice (again by node {i}).");
                }

                available[v] = true;
            }

            if (node.MinSamplesPerSlice < 1)
            {
                throw new ArgumentException($"Node {i} ('{node.Name}') has MinSamplesPerSlice {node.MinSamplesPerSlice}; it must be at least 1.");
            }

            foreach (int p in node.Parameters)
            {
                if (p < 0 || p >= graph.Parameters.Count)
                {
                    throw new ArgumentException($"Node {i} ('{node.Name}') uses parameter {p}, outside 0…{graph.Parameters.Count - 1}.");
                }
            }
        }
    }

    private static void CheckValue(Graph graph, int value, string role)
    {
        if (value < 0 || value >= graph.Values.Count)
        {
            throw new ArgumentException($"The {role} refers to value {value}, outside 0…{graph.Values.Count - 1}.");
        }
    }
}
