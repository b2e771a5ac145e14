namespace Rannc.Partitioner;

/// <summary>
/// Candidate plans whose stages are balanced by their pipeline cycle (one micro-batch's forward and backward, including
/// recomputation where the stage needs it to fit), on the atomic units rather than on the search's blocks. For each stage
/// count <c>S</c> (with <c>⌊D / S⌋</c> replicas per stage, like the baselines), micro-batch count and schedule, the
/// smallest cycle bound <c>T</c> for which the units can be cut into at most <c>S</c> stages is found by bisection; each
/// probe is a greedy cut from the last unit backwards, where a stage's position from the end fixes its in-flight
/// micro-batches (1F1B) and hence whether it must recompute. This finds what the block grid of the dynamic program cannot:
/// at the 100B scale a stage holds a few layers, so moving a boundary by half a layer matters, and stages that recompute
/// (the early ones under 1F1B) should hold fewer layers than those that do not. The J-best shape is returned; the planner
/// simulates it beside its other candidates.
/// </summary>
internal static class CycleBalancedSplit
{
    /// <summary>Units beyond this are coarsened (the range table is quadratic in the unit count).</summary>
    private const int MaxUnits = 512;

    /// <summary>Micro-batch counts up to this are all tried; above it, divisors of the batch and powers of two (as the baselines).</summary>
    private const int DenseMicroBatches = 64;

    /// <summary>Bisection steps on the cycle bound (relative precision about 2⁻²⁰).</summary>
    private const int BisectionSteps = 20;

    /// <summary>The J-best cycle-balanced shape that fits memory and respects the options; null when none does (or when the
    /// options force a shape).</summary>
    public static PlanShape? BestShape(Graph graph, CostTable costs, Cluster cluster, PlanningOptions options)
    {
        if (options.ForcedReplicasPerStage is not null)
        {
            return null;
        }

        IReadOnlyList<IReadOnlyList<int>> units = GraphBlocks.Coarsen(graph, costs, GraphBlocks.AtomicUnits(graph), MaxUnits);
        RangeTable table = RangeTable.Build(graph, costs, units);
        var cutter = new Cutter(table, cluster, options);
        StageProfile whole = table.Get(0, units.Count);

        // Every (micro-batch count, schedule, stage count) with a lower bound on its J: all units' plain cycles spread
        // evenly over the stages. They are tried in the order of that bound until it reaches the best J found.
        var configurations = new List<(double Bound, int MicroBatches, int Order, PipelineScheduleKind Schedule, int Stages)>();
        IReadOnlyList<PipelineScheduleKind> schedules = StageSearch.SearchedSchedules(options);
        int devices = cluster.DeviceCount;
        foreach (int microBatches in MicroBatchCounts(options))
        {
            var layout = new MicroBatchLayout(options.GlobalBatchSize, microBatches);
            for (int stages = Math.Max(1, options.MinStages); stages <= Math.Min(Math.Min(devices, units.Count), options.MaxStages); stages++)
            {
                int replicas = devices / stages;
                if (replicas > layout.SmallestMicroBatch)
                {
                    continue; // some replica would get no sample
                }

                int slice = layout.LargestSlice(replicas);
                double totalCycle = whole.ForwardSeconds(slice) + whole.BackwardSeconds(slice, recompute: false);
                double bound = totalCycle + (microBatches - 1) * totalCycle / stages;
                for (int order = 0; order < schedules.Count; order++)
                {
                    configurations.Add((bound, microBatches, order, schedules[order], stages));
                }
            }
        }

        double best = double.PositiveInfinity;
        PlanShape? bestShape = null;
        foreach ((double bound, int microBatches, _, PipelineScheduleKind schedule, int stages) in configurations
            .OrderBy(c => c.Bound).ThenBy(c => c.MicroBatches).ThenBy(c => c.Stages).ThenBy(c => c.Order))
        {
            if (bound >= best)
            {
                break;
            }

            int replicas = devices / stages;
            List<Cut>? cuts = cutter.Balance(stages, replicas, new MicroBatchLayout(options.GlobalBatchSize, microBatches), schedule);
            if (cuts is null || cuts.Count < options.MinStages)
            {
                continue;
            }

            var shape = new PlanShape(
                cuts.Select(c => (IReadOnlyList<int>)Enumerable.Range(c.First, c.End - c.First).SelectMany(u => units[u]).Order().ToList()).ToList(),
                Enumerable.Repeat(replicas, cuts.Count).ToList(),
                cuts.Select(c => c.Recompute).ToList(),
                microBatches,
                schedule);
            double objective = PlanObjective.Evaluate(graph, costs, cluster, options, shape).ObjectiveSeconds;
            if (objective < best)
            {
                best = objective;
                bestShape = shape;
            }
        }

        return bestShape;
    }

