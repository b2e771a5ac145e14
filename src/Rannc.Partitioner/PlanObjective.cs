namespace Rannc.Partitioner;

/// <summary>A plan shape to evaluate: stages as node-id lists in pipeline order, with their replica counts.</summary>
/// <param name="Stages">Node ids of each stage, stages in pipeline order.</param>
/// <param name="Replicas">Replica count of each stage.</param>
/// <param name="Recompute">Whether each stage recomputes its activations in the backward pass.</param>
/// <param name="MicroBatchCount">Micro-batches per step.</param>
/// <param name="Schedule">The pipeline schedule.</param>
public sealed record PlanShape(
    IReadOnlyList<IReadOnlyList<int>> Stages,
    IReadOnlyList<int> Replicas,
    IReadOnlyList<bool> Recompute,
    int MicroBatchCount,
    PipelineScheduleKind Schedule);

/// <summary>The search objective and memory of a <see cref="PlanShape"/>.</summary>
/// <param name="ObjectiveSeconds">The step-time estimate the search minimises (see <see cref="PlanObjective"/>).</param>
/// <param name="FitsMemory">Whether every stage's peak is within the usable device memory.</param>
/// <param name="PeakBytesPerStage">Peak bytes on each device of each stage (margin not included).</param>
/// <param name="ComputeAndTransferSeconds">Sum over stages of one micro-batch's forward, backward and incoming transfers.</param>
/// <param name="BottleneckSeconds">The slowest stage cycle (forward + backward) or link.</param>
/// <param name="AllReduceTailSeconds">The largest all-reduce time not hidden behind a stage's last backward.</param>
public sealed record PlanEstimate(
    double ObjectiveSeconds,
    bool FitsMemory,
    IReadOnlyList<long> PeakBytesPerStage,
    double ComputeAndTransferSeconds,
    double BottleneckSeconds,
    double AllReduceTailSeconds);

/// <summary>
/// The objective the search minimises, in closed form:
/// <c>J = Σ_s (f_s + b_s + a_s + g_s) + (M − 1) · max_s max(f_s + b_s, a_s, g_s) + max_s max(0, AR_s − b_s)</c>,
/// where for stage <c>s</c> at its largest replica slice <c>f</c>, <c>b</c> are one micro-batch's forward and
/// backward (backward includes the recomputed forward), <c>a</c>, <c>g</c> the activation received from and the
/// gradient sent to the previous stage, and <c>AR</c> the ring all-reduce of its gradients among its replicas,
/// which overlaps the stage's last backward. Ranks are placed by <see cref="FirstRanks"/>; a transfer uses the
/// intra-node link when both stages sit on one host, an all-reduce when the stage does.
/// </summary>
public static class PlanObjective
{
    /// <summary>Evaluates <paramref name="shape"/> under the same model the search uses.</summary>
    public static PlanEstimate Evaluate(Graph graph, CostTable costs, Cluster cluster, PlanningOptions options, PlanShape shape) =>
        Evaluate(RangeTable.BuildStages(graph, costs, shape.Stages), cluster, options, shape);

