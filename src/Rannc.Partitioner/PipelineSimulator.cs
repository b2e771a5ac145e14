namespace Rannc.Partitioner;

/// <summary>What the simulation of one training step predicts.</summary>
/// <param name="StepSeconds">Time from the first action to the last rank's end.</param>
/// <param name="IdleFractionPerStage">Share of the step each stage's devices spend not computing (mean over replicas).</param>
/// <param name="PeakMemoryBytesPerRank">Peak bytes on each rank while the schedule runs (0 for idle ranks; margin not included).</param>
/// <param name="ComputeSecondsPerRank">Forward and backward time of each rank.</param>
public sealed record SimulationResult(
    double StepSeconds,
    IReadOnlyList<double> IdleFractionPerStage,
    IReadOnlyList<long> PeakMemoryBytesPerRank,
    IReadOnlyList<double> ComputeSecondsPerRank);

/// <summary>
/// An event simulation of a plan's schedule on the cluster: each rank runs its actions in order (compute,
/// asynchronous sends on per-pair channels over the real intra- or inter-node link, blocking receives,
/// all-reduce among a stage's replicas, overlapped with their last backward). Pure and deterministic.
/// </summary>
public static class PipelineSimulator
{
    /// <summary>Simulates <paramref name="plan"/> with the schedule its <see cref="PartitionPlan.Schedule"/> names.</summary>
    public static SimulationResult Simulate(PartitionPlan plan, Graph graph, CostTable costs, Cluster cluster, PlanningOptions options) =>
        Simulate(plan, ScheduleBuilder.Build(plan.Schedule, PipelineTopology.FromPlan(plan)), graph, costs, cluster, options);

    /// <summary>Simulates <paramref name="plan"/> running <paramref name="schedule"/> (which must fit the plan's topology).</summary>
    public static SimulationResult Simulate(
        PartitionPlan plan, PipelineSchedule schedule, Graph graph, CostTable costs, Cluster cluster, PlanningOptions options) =>
        Run(plan, schedule, graph, costs, cluster, options, timeline: null);

    /// <summary>
    /// The same simulation as <see cref="Simulate(PartitionPlan, Graph, CostTable, Cluster, PlanningOptions)"/>, with
    /// when each action of each rank starts and ends: the predicted timeline of one step, to set beside a measured one.
    /// </summary>
    public static SimulatedTimeline Timeline(PartitionPlan plan, Graph graph, CostTable costs, Cluster cluster, PlanningOptions options)
    {
        PipelineSchedule schedule = ScheduleBuilder.Build(plan.Schedule, PipelineTopology.FromPlan(plan));
        var actions = new List<TimedAction>();
        var syncs = new List<TimedSharedSync>();
        SimulationResult result = Run(plan, schedule, graph, costs, cluster, options, (actions, syncs));
        return new SimulatedTimeline(schedule, actions, syncs, result);
    }

    private static SimulationResult Run(PartitionPlan plan, PipelineSchedule schedule, Graph graph, CostTable costs, Cluster cluster,
        PlanningOptions options, (List<TimedAction> Actions, List<TimedSharedSync> Syncs)? timeline)
    {
        RangeTable table = RangeTable.BuildStages(graph, costs, plan.Stages.Select(s => s.NodeIds).ToList());
        var timer = new PlanTimer(plan, table, cluster);
        Action<int, PipelineAction, double, double>? record = timeline is { } recorded
            ? (rank, action, start, end) => recorded.Actions.Add(new TimedAction(rank, action, start, end, timer.TransferBytes(rank, action)))
            : null;
        ExecutionResult result = ScheduleEngine.Run(schedule, timer, record);
        if (result.Failure is not null)
        {
            throw new InvalidOperationException(result.Failure);
        }

        double[] finish = result.FinishSeconds.ToArray();
        foreach ((IReadOnlyList<int> stages, double seconds) in CostModel.SharedParameterSyncSeconds(plan, graph, cluster))
        {
            // The cross-stage sum of shared gradients starts when the last holder rank is done and ends the step for all of them.
            var ranks = stages.SelectMany(s => plan.Stages[s].ReplicaRanks).ToList();
            double end = ranks.Max(r => finish[r]) + seconds;
            foreach (int r in ranks)
            {
                timeline?.Syncs.Add(new TimedSharedSync(r, stages, finish[r], end));
                finish[r] = end;
            }
        }

        double step = finish.DefaultIfEmpty(0).Max();
        var idle = plan.Stages
            .Select(s => step <= 0 ? 0 : 1 - s.ReplicaRanks.Average(r => result.ComputeSeconds[r]) / step)
            .ToList();
        var peaks = new long[schedule.Ranks.Count];
        foreach (StagePlan stage in plan.Stages)
        {
            for (int replica = 0; replica < stage.ReplicaRanks.Count; replica++)
            {
                int rank = stage.ReplicaRanks[replica];
                peaks[rank] = PeakMemory(plan, table, stage.Index, replica, schedule.Ranks[rank], options.OptimizerStateFactor);
            }
        }

        return new SimulationResult(step, idle, peaks, result.ComputeSeconds);
    }

