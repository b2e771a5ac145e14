namespace Rannc.Partitioner;

/// <summary>One stage chosen by the search: blocks <c>[FirstBlock, EndBlock)</c> on <c>Replicas</c> devices.</summary>
internal readonly record struct ChosenStage(int FirstBlock, int EndBlock, int Replicas, bool Recompute);

/// <summary>The best plan of one (micro-batch count, schedule) configuration.</summary>
internal sealed record SearchOutcome(int MicroBatchCount, PipelineScheduleKind Schedule, double Value, IReadOnlyList<ChosenStage> Stages);

/// <summary>
/// The third level: a dynamic program over contiguous block ranges, right to left. A state is (first block of
/// the suffix, stages in the suffix); its value is a Pareto front over (devices used, Σ stage terms, bottleneck,
/// all-reduce tail), which is exact for the objective because the objective grows with each of them. The
/// stage count is tracked exactly where it matters (1F1B's in-flight micro-batches, stage-count bounds, a
/// forced shape) and capped otherwise. Fronts are pruned with a lower bound against the best plan so far.
/// </summary>
internal sealed class StageSearch(RangeTable table, Cluster cluster, PlanningOptions options)
{
    private struct Entry
    {
        public int Devices;
        public double Sum;
        public double Bottleneck;
        public double Tail;
        public long Peak;
        public int Next;
        public ChosenStage Stage;
    }

    private readonly int _blockCount = table.BlockCount;
    private readonly long _usable = CostModel.UsableBytes(cluster, options);
    private readonly List<Entry> _arena = [];

    /// <summary>Micro-batch counts worth trying: for each distinct largest micro-batch size, the fewest micro-batches.</summary>
    public IReadOnlyList<int> MicroBatchCandidates()
    {
        var counts = new List<int>();
        int last = Math.Min(options.MaxMicroBatches, options.GlobalBatchSize);
        for (int m = options.MinMicroBatches; m <= last; m++)
        {
            if (m == options.MinMicroBatches
                || CostModel.CeilDiv(options.GlobalBatchSize, m) < CostModel.CeilDiv(options.GlobalBatchSize, m - 1))
            {
                counts.Add(m);
            }
        }

        return counts;
    }

    /// <summary>The best plan over all configurations, or null when none fits in memory.</summary>
    public SearchOutcome? FindBest()
    {
        SearchOutcome? best = null;
        foreach (int microBatches in MicroBatchCandidates())
        {
            foreach (PipelineScheduleKind schedule in options.Schedules.Distinct())
            {
                SearchOutcome? outcome = Run(microBatches, schedule, minimizeMemory: false, best?.Value ?? double.PositiveInfinity);
                if (outcome is not null && (best is null || outcome.Value < best.Value))
                {
                    best = outcome;
                }
            }
        }

        return best;
    }

    /// <summary>The smallest per-device peak any allowed plan shape needs, ignoring the device's memory; null when
    /// the options allow no plan shape at all.</summary>
    public SearchOutcome? FindSmallestPeak()
    {
        SearchOutcome? best = null;
        foreach (int microBatches in MicroBatchCandidates())
        {
            foreach (PipelineScheduleKind schedule in options.Schedules.Distinct())
            {
                SearchOutcome? outcome = Run(microBatches, schedule, minimizeMemory: true, best?.Value ?? double.PositiveInfinity);
                if (outcome is not null && (best is null || outcome.Value < best.Value))
                {
                    best = outcome;
                }
            }
        }

        return best;
    }

    /// <summary>Replica counts worth trying: for each distinct slice size, the fewest replicas that give it.</summary>
    internal static List<int> ReplicaCandidates(int largestMicroBatch, int limit)
    {
        var candidates = new List<int>();
        int r = 1;
        while (r <= limit)
        {
            candidates.Add(r);
            int slice = CostModel.CeilDiv(largestMicroBatch, r);
            if (slice == 1)
            {
                break;
            }

            r = CostModel.CeilDiv(largestMicroBatch, slice - 1);
        }

        return candidates;
    }

