using System.Text.Json.Serialization;

namespace Rannc.Partitioner;

/// <summary>One pipeline stage of a plan.</summary>
/// <param name="Index">Position in the pipeline (0 = first).</param>
/// <param name="NodeIds">Graph nodes the stage runs, ascending (a topological order).</param>
/// <param name="ReplicaRanks">Rank of each data-parallel replica of the stage; replica <c>j</c> owns slice <c>j</c> of every micro-batch.</param>
/// <param name="Recompute">Whether the stage keeps only its inputs and recomputes its activations in the backward pass.</param>
/// <param name="LargestSlice">Most samples a replica of the stage processes in one micro-batch.</param>
/// <param name="PeakMemoryBytes">Peak bytes on each device of the stage under the memory model (margin not included).</param>
public sealed record StagePlan(
    int Index,
    IReadOnlyList<int> NodeIds,
    IReadOnlyList<int> ReplicaRanks,
    bool Recompute,
    int LargestSlice,
    long PeakMemoryBytes);

/// <summary>A parameter (or buffer) whose users lie in several stages (e.g. a word embedding tied to the LM head).</summary>
/// <param name="ParameterId">Index in <see cref="Graph.Parameters"/>.</param>
/// <param name="Name">Its name in the model.</param>
/// <param name="Trainable">Whether it has a gradient; only then are the copies synchronised.</param>
/// <param name="Bytes">Storage bytes of one copy.</param>
/// <param name="Stages">Indices of the stages holding a copy (every stage with a node that uses it), ascending. Each
/// replica of each of these stages holds a copy; after the stages' own all-reduce, the copies' gradients are summed
/// among these stages once per step (<see cref="CostModel.SharedParameterSyncSeconds"/>) so the copies stay equal.</param>
public sealed record SharedParameter(int ParameterId, string Name, bool Trainable, long Bytes, IReadOnlyList<int> Stages);