    /// <summary>Peak bytes of one rank: static + buffers + the stashes alive at each point of its action order.</summary>
    private static long PeakMemory(
        PartitionPlan plan, RangeTable table, int stage, int replica, IReadOnlyList<PipelineAction> actions, double optimizerStateFactor)
    {
        StagePlan stagePlan = plan.Stages[stage];
        StageProfile profile = table.Get(stage, stage + 1);
        int replicas = stagePlan.ReplicaRanks.Count;
        MicroBatchLayout layout = plan.Layout;
        long live = 0, peakLive = 0;
        foreach (PipelineAction action in actions)
        {
            int samples = action.MicroBatch >= 0 ? layout.ReplicaSlice(action.MicroBatch, replicas, replica).Count : 0;
            if (action.Kind == ActionKind.Forward)
            {
                live += CostModel.StashBytes(profile, samples, stagePlan.Recompute);
                peakLive = Math.Max(peakLive, live);
            }
            else if (action.Kind is ActionKind.Backward or ActionKind.BackwardInput)
            {
                peakLive = Math.Max(peakLive, live + CostModel.BackwardWorkingBytes(profile, samples, stagePlan.Recompute));
            }

            // A micro-batch's activations go when its gradients are complete: after the backward, or the weight pass.
            if (action.Kind is ActionKind.Backward or ActionKind.BackwardWeight)
            {
                live -= CostModel.StashBytes(profile, samples, stagePlan.Recompute);
            }
        }

        return CostModel.StaticBytes(profile, optimizerStateFactor)
            + CostModel.CommunicationBufferBytes(profile, stagePlan.LargestSlice)
            + peakLive;
    }

    private sealed class PlanTimer(PartitionPlan plan, RangeTable table, Cluster cluster) : IActionTimer
    {
        private readonly (int Stage, int Replica)?[] _roles = Roles(plan);

        // Asked for once per action (millions at scale): kept here rather than rebuilt from the plan on every call.
        private readonly MicroBatchLayout _layout = plan.Layout;
        private readonly int[] _replicas = plan.Stages.Select(s => s.ReplicaRanks.Count).ToArray();

        private SampleRange Slice(int stage, int replica, int microBatch) => _layout.ReplicaSlice(microBatch, _replicas[stage], replica);

        public double ComputeSeconds(int rank, PipelineAction action)
        {
            (int stage, int replica) = Role(rank);
            StageProfile profile = table.Get(stage, stage + 1);
            int samples = Slice(stage, replica, action.MicroBatch).Count;
            bool recompute = plan.Stages[stage].Recompute;
            return action.Kind switch
            {
                ActionKind.Forward => profile.ForwardSeconds(samples),
                ActionKind.Backward => profile.BackwardSeconds(samples, recompute),
                ActionKind.BackwardInput => profile.InputGradientSeconds(samples) + (recompute ? profile.ForwardSeconds(samples) : 0),
                ActionKind.BackwardWeight => profile.WeightGradientSeconds(samples),
                _ => throw new InvalidOperationException($"{action} does not compute."),
            };
        }

        public double TransferSeconds(int fromRank, PipelineAction send) =>
            cluster.TransferSeconds(fromRank, send.Peer, TransferBytes(fromRank, send));

        /// <summary>Bytes a send or receive of <paramref name="rank"/> moves (0 for other actions).</summary>
        public long TransferBytes(int rank, PipelineAction action)
        {
            (int fromRank, PipelineAction send) = action.Kind switch
            {
                ActionKind.SendActivation or ActionKind.SendGradient => (rank, action),
                // A receive moves what the peer's matching send moves.
                ActionKind.RecvActivation => (action.Peer, new PipelineAction(Role(action.Peer).Stage, ActionKind.SendActivation, action.MicroBatch, rank)),
                ActionKind.RecvGradient => (action.Peer, new PipelineAction(Role(action.Peer).Stage, ActionKind.SendGradient, action.MicroBatch, rank)),
                _ => (-1, action),
            };
            if (fromRank < 0)
            {
                return 0;
            }

            (int stage, int replica) = Role(fromRank);
            (int peerStage, int peerReplica) = Role(send.Peer);
            SampleRange mine = Slice(stage, replica, send.MicroBatch);
            SampleRange theirs = Slice(peerStage, peerReplica, send.MicroBatch);
            int samples = Math.Min(mine.End, theirs.End) - Math.Max(mine.Start, theirs.Start);
            ScaledBytes size = send.Kind == ActionKind.SendActivation
                ? table.Get(stage, stage + 1).ActivationsOut
                : table.Get(stage, stage + 1).GradientsIn;
            return size.At(samples);
        }

        public double AllReduceSeconds(int stage, IReadOnlyList<int> ranks)
        {
            bool oneNode = ranks.All(r => cluster.NodeOf(r) == cluster.NodeOf(ranks[0]));
            return CostModel.RingAllReduceSeconds(
                table.Get(stage, stage + 1).TrainableParameterBytes,
                ranks.Count,
                oneNode ? cluster.IntraNodeBandwidth : cluster.InterNodeBandwidth,
                oneNode ? cluster.IntraNodeLatencySeconds : cluster.InterNodeLatencySeconds);
        }

        private static (int Stage, int Replica)?[] Roles(PartitionPlan plan)
        {
            var roles = new (int Stage, int Replica)?[plan.DeviceCount];
            foreach (StagePlan stage in plan.Stages)
            {
                for (int replica = 0; replica < stage.ReplicaRanks.Count; replica++)
                {
                    roles[stage.ReplicaRanks[replica]] = (stage.Index, replica);
                }
            }

            return roles;
        }

        private (int Stage, int Replica) Role(int rank) =>
            _roles[rank] ?? throw new InvalidOperationException($"Rank {rank} has actions but no role in the plan.");
    }
}
