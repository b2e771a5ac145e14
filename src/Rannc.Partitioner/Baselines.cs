namespace Rannc.Partitioner;

/// <summary>The naive plans the planner must never lose to (see <see cref="Baselines"/>).</summary>
public enum BaselineSplit
{
    /// <summary>DeepSpeed's <c>partition_method="uniform"</c>: <c>S</c> parts with equal numbers of atomic units.</summary>
    Uniform,

    /// <summary>DeepSpeed's <c>partition_method="parameters"</c>: <c>S</c> parts minimising the largest part's parameter bytes.</summary>
    Parameters,

    /// <summary>Pure data parallelism: one stage, the whole model on every replica.</summary>
    DataParallel,
}

/// <summary>
/// DeepSpeed-style baselines. Uniform and parameter-balanced: the atomic units are split into <c>S</c> contiguous parts
/// and every stage gets <c>⌊D / S⌋</c> replicas (for every <c>S</c> up to the number of units, which includes DeepSpeed's
/// divisors of the device count <c>D</c>; the remaining devices stay idle);
/// data parallel: one stage on <c>r</c> replicas (<c>r</c> a divisor of the batch, a power of two or <c>D</c>). Each is
/// given its best stage count, micro-batch count (every count up to 64, then divisors of the batch and powers of two) and schedule under the objective J;
/// stages recompute only where they would not fit otherwise. The planner adds these plans to the candidates it compares
/// by simulated step time, so it never returns a plan that simulates slower than any of them.
/// </summary>
public static class Baselines
{
    /// <summary>Micro-batch counts up to this are all tried; above it, divisors of the batch and powers of two.</summary>
    private const int DenseMicroBatches = 64;

    /// <summary>The J-best shape of <paramref name="split"/> that fits memory and respects the options; null when none does
    /// (or when the options force a shape).</summary>
    public static PlanShape? BestShape(Graph graph, CostTable costs, Cluster cluster, PlanningOptions options, BaselineSplit split)
    {
        if (options.ForcedReplicasPerStage is not null)
        {
            return null; // a forced shape is the only allowed one
        }

        IReadOnlyList<IReadOnlyList<int>> units = GraphBlocks.AtomicUnits(graph);
        int devices = cluster.DeviceCount;
        double best = double.PositiveInfinity;
        PlanShape? bestShape = null;
        foreach ((List<IReadOnlyList<int>> parts, int replicas) in Layouts(graph, units, devices, options, split))
        {
            RangeTable table = RangeTable.BuildStages(graph, costs, parts);
            for (int m = options.MinMicroBatches; m <= Math.Min(options.MaxMicroBatches, options.GlobalBatchSize); m++)
            {
                if (replicas > options.GlobalBatchSize / m)
                {
                    break;
                }

                if (m > DenseMicroBatches && !StageSearch.IsEvenCount(m, options.GlobalBatchSize))
                {
                    continue; // beyond 64, the even counts a person would pick (keeps large batches cheap)
                }

                if (PlainCycleBound(table, parts.Count, replicas, m, options) >= best)
                {
                    continue; // J cannot beat the best so far (an equal J never replaces it), whatever recomputes
                }

                // J depends on the stages that recompute, not on the schedule (which sets memory only): a schedule that
                // recomputes the same stages as an earlier one has the same J, so it cannot beat it (ties keep the earlier).
                var evaluated = new List<bool[]>();
                foreach (PipelineScheduleKind schedule in StageSearch.SearchedSchedules(options))
                {
                    bool[]? recompute = Recomputation(table, parts.Count, replicas, m, schedule, cluster, options);
                    if (recompute is null || evaluated.Any(r => r.AsSpan().SequenceEqual(recompute)))
                    {
                        continue;
                    }

                    evaluated.Add(recompute);
                    var shape = new PlanShape(parts, Enumerable.Repeat(replicas, parts.Count).ToList(), recompute, m, schedule);
                    double objective = PlanObjective.Evaluate(table, cluster, options, shape).ObjectiveSeconds;
                    if (objective < best)
                    {
                        best = objective;
                        bestShape = shape;
                    }
                }
            }
        }

        return bestShape;
    }

    /// <summary>A lower bound on J of these stages at <paramref name="microBatches"/>: the stages' cycles without
    /// recomputation, transfers or all-reduce, <c>Σ c + (M − 1) · max c</c>.</summary>
    private static double PlainCycleBound(RangeTable table, int stageCount, int replicas, int microBatches, PlanningOptions options)
    {
        int slice = new MicroBatchLayout(options.GlobalBatchSize, microBatches).LargestSlice(replicas);
        double sum = 0, largest = 0;
        for (int s = 0; s < stageCount; s++)
        {
            StageProfile profile = table.Get(s, s + 1);
            double cycle = profile.ForwardSeconds(slice) + profile.BackwardSeconds(slice, recompute: false);
            sum += cycle;
            largest = Math.Max(largest, cycle);
        }

        return sum + (microBatches - 1) * largest;
    }

