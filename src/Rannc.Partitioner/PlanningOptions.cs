namespace Rannc.Partitioner;

/// <summary>Pipeline schedules the planner and the runtime know.</summary>
public enum PipelineScheduleKind
{
    /// <summary>Fill-drain: all forwards of a step, then all backwards. Keeps every micro-batch's activations.</summary>
    GPipe,

    /// <summary>One forward, one backward: after a warm-up, each stage alternates; keeps at most as many
    /// micro-batches as there are stages from it to the last.</summary>
    OneFOneB,

    /// <summary>Zero bubble (ZB-H1 style): 1F1B with each backward split into an input-gradient pass and a later
    /// weight-gradient pass that fills the pipeline's idle time; 1F1B's memory (a micro-batch is held until its
    /// weight pass). Stages that recompute are not supported with it (the weight pass needs the graph the input pass
    /// built). Opt-in: not in <see cref="PlanningOptions.Schedules"/> by default.</summary>
    ZeroBubble,
}

/// <summary>What the planner may choose and the training setup it plans for.</summary>
/// <param name="GlobalBatchSize">Samples per training step over all ranks.</param>
public sealed record PlanningOptions(int GlobalBatchSize)
{
    /// <summary>Optimizer state bytes per parameter byte (Adam: 2; SGD with momentum: 1; plain SGD: 0).</summary>
    public double OptimizerStateFactor { get; init; } = 2;

    /// <summary>Share of device memory kept free (0.1 = plan for 90 % of the memory).</summary>
    public double MemoryMargin { get; init; } = 0.1;

    /// <summary>Schedules the search may choose from. <see cref="PipelineScheduleKind.ZeroBubble"/> is opt-in: add it to
    /// let the planner also try every 1F1B candidate with the zero-bubble schedule.</summary>
    public IReadOnlyList<PipelineScheduleKind> Schedules { get; init; } = [PipelineScheduleKind.GPipe, PipelineScheduleKind.OneFOneB];

    /// <summary>Whether stages may recompute their activations in the backward pass to save memory.</summary>
    public bool AllowRecompute { get; init; } = true;

    /// <summary>Fewest pipeline stages a plan may have.</summary>
    public int MinStages { get; init; } = 1;

    /// <summary>Most pipeline stages a plan may have.</summary>
    public int MaxStages { get; init; } = int.MaxValue;

    /// <summary>Fewest micro-batches per step.</summary>
    public int MinMicroBatches { get; init; } = 1;

    /// <summary>Most micro-batches per step (default: no limit but the batch; large models on many devices need more than
    /// 64 to keep 1F1B's in-flight activations small).</summary>
    public int MaxMicroBatches { get; init; } = int.MaxValue;

    /// <summary>Most blocks the graph is coarsened into before the stage search (more: finer stages, slower search).</summary>
    public int MaxBlocks { get; init; } = 24;

    /// <summary>Blocks of the refinement pass that follows the coarse search (0 or ≤ MaxBlocks: no refinement).</summary>
    public int RefinementBlocks { get; init; } = 96;

    /// <summary>
    /// Most entries kept per dynamic-programming state (the best by lower bound); 0 keeps every Pareto-optimal
    /// entry, which makes the search exact for its objective. <see cref="PartitionPlan.SearchWasExhaustive"/>
    /// says whether the limit cut anything.
    /// </summary>
    public int SearchBeamWidth { get; init; } = 32;

    /// <summary>Replica counts up to this are all tried; above it, counts grow by at least 20 % per step.</summary>
    public int DenseReplicaLimit { get; init; } = 16;

    /// <summary>Micro-batch counts up to this are all tried; above it, counts grow by at least 20 % per step.</summary>
    public int DenseMicroBatchLimit { get; init; } = 16;

    /// <summary>Fewest samples any node may see in one training slice; a node's own
    /// <see cref="GraphNode.MinSamplesPerSlice"/> may ask for more (default 1: no floor beyond the nodes').</summary>
    public int MinSamplesPerSlice { get; init; } = 1;

    /// <summary>For tests: force the plan shape, one replica count per stage (the stage count is its length).</summary>
    public IReadOnlyList<int>? ForcedReplicasPerStage { get; init; }

    /// <summary>Throws when an option is out of range.</summary>
    public void EnsureValid()
    {
        if (GlobalBatchSize < 1)
        {
            throw new ArgumentException($"GlobalBatchSize must be at least 1, got {GlobalBatchSize}.");
        }

        if (OptimizerStateFactor < 0 || MemoryMargin < 0 || MemoryMargin >= 1)
        {
            throw new ArgumentException($"OptimizerStateFactor must be ≥ 0 and MemoryMargin in [0, 1): {OptimizerStateFactor}, {MemoryMargin}.");
        }

        if (Schedules.Count == 0)
        {
            throw new ArgumentException("At least one schedule must be allowed.");
        }

        if (MinStages < 1 || MaxStages < MinStages || MinMicroBatches < 1 || MaxMicroBatches < MinMicroBatches || MaxBlocks < 1
            || SearchBeamWidth < 0 || MinSamplesPerSlice < 1 || DenseReplicaLimit < 1 || RefinementBlocks < 0 || DenseMicroBatchLimit < 1)
        {
            throw new ArgumentException(
                $"Bounds must satisfy 1 ≤ MinStages ≤ MaxStages, 1 ≤ MinMicroBatches ≤ MaxMicroBatches, MaxBlocks ≥ 1, SearchBeamWidth ≥ 0, MinSamplesPerSlice ≥ 1 and DenseReplicaLimit ≥ 1: {this}.");
        }

        if (ForcedReplicasPerStage is { } forced && (forced.Count == 0 || forced.Any(r => r < 1)))
        {
            throw new ArgumentException("ForcedReplicasPerStage needs at least one stage and every replica count ≥ 1.");
        }
    }
}
