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
        public int Stages;
        public int FirstReplicas;
        public double FirstCycle;
        public long InboundActivationBytes;
        public long InboundGradientBytes;
        public double Score;
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

    /// <summary>Micro-batch counts worth trying: for each distinct largest micro-batch size, the fewest micro-batches;
    /// above <see cref="PlanningOptions.DenseMicroBatchLimit"/>, only counts at least 20 % above the previous one
    /// (and the largest allowed).</summary>
    public IReadOnlyList<int> MicroBatchCandidates()
    {
        var counts = new List<int>();
        int last = Math.Min(options.MaxMicroBatches, options.GlobalBatchSize);
        for (int m = options.MinMicroBatches; m <= last; m++)
        {
            bool distinct = m == options.MinMicroBatches
                || CostModel.CeilDiv(options.GlobalBatchSize, m) < CostModel.CeilDiv(options.GlobalBatchSize, m - 1);
            bool onGrid = m <= options.DenseMicroBatchLimit || counts.Count == 0 || m * 5 >= counts[^1] * 6 || m == last
                || IsEvenCount(m, options.GlobalBatchSize);
            if (distinct && onGrid)
            {
                counts.Add(m);
            }
            else if (distinct)
            {
                Truncated = true;
            }
        }

        return counts;
    }

    /// <summary>
    /// The schedules the search (and the baselines) run for: the allowed ones, except the zero-bubble schedule when 1F1B
    /// is allowed too. Its memory and objective are 1F1B's (without recomputation), so its search would find 1F1B's
    /// shapes again; the planner simulates every pipelined candidate with it instead (<see cref="Planner"/>).
    /// </summary>
    internal static IReadOnlyList<PipelineScheduleKind> SearchedSchedules(PlanningOptions options) =>
        options.Schedules.Distinct()
            .Where(s => s != PipelineScheduleKind.ZeroBubble || !options.Schedules.Contains(PipelineScheduleKind.OneFOneB))
            .ToList();

    /// <summary>A divisor of the batch or a power of two: always on the micro-batch and replica grids.</summary>
    internal static bool IsEvenCount(int count, int globalBatch) => globalBatch % count == 0 || (count & (count - 1)) == 0;

    /// <summary>The best plan over all configurations with an objective below <paramref name="upperBound"/>, or null when
    /// none fits in memory or beats the bound. Configurations are tried
    /// in order of a lower bound on their objective, and the search stops once that bound reaches the best plan.</summary>
    public SearchOutcome? FindBest(double upperBound = double.PositiveInfinity)
    {
        var configurations = MicroBatchCandidates()
            .SelectMany(m => SearchedSchedules(options).Select((schedule, order) => (m, schedule, order)))
            .Select(c => (c.m, c.schedule, c.order, bound: ConfigurationLowerBound(c.m)))
            .OrderBy(c => c.bound).ThenBy(c => c.m).ThenBy(c => c.order)
            .ToList();
        SearchOutcome? best = null;
        foreach ((int microBatches, PipelineScheduleKind schedule, _, double bound) in configurations)
        {
            if (bound >= (best?.Value ?? upperBound))
            {
                break;
            }

            SearchOutcome? outcome = Run(microBatches, schedule, minimizeMemory: false, best?.Value ?? upperBound);
            if (outcome is not null && (best is null || outcome.Value < best.Value))
            {
                best = outcome;
                Improvements.Add(outcome);
            }
        }

        return best;
    }

    /// <summary>Every plan <see cref="FindBest"/> found that beat the previous best, in the order found (the last is the best).</summary>
    public List<SearchOutcome> Improvements { get; } = [];

    /// <summary>The best plan of one configuration with an objective below <paramref name="upperBound"/>, or null.</summary>
    public SearchOutcome? FindBest(int microBatches, PipelineScheduleKind schedule, double upperBound) =>
        Run(microBatches, schedule, minimizeMemory: false, upperBound);

    /// <summary>A lower bound on the objective of any plan with <paramref name="microBatches"/> micro-batches.</summary>
    private double ConfigurationLowerBound(int microBatches)
    {
        var layout = new MicroBatchLayout(options.GlobalBatchSize, microBatches);
        var bounds = new PrefixBounds(table, layout, Math.Min(cluster.DeviceCount, layout.SmallestMicroBatch));
        return bounds.SumBound(_blockCount, cluster.DeviceCount) + (microBatches - 1) * bounds.BottleneckBound(_blockCount, cluster.DeviceCount);
    }

    /// <summary>The smallest per-device peak any allowed plan shape needs, ignoring the device's memory; null when
    /// the options allow no plan shape at all.</summary>
    public SearchOutcome? FindSmallestPeak()
    {
        SearchOutcome? best = null;
        foreach (int microBatches in MicroBatchCandidates())
        {
            foreach (PipelineScheduleKind schedule in SearchedSchedules(options))
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

    /// <summary>Replica counts worth trying: for each distinct slice size, the fewest replicas that give it; above
    /// <paramref name="denseLimit"/>, only counts at least 20 % above the previous one.</summary>
    internal static List<int> ReplicaCandidates(int largestMicroBatch, int limit, int denseLimit)
    {
        var candidates = new List<int>();
        int r = 1;
        while (r <= limit)
        {
            if (r <= denseLimit || r * 5 >= candidates[^1] * 6)
            {
                candidates.Add(r);
            }

            int slice = CostModel.CeilDiv(largestMicroBatch, r);
            if (slice == 1)
            {
                break;
            }

            r = CostModel.CeilDiv(largestMicroBatch, slice - 1);
        }

        return candidates;
    }

    /// <summary>
    /// The best 1F1B plan of one configuration under a variant of the objective that also counts the coupling of
    /// adjacent stages: in the 1F1B steady state, stage <c>s</c>'s backward of micro-batch <c>m</c> waits for stage
    /// <c>s+1</c>'s, and stage <c>s+1</c>'s forward of <c>m+2</c> for stage <c>s</c>'s, so two cycles of the later stage
    /// last at least <c>c_s + c_{s+1} + a + g</c>; the bottleneck is then at least half of that for every boundary. Its
    /// value is that variant, not J; null when no plan fits with a value below <paramref name="upperBound"/>.
    /// </summary>
    public SearchOutcome? FindBestWithAdjacentCoupling(int microBatches, double upperBound) =>
        Run(microBatches, PipelineScheduleKind.OneFOneB, minimizeMemory: false, upperBound, adjacentCoupling: true);

    private SearchOutcome? Run(
        int microBatches, PipelineScheduleKind schedule, bool minimizeMemory, double incumbent, bool adjacentCoupling = false)
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

        // With stage-count constraints the count is part of the state; otherwise it is one more Pareto criterion
        // (fewer stages after a stage means fewer 1F1B micro-batches in flight there), or irrelevant for GPipe.
        bool countInState = forced is not null || options.MinStages > 1 || maxStages < _blockCount;
        int countStates = countInState ? maxStages + 1 : 1;
        bool countInFront = !countInState && schedule != PipelineScheduleKind.GPipe && !minimizeMemory;
        List<int> candidates = ReplicaCandidates(layout.LargestMicroBatch, replicaLimit, options.DenseReplicaLimit);
        if (candidates.Count < ReplicaCandidates(layout.LargestMicroBatch, replicaLimit, int.MaxValue).Count)
        {
            Truncated = true;
        }

        // Whatever the grid skips, divisors of the batch and powers of two are always tried (the even splits people pick).
        candidates = candidates
            .Concat(Enumerable.Range(1, replicaLimit).Where(r => IsEvenCount(r, options.GlobalBatchSize)))
            .Distinct().Order().ToList();

        var bounds = new PrefixBounds(table, layout, candidates[^1]);
        // The zero-bubble schedule does not support recomputation (its weight pass needs the input pass's graph).
        bool[] recomputeChoices = options.AllowRecompute && schedule != PipelineScheduleKind.ZeroBubble ? [false, true] : [false];

        _arena.Clear();
        var fronts = new List<int>?[(_blockCount + 1) * countStates];
        _arena.Add(new Entry { Next = -1 });
        fronts[_blockCount * countStates] = [0];
        var context = new ExtendContext(microBatches, schedule, minimizeMemory, countInFront, incumbent, bounds)
        {
            Exact = options.SearchBeamWidth == 0,
            AdjacentCoupling = adjacentCoupling && !minimizeMemory,
        };

        for (int first = _blockCount - 1; first >= 0; first--)
        {
            for (int end = first + 1; end <= _blockCount; end++)
            {
                StageProfile profile = table.Get(first, end);
                for (int countState = 0; countState < countStates; countState++)
                {
                    List<int>? suffix = fronts[end * countStates + countState];
                    if (suffix is null || suffix.Count == 0 || (countInState && countState + 1 > maxStages))
                    {
                        continue;
                    }

                    int target = first * countStates + (countInState ? countState + 1 : 0);
                    IReadOnlyList<int> replicaOptions = forced is null ? candidates : [forced[forced.Count - countState - 1]];
                    int minSlice = Math.Max(profile.MinSamplesPerSlice, options.MinSamplesPerSlice);
                    foreach (int replicas in replicaOptions)
                    {
                        if (layout.SmallestMicroBatch / replicas < minSlice)
                        {
                            continue; // some slice would be smaller than a node of the stage allows (batch norm)
                        }

                        int slice = layout.LargestSlice(replicas);
                        foreach (bool recompute in recomputeChoices)
                        {
                            var stage = new ChosenStage(first, end, replicas, recompute);
                            var memory = new StageMemory(profile, slice, recompute, options.OptimizerStateFactor);
                            var plainMemory = new StageMemory(profile, slice, recompute: false, options.OptimizerStateFactor);
                            Extend(suffix, stage, profile, slice, memory, plainMemory, context, ref fronts[target]);
                        }
                    }
                }
            }
        }

        // Complete plans start at block 0.
        int bestIndex = -1;
        double bestValue = double.PositiveInfinity;
        for (int countState = 0; countState < countStates; countState++)
        {
            foreach (int index in fronts[countState] ?? [])
            {
                Entry e = _arena[index];
                if (e.Stages < options.MinStages || e.Stages > options.MaxStages || (forced is not null && e.Stages != forced.Count))
                {
                    continue;
                }

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

        return new SearchOutcome(microBatches, schedule, bestValue, StagesFrom(bestIndex));
    }

    private List<ChosenStage> StagesFrom(int index)
    {
        var stages = new List<ChosenStage>();
        for (int i = index; _arena[i].Next >= 0; i = _arena[i].Next)
        {
            stages.Add(_arena[i].Stage);
        }

        return stages;
    }

    private sealed record ExtendContext(
        int MicroBatches, PipelineScheduleKind Schedule, bool MinimizeMemory, bool CountInFront, double Incumbent, PrefixBounds Bounds)
    {
        /// <summary>Without a beam the search is exact; with one, an entry using fewer devices also dominates (the
        /// effect of its placement on the links of the stages before it is ignored), which keeps the fronts small.</summary>
        public bool Exact { get; init; }

        /// <summary>Whether the bottleneck also counts adjacent stages' 1F1B coupling (see <see cref="FindBestWithAdjacentCoupling"/>);
        /// then an entry whose first stage has a shorter cycle is also better.</summary>
        public bool AdjacentCoupling { get; init; }
    }

    /// <summary>A stage's peak as a function of its in-flight micro-batches: <c>Base + InFlight × Stash</c>.</summary>
    private readonly struct StageMemory(StageProfile profile, int slice, bool recompute, double optimizerStateFactor)
    {
        private readonly long _base = CostModel.PeakBytes(profile, slice, 0, recompute, optimizerStateFactor);
        private readonly long _stash = CostModel.StashBytes(profile, slice, recompute);

        public long Peak(int inFlight) => _base + inFlight * _stash;
    }

    private void Extend(
        List<int> suffix, ChosenStage stage, StageProfile profile, int slice, StageMemory memory, StageMemory plainMemory,
        ExtendContext context, ref List<int>? front)
    {
        foreach (int index in suffix)
        {
            Entry e = _arena[index];
            int inFlight = CostModel.InFlightMicroBatches(context.Schedule, context.MicroBatches, e.Stages + 1);
            long peak = memory.Peak(inFlight);
            if (!context.MinimizeMemory
                && (peak > _usable || (stage.Recompute && plainMemory.Peak(inFlight) <= _usable)))
            {
                // Too big, or recomputation where the plain stage fits (it would only cost time).
                continue;
            }

            // Stages fill the ranks from the end (see PlanObjective.FirstRanks): this one ends where the suffix begins.
            int firstRank = cluster.DeviceCount - e.Devices - stage.Replicas;
            if (firstRank < 0 || (stage.FirstBlock > 0 && firstRank == 0))
            {
                continue; // too many devices, or blocks left but no device for them
            }

            StageTerms terms = StageTerms.Compute(profile, slice, stage.Replicas, stage.Recompute, firstRank, cluster);
            double sum = e.Sum + terms.Sum, bottleneck = Math.Max(e.Bottleneck, terms.Cycle);
            if (e.Next >= 0)
            {
                (double activation, double gradient) = StageTerms.Boundary(
                    cluster, firstRank, stage.Replicas, e.FirstReplicas, e.InboundActivationBytes, e.InboundGradientBytes);
                sum += activation + gradient;
                bottleneck = Math.Max(bottleneck, Math.Max(activation, gradient));
                if (context.AdjacentCoupling)
                {
                    bottleneck = Math.Max(bottleneck, (terms.Cycle + e.FirstCycle + activation + gradient) / 2);
                }
            }

            var candidate = new Entry
            {
                Devices = e.Devices + stage.Replicas,
                Stages = e.Stages + 1,
                FirstReplicas = stage.Replicas,
                FirstCycle = terms.Cycle,
                InboundActivationBytes = profile.ActivationsIn.At(slice),
                InboundGradientBytes = profile.GradientsIn.At(slice),
                Sum = sum,
                Bottleneck = bottleneck,
                Tail = Math.Max(e.Tail, terms.ExposedAllReduce),
                Peak = Math.Max(e.Peak, peak),
                Next = index,
                Stage = stage,
            };
            int remaining = firstRank;
            candidate.Score = context.MinimizeMemory
                ? candidate.Peak
                : candidate.Sum + context.Bounds.SumBound(stage.FirstBlock, remaining)
                  + (context.MicroBatches - 1) * Math.Max(candidate.Bottleneck, context.Bounds.BottleneckBound(stage.FirstBlock, remaining))
                  + candidate.Tail;
            if (candidate.Score >= context.Incumbent)
            {
                continue;
            }

            front ??= [];
            Insert(front, candidate, context);
        }
    }

    private void Insert(List<int> front, Entry candidate, ExtendContext context)
    {
        foreach (int index in front)
        {
            if (Dominates(_arena[index], candidate, context))
            {
                return;
            }
        }

        int kept = 0;
        for (int i = 0; i < front.Count; i++)
        {
            if (!Dominates(candidate, _arena[front[i]], context))
            {
                front[kept++] = front[i];
            }
        }

        front.RemoveRange(kept, front.Count - kept);
        front.Add(_arena.Count);
        _arena.Add(candidate);
        int width = options.SearchBeamWidth;
        if (width > 0 && !context.MinimizeMemory && front.Count > width)
        {
            // Beam: drop the entry with the worst lower bound (the latest one on ties).
            int worst = 0;
            for (int i = 1; i < front.Count; i++)
            {
                if (_arena[front[i]].Score >= _arena[front[worst]].Score)
                {
                    worst = i;
                }
            }

            front.RemoveAt(worst);
            Truncated = true;
        }
    }

    /// <summary>Whether any front was cut by the beam width since this search was made (then the result may not be optimal).</summary>
    public bool Truncated { get; private set; }

    /// <summary>
    /// Whether <paramref name="a"/> is at least as good as <paramref name="b"/> for every way of completing them. For the
    /// exact objective, the devices used must be equal (they fix where the stages before go, hence their links); a first
    /// stage with fewer replicas and smaller inbound transfers makes the boundary before it no slower.
    /// </summary>
    private static bool Dominates(in Entry a, in Entry b, ExtendContext context) =>
        context.MinimizeMemory
            ? a.Devices <= b.Devices && a.Peak <= b.Peak && (!context.CountInFront || a.Stages <= b.Stages)
            : (context.Exact ? a.Devices == b.Devices : a.Devices <= b.Devices) && a.Sum <= b.Sum && a.Bottleneck <= b.Bottleneck && a.Tail <= b.Tail
              && a.FirstReplicas <= b.FirstReplicas && a.InboundActivationBytes <= b.InboundActivationBytes
              && a.InboundGradientBytes <= b.InboundGradientBytes
              && (!context.CountInFront || a.Stages <= b.Stages)
              && (!context.AdjacentCoupling || a.FirstCycle <= b.FirstCycle);

    /// <summary>
    /// Lower bounds for the blocks before a state, given the devices still free. Compute: each stage's slice is at
    /// least the largest micro-batch over the most replicas. Bottleneck: a stage on <c>r</c> replicas takes at least
    /// <c>perSample · mb / r</c> per micro-batch, so the slowest of stages sharing <c>R</c> devices takes at least
    /// <c>Σ perSample · mb / R</c>.
    /// </summary>
    private sealed class PrefixBounds
    {
        private readonly double[] _fixed;
        private readonly double[] _perSample;
        private readonly int _largestMicroBatch;
        private readonly int _replicaLimit;

        public PrefixBounds(RangeTable table, MicroBatchLayout layout, int replicaLimit)
        {
            int blocks = table.BlockCount;
            _fixed = new double[blocks + 1];
            _perSample = new double[blocks + 1];
            for (int b = 0; b < blocks; b++)
            {
                StageProfile block = table.Get(b, b + 1);
                _fixed[b + 1] = _fixed[b] + block.ForwardFixedSeconds + block.BackwardFixedSeconds;
                _perSample[b + 1] = _perSample[b] + block.ForwardSecondsPerSample + block.BackwardSecondsPerSample;
            }

            _largestMicroBatch = layout.LargestMicroBatch;
            _replicaLimit = replicaLimit;
        }

        public double SumBound(int blocks, int freeDevices) =>
            blocks == 0 || freeDevices <= 0
                ? 0
                : _fixed[blocks] + _perSample[blocks] * CostModel.CeilDiv(_largestMicroBatch, Math.Min(_replicaLimit, freeDevices));

        public double BottleneckBound(int blocks, int freeDevices) =>
            blocks == 0 || freeDevices <= 0 ? 0 : _perSample[blocks] * _largestMicroBatch / freeDevices;
    }
}