    private static IEnumerable<(List<IReadOnlyList<int>> Parts, int Replicas)> Layouts(
        Graph graph, IReadOnlyList<IReadOnlyList<int>> units, int devices, PlanningOptions options, BaselineSplit split)
    {
        if (split == BaselineSplit.DataParallel)
        {
            if (options.MinStages > 1)
            {
                yield break;
            }

            List<IReadOnlyList<int>> whole = [units.SelectMany(u => u).Order().ToList()];
            foreach (int r in Enumerable.Range(1, devices).Where(r => options.GlobalBatchSize % r == 0 || (r & (r - 1)) == 0 || r == devices))
            {
                yield return (whole, r);
            }

            yield break;
        }

        for (int stages = Math.Max(1, options.MinStages); stages <= Math.Min(Math.Min(devices, units.Count), options.MaxStages); stages++)
        {
            // Any stage count (up to one per atomic unit, so the stage count can follow memory); ⌊D / S⌋ replicas each,
            // the remainder idle (DeepSpeed's divisors of D are among these).
            yield return (split == BaselineSplit.Uniform ? UniformParts(units, stages) : ParameterParts(graph, units, stages), devices / stages);
        }
    }

    /// <summary>Which stages recompute: only those that would not fit otherwise; null when one still does not fit or a
    /// slice breaks a floor.</summary>
    private static bool[]? Recomputation(
        RangeTable table, int stageCount, int replicas, int microBatches, PipelineScheduleKind schedule, Cluster cluster, PlanningOptions options)
    {
        var layout = new MicroBatchLayout(options.GlobalBatchSize, microBatches);
        int slice = layout.LargestSlice(replicas);
        long usable = CostModel.UsableBytes(cluster, options);
        var recompute = new bool[stageCount];
        for (int s = 0; s < stageCount; s++)
        {
            StageProfile profile = table.Get(s, s + 1);
            if (layout.SmallestMicroBatch / replicas < Math.Max(profile.MinSamplesPerSlice, options.MinSamplesPerSlice))
            {
                return null;
            }

            int inFlight = CostModel.InFlightMicroBatches(schedule, microBatches, stageCount - s);
            if (CostModel.PeakBytes(profile, slice, inFlight, recompute: false, options.OptimizerStateFactor) > usable)
            {
                if (!options.AllowRecompute || schedule == PipelineScheduleKind.ZeroBubble
                    || CostModel.PeakBytes(profile, slice, inFlight, recompute: true, options.OptimizerStateFactor) > usable)
                {
                    return null;
                }

                recompute[s] = true;
            }
        }

        return recompute;
    }

    private static List<IReadOnlyList<int>> UniformParts(IReadOnlyList<IReadOnlyList<int>> units, int stages)
    {
        var parts = new List<IReadOnlyList<int>>();
        int start = 0;
        for (int s = 0; s < stages; s++)
        {
            int size = units.Count / stages + (s < units.Count % stages ? 1 : 0);
            parts.Add(units.Skip(start).Take(size).SelectMany(u => u).Order().ToList());
            start += size;
        }

        return parts;
    }

    /// <summary>Contiguous parts minimising the largest part's parameter bytes: binary search on the bound with a greedy
    /// check (linear per probe), then the greedy cut at the smallest feasible bound, split further where it gives fewer parts.</summary>
    private static List<IReadOnlyList<int>> ParameterParts(Graph graph, IReadOnlyList<IReadOnlyList<int>> units, int stages)
    {
        int n = units.Count;
        long[] weight = units.Select(u => u.SelectMany(node => graph.Nodes[node].Parameters).Distinct().Sum(p => graph.Parameters[p].Bytes)).ToArray();
        long low = weight.Max(), high = weight.Sum();
        while (low < high)
        {
            long mid = low + (high - low) / 2;
            if (GreedyParts(weight, mid) <= stages)
            {
                high = mid;
            }
            else
            {
                low = mid + 1;
            }
        }

        // Greedy cuts at the optimal bound, then split the last multi-unit parts until there are exactly `stages` parts
        // (splitting never raises the largest part).
        var ends = new List<int>();
        long running = 0;
        for (int i = 0; i < n; i++)
        {
            if (running + weight[i] > low && i > 0)
            {
                ends.Add(i);
                running = 0;
            }

            running += weight[i];
        }

        ends.Add(n);
        var bounds = new List<int> { 0 };
        bounds.AddRange(ends);
        for (int k = bounds.Count - 1; k > 0 && bounds.Count - 1 < stages; k--)
        {
            while (bounds[k] - bounds[k - 1] > 1 && bounds.Count - 1 < stages)
            {
                bounds.Insert(k, bounds[k] - 1);
            }
        }

        var parts = new List<IReadOnlyList<int>>();
        for (int k = 1; k < bounds.Count; k++)
        {
            parts.Add(units.Skip(bounds[k - 1]).Take(bounds[k] - bounds[k - 1]).SelectMany(u => u).Order().ToList());
        }

        return parts;
    }

    private static int GreedyParts(long[] weight, long bound)
    {
        int parts = 1;
        long running = 0;
        foreach (long w in weight)
        {
            if (running + w > bound)
            {
                parts++;
                running = 0;
            }

            running += w;
        }

        return parts;
    }
}