/// <summary>
/// The output of the planner and the input of the runtime: stages, their replicas and ranks, the micro-batches,
/// the schedule, and what the plan is predicted to cost. A plain record that serializes to canonical JSON
/// (<see cref="PlanJson"/>).
/// </summary>
/// <param name="Fingerprint">The plan-cache key of the inputs it was made for (<see cref="PlanCacheKey"/>).</param>
/// <param name="DeviceCount">Devices of the cluster it was made for (ranks not listed in a stage stay idle).</param>
/// <param name="GlobalBatchSize">Samples per step.</param>
/// <param name="MicroBatchSizes">Samples in each micro-batch (see <see cref="MicroBatchLayout"/>).</param>
/// <param name="Schedule">The pipeline schedule.</param>
/// <param name="Stages">The stages in pipeline order.</param>
/// <param name="ObjectiveSeconds">The search objective (<see cref="PlanObjective"/>) of this plan.</param>
/// <param name="PredictedStepSeconds">The simulated step time (<see cref="PipelineSimulator"/>) of this plan.</param>
/// <param name="SearchWasExhaustive">True when the search kept every Pareto-optimal candidate and tried every replica
/// count, so no allowed plan has a smaller objective; false when the beam width or the replica grid cut something.</param>
public sealed record PartitionPlan(
    string Fingerprint,
    int DeviceCount,
    int GlobalBatchSize,
    IReadOnlyList<int> MicroBatchSizes,
    PipelineScheduleKind Schedule,
    IReadOnlyList<StagePlan> Stages,
    double ObjectiveSeconds,
    double PredictedStepSeconds,
    bool SearchWasExhaustive)
{
    /// <summary>Number of micro-batches per step.</summary>
    [JsonIgnore]
    public int MicroBatchCount => MicroBatchSizes.Count;

    /// <summary>The micro-batch and replica slicing rule of this plan.</summary>
    [JsonIgnore]
    public MicroBatchLayout Layout => new(GlobalBatchSize, MicroBatchSizes.Count);

    /// <summary>Ranks that take part in the plan.</summary>
    [JsonIgnore]
    public int RanksUsed => Stages.Sum(s => s.ReplicaRanks.Count);

    /// <summary>The samples replica <paramref name="replica"/> of stage <paramref name="stage"/> processes in
    /// micro-batch <paramref name="microBatch"/>.</summary>
    public SampleRange ReplicaSlice(int stage, int replica, int microBatch) =>
        Layout.ReplicaSlice(microBatch, Stages[stage].ReplicaRanks.Count, replica);

    /// <summary>The stage and replica of <paramref name="rank"/>, or null when the rank is idle in this plan.</summary>
    public (int Stage, int Replica)? RoleOf(int rank)
    {
        foreach (StagePlan stage in Stages)
        {
            int replica = IndexOf(stage.ReplicaRanks, rank);
            if (replica >= 0)
            {
                return (stage.Index, replica);
            }
        }

        return null;
    }

    /// <summary>Every parameter or buffer used by nodes of more than one stage, by parameter id, with the stages holding it
    /// (the runtime builds one gradient-sum group per trainable one). Empty when no parameter is split.</summary>
    public IReadOnlyList<SharedParameter> SharedParameters(Graph graph)
    {
        var holders = new SortedSet<int>?[graph.Parameters.Count];
        foreach (StagePlan stage in Stages)
        {
            foreach (int n in stage.NodeIds)
            {
                foreach (int p in graph.Nodes[n].Parameters)
                {
                    (holders[p] ??= []).Add(stage.Index);
                }
            }
        }

        var shared = new List<SharedParameter>();
        for (int p = 0; p < holders.Length; p++)
        {
            if (holders[p] is { Count: > 1 } stages)
            {
                GraphParameter parameter = graph.Parameters[p];
                shared.Add(new SharedParameter(p, parameter.Name, parameter.Trainable, parameter.Bytes, stages.ToList()));
            }
        }

        return shared;
    }

    /// <summary>The shape of this plan, for <see cref="PlanObjective.Evaluate"/>.</summary>
    public PlanShape ToShape() => new(
        Stages.Select(s => s.NodeIds).ToList(),
        Stages.Select(s => s.ReplicaRanks.Count).ToList(),
        Stages.Select(s => s.Recompute).ToList(),
        MicroBatchCount,
        Schedule);

    /// <summary>Every broken invariant, as readable sentences; empty when the plan is valid for these inputs.</summary>
    public IReadOnlyList<string> FindViolations(Graph graph, CostTable costs, Cluster cluster, PlanningOptions options)
    {
        var problems = new List<string>();
        if (Stages.Count == 0)
        {
            return ["The plan has no stages."];
        }

        CheckStages(graph, problems);
        CheckRanks(cluster, problems);
        CheckBatches(options, problems);
        if (problems.Count == 0)
        {
            CheckSliceFloors(graph, options, problems);
        }

        CheckOptions(options, problems);
        if (problems.Count == 0)
        {
            CheckMemory(graph, costs, cluster, options, problems);
        }

        return problems;
    }

    /// <summary>Throws <see cref="PlanValidationException"/> listing every broken invariant.</summary>
    public void Validate(Graph graph, CostTable costs, Cluster cluster, PlanningOptions options)
    {
        IReadOnlyList<string> problems = FindViolations(graph, costs, cluster, options);
        if (problems.Count > 0)
        {
            throw new PlanValidationException(problems);
        }
    }

    private void CheckStages(Graph graph, List<string> problems)
    {
        int[] stageOfNode = new int[graph.Nodes.Count];
        Array.Fill(stageOfNode, -1);
        for (int s = 0; s < Stages.Count; s++)
        {
            StagePlan stage = Stages[s];
            if (stage.Index != s)
            {
                problems.Add($"Stage at position {s} has index {stage.Index}.");
            }

            if (stage.NodeIds.Count == 0)
            {
                problems.Add($"Stage {s} has no nodes.");
            }

            for (int i = 1; i < stage.NodeIds.Count; i++)
            {
                if (stage.NodeIds[i] <= stage.NodeIds[i - 1])
                {
                    problems.Add($"Stage {s} lists its nodes out of order ({stage.NodeIds[i - 1]} before {stage.NodeIds[i]}).");
                    break;
                }
            }

            foreach (int node in stage.NodeIds)
            {
                if (node < 0 || node >= graph.Nodes.Count)
                {
                    problems.Add($"Stage {s} lists node {node}, but the graph has {graph.Nodes.Count} nodes.");
                }
                else if (stageOfNode[node] >= 0)
                {
                    problems.Add($"Node {node} ('{graph.Nodes[node].Name}') is in stages {stageOfNode[node]} and {s}.");
                }
                else
                {
                    stageOfNode[node] = s;
                }
            }
        }

        for (int n = 0; n < stageOfNode.Length; n++)
        {
            if (stageOfNode[n] < 0)
            {
                problems.Add($"Node {n} ('{graph.Nodes[n].Name}') is in no stage.");
            }
        }

        if (problems.Count > 0)
        {
            return;
        }

        int[] producerStage = new int[graph.Values.Count];
        Array.Fill(producerStage, -1);
        foreach (GraphNode node in graph.Nodes)
        {
            foreach (int v in node.Outputs)
            {
                producerStage[v] = stageOfNode[node.Id];
            }
        }

        foreach (GraphNode node in graph.Nodes)
        {
            foreach (int v in node.Inputs)
            {
                if (producerStage[v] > stageOfNode[node.Id])
                {
                    problems.Add(
                        $"Value {v} ('{graph.Values[v].Name}') flows backwards: produced in stage {producerStage[v]}, "
                        + $"read by node {node.Id} ('{node.Name}') in stage {stageOfNode[node.Id]}.");
                }
                else if (producerStage[v] >= 0 && producerStage[v] != stageOfNode[node.Id] && !graph.Values[v].CanCrossStage)
                {
                    problems.Add(
                        $"Value {v} ('{graph.Values[v].Name}') cannot cross a stage boundary but is produced in stage {producerStage[v]} "
                        + $"and read by node {node.Id} ('{node.Name}') in stage {stageOfNode[node.Id]}.");
                }
            }
        }
    }

    private void CheckRanks(Cluster cluster, List<string> problems)
    {
        if (DeviceCount != cluster.DeviceCount)
        {
            problems.Add($"The plan is for {DeviceCount} devices but the cluster has {cluster.DeviceCount}.");
        }

        var seen = new Dictionary<int, int>();
        foreach (StagePlan stage in Stages)
        {
            if (stage.ReplicaRanks.Count == 0)
            {
                problems.Add($"Stage {stage.Index} has no replicas.");
            }

            foreach (int rank in stage.ReplicaRanks)
            {
                if (rank < 0 || rank >= cluster.DeviceCount)
                {
                    problems.Add($"Stage {stage.Index} uses rank {rank}, outside 0…{cluster.DeviceCount - 1}.");
                }
                else if (!seen.TryAdd(rank, stage.Index))
                {
                    problems.Add($"Rank {rank} is used twice (stages {seen[rank]} and {stage.Index}).");
                }
            }
        }
    }

    private void CheckBatches(PlanningOptions options, List<string> problems)
    {
        if (GlobalBatchSize != options.GlobalBatchSize)
        {
            problems.Add($"The plan is for a global batch of {GlobalBatchSize}, the options say {options.GlobalBatchSize}.");
            return;
        }

        if (MicroBatchSizes.Count < 1 || MicroBatchSizes.Count > GlobalBatchSize)
        {
            problems.Add($"{MicroBatchSizes.Count} micro-batches cannot split a batch of {GlobalBatchSize}.");
            return;
        }

        MicroBatchLayout layout = Layout;
        for (int m = 0; m < MicroBatchSizes.Count; m++)
        {
            if (MicroBatchSizes[m] != layout.MicroBatchSize(m))
            {
                problems.Add($"Micro-batch {m} has {MicroBatchSizes[m]} samples; the layout rule gives {layout.MicroBatchSize(m)}.");
            }
        }

        foreach (StagePlan stage in Stages)
        {
            int replicas = stage.ReplicaRanks.Count;
            if (replicas > layout.SmallestMicroBatch)
            {
                problems.Add(
                    $"Stage {stage.Index} has {replicas} replicas but the smallest micro-batch has {layout.SmallestMicroBatch} samples.");
            }
            else if (replicas > 0 && stage.LargestSlice != layout.LargestSlice(replicas))
            {
                problems.Add($"Stage {stage.Index} records a largest slice of {stage.LargestSlice}, the layout gives {layout.LargestSlice(replicas)}.");
            }
        }
    }

    private void CheckSliceFloors(Graph graph, PlanningOptions options, List<string> problems)
    {
        MicroBatchLayout layout = Layout;
        foreach (StagePlan stage in Stages)
        {
            int smallest = layout.SmallestMicroBatch / stage.ReplicaRanks.Count;
            foreach (int n in stage.NodeIds)
            {
                int floor = Math.Max(graph.Nodes[n].MinSamplesPerSlice, options.MinSamplesPerSlice);
                if (smallest < floor)
                {
                    problems.Add(
                        $"Stage {stage.Index} gives replica slices of {smallest} sample(s) but node {n} ('{graph.Nodes[n].Name}') "
                        + $"needs at least {floor} per slice.");
                    break;
                }
            }
        }
    }

    private void CheckOptions(PlanningOptions options, List<string> problems)
    {
        if (!options.Schedules.Contains(Schedule))
        {
            problems.Add($"Schedule {Schedule} is not among the allowed {string.Join(", ", options.Schedules)}.");
        }

        if (!options.AllowRecompute && Stages.Any(s => s.Recompute))
        {
            problems.Add("A stage recomputes activations but recomputation is not allowed.");
        }

        if (Schedule == PipelineScheduleKind.ZeroBubble && Stages.Any(s => s.Recompute))
        {
            problems.Add("A stage recomputes activations under the zero-bubble schedule, which does not support recomputation "
                + "(its weight-gradient pass needs the graph the input-gradient pass built).");
        }

        if (Stages.Count < options.MinStages || Stages.Count > options.MaxStages)
        {
            problems.Add($"{Stages.Count} stages is outside the allowed {options.MinStages}…{options.MaxStages}.");
        }

        if (MicroBatchCount < options.MinMicroBatches || MicroBatchCount > options.MaxMicroBatches)
        {
            problems.Add($"{MicroBatchCount} micro-batches is outside the allowed {options.MinMicroBatches}…{options.MaxMicroBatches}.");
        }

        if (options.ForcedReplicasPerStage is { } forced
            && !forced.SequenceEqual(Stages.Select(s => s.ReplicaRanks.Count)))
        {
            problems.Add(
                $"The forced shape is [{string.Join(", ", forced)}] replicas but the plan has "
                + $"[{string.Join(", ", Stages.Select(s => s.ReplicaRanks.Count))}].");
        }
    }

    private void CheckMemory(Graph graph, CostTable costs, Cluster cluster, PlanningOptions options, List<string> problems)
    {
        PlanEstimate estimate = PlanObjective.Evaluate(graph, costs, cluster, options, ToShape());
        long usable = CostModel.UsableBytes(cluster, options);
        foreach (StagePlan stage in Stages)
        {
            long peak = estimate.PeakBytesPerStage[stage.Index];
            if (peak != stage.PeakMemoryBytes)
            {
                problems.Add($"Stage {stage.Index} records a peak of {stage.PeakMemoryBytes} bytes; the memory model gives {peak}.");
            }

            if (peak > usable)
            {
                problems.Add(
                    $"Stage {stage.Index} needs {Units.Bytes(peak)} per device but only {Units.Bytes(usable)} are usable "
                    + $"({Units.Bytes(cluster.MemoryBytesPerDevice)} with a {options.MemoryMargin:P0} margin).");
            }
        }
    }

    private static int IndexOf(IReadOnlyList<int> list, int item)
    {
        for (int i = 0; i < list.Count; i++)
        {
            if (list[i] == item)
            {
                return i;
            }
        }

        return -1;
    }
}