    private static IEnumerable<int> MicroBatchCounts(PlanningOptions options)
    {
        for (int m = options.MinMicroBatches; m <= Math.Min(options.MaxMicroBatches, options.GlobalBatchSize); m++)
        {
            if (m <= DenseMicroBatches || StageSearch.IsEvenCount(m, options.GlobalBatchSize))
            {
                yield return m;
            }
        }
    }

    /// <summary>One stage of a cut: units <c>[First, End)</c>, recomputing or not.</summary>
    private readonly record struct Cut(int First, int End, bool Recompute);

    private sealed class Cutter(RangeTable table, Cluster cluster, PlanningOptions options)
    {
        private readonly long _usable = CostModel.UsableBytes(cluster, options);

        /// <summary>The cut into at most <paramref name="stages"/> stages with the smallest largest cycle (to the bisection's
        /// precision), stages in pipeline order; null when no cut into that many stages fits memory.</summary>
        public List<Cut>? Balance(int stages, int replicas, MicroBatchLayout layout, PipelineScheduleKind schedule)
        {
            int slice = layout.LargestSlice(replicas);
            int units = table.BlockCount;
            StageProfile whole = table.Get(0, units);
            double low = 0;
            double high = whole.ForwardSeconds(slice) * 2 + whole.BackwardSeconds(slice, recompute: false); // every unit recomputing in one stage
            List<Cut>? best = Greedy(high, stages, replicas, slice, layout, schedule);
            if (best is null)
            {
                return null; // even unbounded cycles do not fit: some stage cannot hold its units
            }

            for (int step = 0; step < BisectionSteps; step++)
            {
                double middle = (low + high) / 2;
                List<Cut>? cuts = Greedy(middle, stages, replicas, slice, layout, schedule);
                if (cuts is null)
                {
                    low = middle;
                }
                else
                {
                    high = middle;
                    best = cuts;
                }
            }

            return best;
        }

        /// <summary>Cuts from the last unit backwards, each stage as long as its cycle stays within <paramref name="bound"/>
        /// and it fits; null when more than <paramref name="stages"/> stages are needed.</summary>
        private List<Cut>? Greedy(double bound, int stages, int replicas, int slice, MicroBatchLayout layout, PipelineScheduleKind schedule)
        {
            var cuts = new List<Cut>();
            int end = table.BlockCount;
            while (end > 0)
            {
                if (cuts.Count == stages)
                {
                    return null;
                }

                // Stages are counted from the end: 1F1B's in-flight micro-batches depend only on that position.
                int inFlight = CostModel.InFlightMicroBatches(schedule, layout.MicroBatchCount, cuts.Count + 1);
                Cut? longest = null;
                for (int first = end - 1; first >= 0; first--)
                {
                    Cut? cut = Fit(first, end, inFlight, bound, replicas, slice, layout, schedule);
                    if (cut is null)
                    {
                        break;
                    }

                    longest = cut;
                }

                if (longest is not { } stage)
                {
                    return null;
                }

                cuts.Add(stage);
                end = stage.First;
            }

            cuts.Reverse();
            return cuts;
        }

        /// <summary>The stage of units <c>[first, end)</c> when its cycle is within the bound and it fits (recomputing only
        /// when it must), else null.</summary>
        private Cut? Fit(int first, int end, int inFlight, double bound, int replicas, int slice, MicroBatchLayout layout, PipelineScheduleKind schedule)
        {
            StageProfile profile = table.Get(first, end);
            if (layout.SmallestMicroBatch / replicas < Math.Max(profile.MinSamplesPerSlice, options.MinSamplesPerSlice))
            {
                return null;
            }

            bool recompute = false;
            if (CostModel.PeakBytes(profile, slice, inFlight, recompute: false, options.OptimizerStateFactor) > _usable)
            {
                if (!options.AllowRecompute || schedule == PipelineScheduleKind.ZeroBubble
                    || CostModel.PeakBytes(profile, slice, inFlight, recompute: true, options.OptimizerStateFactor) > _usable)
                {
                    return null;
                }

                recompute = true;
            }

            double cycle = profile.ForwardSeconds(slice) + profile.BackwardSeconds(slice, recompute);
            return cycle <= bound ? new Cut(first, end, recompute) : null;
        }
    }
}
