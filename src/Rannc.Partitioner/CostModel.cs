namespace Rannc.Partitioner;

/// <summary>
/// The time and memory model shared by the search, the brute-force evaluator and the simulator, so that all
/// three agree by construction. See README.md ("Memory model", "Objective").
/// </summary>
public static class CostModel
{
    /// <summary>
    /// Micro-batches whose activations a stage holds at once: GPipe keeps all <paramref name="microBatches"/>;
    /// 1F1B keeps at most the number of stages from this one to the last (<paramref name="stagesFromHere"/>), and so does
    /// the zero-bubble schedule, which holds a micro-batch until its weight-gradient pass (its builder keeps to that).
    /// </summary>
    public static int InFlightMicroBatches(PipelineScheduleKind schedule, int microBatches, int stagesFromHere) =>
        schedule == PipelineScheduleKind.GPipe ? microBatches : Math.Min(microBatches, stagesFromHere);

    /// <summary>
    /// Share of a node's backward time that its weight-gradient pass takes in the zero-bubble schedule, for nodes with
    /// trainable parameters (for a dense layer the input and the weight gradient are one matrix product each); nodes
    /// without trainable parameters have no weight pass.
    /// </summary>
    public const double WeightGradientShareOfBackward = 0.5;

    /// <summary>Bytes held by parameters, their gradients and optimizer state, and buffers.</summary>
    public static long StaticBytes(StageProfile stage, double optimizerStateFactor) =>
        (long)Math.Ceiling(stage.TrainableParameterBytes * (2 + optimizerStateFactor)) + stage.FrozenParameterBytes;

    /// <summary>Activation bytes one micro-batch of <paramref name="samples"/> keeps until its backward.</summary>
    public static long StashBytes(StageProfile stage, int samples, bool recompute) =>
        recompute ? stage.Inputs.At(samples) : stage.Inputs.At(samples) + stage.Produced.At(samples);

    /// <summary>Bytes alive while one micro-batch runs its backward beyond the stash (the recomputed activations).</summary>
    public static long BackwardWorkingBytes(StageProfile stage, int samples, bool recompute) =>
        recompute ? stage.Produced.At(samples) : 0;

    /// <summary>One receive and one send buffer for activations and for gradients on each side of the stage.</summary>
    public static long CommunicationBufferBytes(StageProfile stage, int samples) =>
        stage.ActivationsIn.At(samples) + stage.GradientsIn.At(samples)
        + stage.ActivationsOut.At(samples) + stage.GradientsOut.At(samples);

    /// <summary>
    /// Peak bytes on a device of the stage: static + in-flight stashes + the backward working set + buffers.
    /// The memory margin is not included (compare with <see cref="UsableBytes"/>).
    /// </summary>
    public static long PeakBytes(StageProfile stage, int samples, int inFlight, bool recompute, double optimizerStateFactor) =>
        StaticBytes(stage, optimizerStateFactor)
        + inFlight * StashBytes(stage, samples, recompute)
        + BackwardWorkingBytes(stage, samples, recompute)
        + CommunicationBufferBytes(stage, samples);

    /// <summary>Device memory a plan may use: <c>memory × (1 − margin)</c>.</summary>
    public static long UsableBytes(Cluster cluster, PlanningOptions options) =>
        (long)Math.Floor(cluster.MemoryBytesPerDevice * (1 - options.MemoryMargin));

    /// <summary>Ring all-reduce of <paramref name="bytes"/> among <paramref name="participants"/> ranks:
    /// <c>2(r−1)/r · bytes / bandwidth + 2(r−1) · latency</c>; zero for one participant.</summary>
    public static double RingAllReduceSeconds(long bytes, int participants, double bandwidth, double latencySeconds) =>
        participants <= 1 ? 0 : 2.0 * (participants - 1) / participants * bytes / bandwidth + 2.0 * (participants - 1) * latencySeconds;

    /// <summary>
    /// Once per step, after every holder stage's last backward and its own all-reduce, the gradients of each trainable
    /// shared parameter (<see cref="PartitionPlan.SharedParameters"/>) are summed among the stages holding it: a ring
    /// all-reduce among one copy per holder stage (replica <c>j</c> of each holder syncs with replica <c>j</c> of the
    /// others, in parallel), over the inter-node link when the holders' ranks span hosts. Parameters with the same
    /// holder stages go in one bucket. Returns, per bucket, the holder stages and the seconds it takes.
    /// </summary>
    public static IReadOnlyList<(IReadOnlyList<int> Stages, double Seconds)> SharedParameterSyncSeconds(
        PartitionPlan plan, Graph graph, Cluster cluster)
    {
        var buckets = new SortedDictionary<string, (IReadOnlyList<int> Stages, long Bytes)>(StringComparer.Ordinal);
        foreach (SharedParameter parameter in plan.SharedParameters(graph).Where(p => p.Trainable))
        {
            string key = string.Join(",", parameter.Stages);
            buckets[key] = (parameter.Stages, (buckets.TryGetValue(key, out var b) ? b.Bytes : 0) + parameter.Bytes);
        }

        var result = new List<(IReadOnlyList<int>, double)>();
        foreach ((IReadOnlyList<int> stages, long bytes) in buckets.Values)
        {
            var ranks = stages.SelectMany(s => plan.Stages[s].ReplicaRanks).ToList();
            bool oneNode = ranks.All(r => cluster.NodeOf(r) == cluster.NodeOf(ranks[0]));
            result.Add((stages, RingAllReduceSeconds(
                bytes, stages.Count,
                oneNode ? cluster.IntraNodeBandwidth : cluster.InterNodeBandwidth,
                oneNode ? cluster.IntraNodeLatencySeconds : cluster.InterNodeLatencySeconds)));
        }

        return result;
    }

    /// <summary>Ceiling of <paramref name="a"/> / <paramref name="b"/> for positive integers.</summary>
    public static int CeilDiv(int a, int b) => (a + b - 1) / b;
}