    private SearchOutcome? Run(int microBatches, PipelineScheduleKind schedule, bool minimizeMemory, double incumbent)
    {
        var layout = new MicroBatchLayout(options.GlobalBatchSize, microBatches);
        int deviceCount = cluster.DeviceCount;
        int replicaLimit = Math.Min(deviceCount, layout.SmallestMicroBatch);
        IReadOnlyList<int>? forced = options.ForcedReplicasPerStage;
        int maxStages = Math.Min(options.MaxStages, _blockCount);
        if (forced is not null)
        {
            if (forced.Count > _blockCount || forced.Count < options.MinStages || forced.Count > options.MaxStages
                || forced.Any(r => r > replicaLimit) || forced.Sum() > deviceCount)
            {
                return null;
            }

            maxStages = forced.Count;
        }

        bool countExact = forced is not null || options.MinStages > 1 || maxStages < _blockCount;
        int cap = countExact ? maxStages : 1;
        if (!countExact && schedule == PipelineScheduleKind.OneFOneB)
        {
            cap = Math.Max(cap, Math.Min(microBatches, _blockCount));
        }

        List<int> candidates = ReplicaCandidates(layout.LargestMicroBatch, replicaLimit);
        double[] prefixLowerBound = PrefixLowerBound(layout.LargestSlice(candidates[^1]));
        bool[] recomputeChoices = options.AllowRecompute ? [false, true] : [false];

        _arena.Clear();
        var fronts = new List<int>?[(_blockCount + 1) * (cap + 1)];
        _arena.Add(new Entry { Next = -1 });
        fronts[_blockCount * (cap + 1)] = [0];

        for (int first = _blockCount - 1; first >= 0; first--)
        {
            for (int end = first + 1; end <= _blockCount; end++)
            {
                StageProfile profile = table.Get(first, end);
                for (int k = 0; k <= cap; k++)
                {
                    List<int>? suffix = fronts[end * (cap + 1) + k];
                    if (suffix is null || suffix.Count == 0)
                    {
                        continue;
                    }

                    int stagesFromHere = k + 1;
                    if (countExact && stagesFromHere > cap)
                    {
                        continue;
                    }

                    int inFlight = CostModel.InFlightMicroBatches(schedule, microBatches, stagesFromHere);
                    int stored = Math.Min(stagesFromHere, cap);
                    IReadOnlyList<int> replicaOptions = forced is null ? candidates : [forced[forced.Count - stagesFromHere]];
                    foreach (int replicas in replicaOptions)
                    {
                        int slice = layout.LargestSlice(replicas);
                        bool fitsWithoutRecompute = false;
                        foreach (bool recompute in recomputeChoices)
                        {
                            long peak = CostModel.PeakBytes(profile, slice, inFlight, recompute, options.OptimizerStateFactor);
                            if (!minimizeMemory)
                            {
                                // Recomputation only costs time; it is worth trying only where the plain stage does not fit.
                                if (peak > _usable || (recompute && fitsWithoutRecompute))
                                {
                                    continue;
                                }

                                fitsWithoutRecompute |= !recompute;
                            }

                            StageTerms terms = StageTerms.Compute(profile, slice, replicas, recompute, first > 0, cluster);
                            var stage = new ChosenStage(first, end, replicas, recompute);
                            Extend(suffix, stage, peak, terms, microBatches, minimizeMemory, incumbent,
                                prefixLowerBound[first], ref fronts[first * (cap + 1) + stored]);
                        }
                    }
                }
            }
        }

        // Complete plans start at block 0.
        int bestIndex = -1;
        double bestValue = double.PositiveInfinity;
        for (int k = 1; k <= cap; k++)
        {
            if ((countExact && k < options.MinStages) || (forced is not null && k != forced.Count))
            {
                continue;
            }

            foreach (int index in fronts[k] ?? [])
            {
                Entry e = _arena[index];
                double value = minimizeMemory ? e.Peak : e.Sum + (microBatches - 1) * e.Bottleneck + e.Tail;
                if (value < bestValue && value < incumbent)
                {
                    bestValue = value;
                    bestIndex = index;
                }
            }
        }

        if (bestIndex < 0)
        {
            return null;
        }

        var stages = new List<ChosenStage>();
        for (int i = bestIndex; _arena[i].Next >= 0; i = _arena[i].Next)
        {
            stages.Add(_arena[i].Stage);
        }

        return new SearchOutcome(microBatches, schedule, bestValue, stages);
    }

    private void Extend(
        List<int> suffix, ChosenStage stage, long peak, StageTerms terms, int microBatches, bool minimizeMemory,
        double incumbent, double prefixLowerBound, ref List<int>? front)
    {
        foreach (int index in suffix)
        {
            Entry e = _arena[index];
            var candidate = new Entry
            {
                Devices = e.Devices + stage.Replicas,
                Sum = e.Sum + terms.Sum,
                Bottleneck = Math.Max(e.Bottleneck, terms.Cycle),
                Tail = Math.Max(e.Tail, terms.ExposedAllReduce),
                Peak = Math.Max(e.Peak, peak),
                Next = index,
                Stage = stage,
            };
            if (candidate.Devices > cluster.DeviceCount)
            {
                continue;
            }

            double lowerBound = minimizeMemory
                ? candidate.Peak
                : candidate.Sum + prefixLowerBound + (microBatches - 1) * candidate.Bottleneck + candidate.Tail;
            if (lowerBound >= incumbent)
            {
                continue;
            }

            front ??= [];
            Insert(front, candidate, minimizeMemory);
        }
    }

    private void Insert(List<int> front, Entry candidate, bool minimizeMemory)
    {
        foreach (int index in front)
        {
            if (Dominates(_arena[index], candidate, minimizeMemory))
            {
                return;
            }
        }

        front.RemoveAll(index => Dominates(candidate, _arena[index], minimizeMemory));
        front.Add(_arena.Count);
        _arena.Add(candidate);
    }

    private static bool Dominates(in Entry a, in Entry b, bool minimizeMemory) =>
        minimizeMemory
            ? a.Devices <= b.Devices && a.Peak <= b.Peak
            : a.Devices <= b.Devices && a.Sum <= b.Sum && a.Bottleneck <= b.Bottleneck && a.Tail <= b.Tail;

    /// <summary>For each block index, a lower bound on the compute of all blocks before it at the smallest slice.</summary>
    private double[] PrefixLowerBound(int smallestSlice)
    {
        double[] bound = new double[_blockCount + 1];
        for (int b = 0; b < _blockCount; b++)
        {
            StageProfile block = table.Get(b, b + 1);
            bound[b + 1] = bound[b] + block.ForwardSeconds(smallestSlice) + block.BackwardSeconds(smallestSlice, recompute: false);
        }

        return bound;
    }
}