    /// <summary>Evaluates <paramref name="shape"/> with its stages' profiles already built.</summary>
    internal static PlanEstimate Evaluate(RangeTable table, Cluster cluster, PlanningOptions options, PlanShape shape)
    {
        var layout = new MicroBatchLayout(options.GlobalBatchSize, shape.MicroBatchCount);
        long usable = CostModel.UsableBytes(cluster, options);
        int stageCount = shape.Stages.Count;
        double sum = 0, bottleneck = 0, tail = 0;
        bool fits = true;
        var peaks = new long[stageCount];
        int[] firstRanks = PlanObjective.FirstRanks(shape.Replicas, cluster.DeviceCount);
        for (int s = 0; s < stageCount; s++)
        {
            StageProfile profile = table.Get(s, s + 1);
            int samples = layout.LargestSlice(shape.Replicas[s]);
            int inFlight = CostModel.InFlightMicroBatches(shape.Schedule, shape.MicroBatchCount, stageCount - s);
            peaks[s] = CostModel.PeakBytes(profile, samples, inFlight, shape.Recompute[s], options.OptimizerStateFactor);
            fits &= peaks[s] <= usable;
            StageTerms terms = StageTerms.Compute(profile, samples, shape.Replicas[s], shape.Recompute[s], firstRanks[s], cluster);
            sum += terms.Sum;
            bottleneck = Math.Max(bottleneck, terms.Cycle);
            tail = Math.Max(tail, terms.ExposedAllReduce);
            if (s > 0)
            {
                (double activation, double gradient) = StageTerms.Boundary(
                    cluster, firstRanks[s - 1], shape.Replicas[s - 1], shape.Replicas[s],
                    profile.ActivationsIn.At(samples), profile.GradientsIn.At(samples));
                sum += activation + gradient;
                bottleneck = Math.Max(bottleneck, Math.Max(activation, gradient));
            }
        }

        double objective = sum + (shape.MicroBatchCount - 1) * bottleneck + tail;
        return new PlanEstimate(objective, fits, peaks, sum, bottleneck, tail);
    }

    /// <summary>
    /// Where each stage's replicas go: stages take consecutive ranks and the last stage ends at the last rank, so
    /// idle ranks (when a plan uses fewer devices than the cluster has) are the lowest ones. Stage <c>s</c> starts at
    /// <c>deviceCount − Σ_{t ≥ s} replicas_t</c>.
    /// </summary>
    public static int[] FirstRanks(IReadOnlyList<int> replicas, int deviceCount)
    {
        int[] first = new int[replicas.Count];
        int next = deviceCount;
        for (int s = replicas.Count - 1; s >= 0; s--)
        {
            next -= replicas[s];
            first[s] = next;
        }

        return first;
    }
}

/// <summary>One stage's contribution to the objective without its incoming transfers (see <see cref="PlanObjective"/>).</summary>
internal readonly record struct StageTerms(double Sum, double Cycle, double ExposedAllReduce)
{
    /// <summary>Compute and all-reduce terms of a stage whose replicas are ranks <c>[firstRank, firstRank + replicas)</c>.</summary>
    public static StageTerms Compute(StageProfile profile, int samples, int replicas, bool recompute, int firstRank, Cluster cluster)
    {
        double forward = profile.ForwardSeconds(samples);
        double backward = profile.BackwardSeconds(samples, recompute);
        bool oneNode = cluster.OnOneNode(firstRank, replicas);
        double allReduce = CostModel.RingAllReduceSeconds(
            profile.TrainableParameterBytes, replicas,
            oneNode ? cluster.IntraNodeBandwidth : cluster.InterNodeBandwidth,
            oneNode ? cluster.IntraNodeLatencySeconds : cluster.InterNodeLatencySeconds);
        return new StageTerms(forward + backward, forward + backward, Math.Max(0, allReduce - backward));
    }

    /// <summary>
    /// One micro-batch's activation (forward) and gradient (backward) transfer between a stage on ranks
    /// <c>[upstreamFirstRank, +upstreamReplicas)</c> and the next stage right after it, whose slice receives
    /// <paramref name="activationBytes"/> and sends back <paramref name="gradientBytes"/>: the intra-node link when
    /// both stages sit on one host, otherwise the inter-node link.
    /// </summary>
    public static (double Activation, double Gradient) Boundary(
        Cluster cluster, int upstreamFirstRank, int upstreamReplicas, int downstreamReplicas, long activationBytes, long gradientBytes)
    {
        bool oneNode = cluster.OnOneNode(upstreamFirstRank, upstreamReplicas + downstreamReplicas);
        double bandwidth = oneNode ? cluster.IntraNodeBandwidth : cluster.InterNodeBandwidth;
        double latency = oneNode ? cluster.IntraNodeLatencySeconds : cluster.InterNodeLatencySeconds;
        return (latency + activationBytes / bandwidth, latency + gradientBytes / bandwidth);
    }
}