/// <summary>A plan broke one or more invariants; <see cref="Problems"/> lists them.</summary>
public sealed class PlanValidationException(IReadOnlyList<string> problems)
    : Exception("The partition plan is invalid:\n  " + string.Join("\n  ", problems))
{
    /// <summary>Each broken invariant as a sentence.</summary>
    public IReadOnlyList<string> Problems { get; } = problems;
}

/// <summary>No plan fits in device memory.</summary>
public sealed class NoFeasiblePlanException(string message, long requiredPeakBytes, long deviceBytes) : Exception(message)
{
    /// <summary>The smallest per-device peak (before the margin) of any plan the options allow; -1 when no plan shape is allowed at all.</summary>
    public long RequiredPeakBytes { get; } = requiredPeakBytes;

    /// <summary>Memory of one device of the cluster.</summary>
    public long DeviceBytes { get; } = deviceBytes;
}

internal static class Units
{
    /// <summary>A byte count in the largest binary unit that keeps it at least 1 (so 8 MiB reads "8 MiB", not "0.008 GiB").</summary>
    public static string Bytes(long bytes)
    {
        string[] names = ["B", "KiB", "MiB", "GiB", "TiB"];
        double value = bytes;
        int unit = 0;
        while (Math.Abs(value) >= 1024 && unit < names.Length - 1)
        {
            value /= 1024;
            unit++;
        }

        return value.ToString("0.###", System.Globalization.CultureInfo.InvariantCulture) + " " + names[unit];
    }
}
