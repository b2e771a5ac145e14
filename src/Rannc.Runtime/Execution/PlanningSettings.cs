using Rannc.Partitioner;

namespace Rannc.Execution;

/// <summary>The partitioner's options for a batch and a world size, from the user's <see cref="RanncOptions"/>.</summary>
internal static class PlanningSettings
{
    /// <summary>The planning options; a forced plan or micro-batch count that cannot fit the batch or the ranks fails here, saying why.</summary>
    public static PlanningOptions For(RanncOptions options, int batch, int worldSize)
    {
        var planning = new PlanningOptions(batch)
        {
            OptimizerStateFactor = options.OptimizerStateFactor + RanncModule.ExecutorGradientCopies,
            MemoryMargin = options.MemoryMargin,
            // What every plan's message tags allow (PipelineExecutor.GuaranteedMicroBatches); a forced count may go beyond.
            MaxMicroBatches = Math.Min(batch, PipelineExecutor.GuaranteedMicroBatches),
            MinSamplesPerSlice = options.MinSamplesPerSlice,
            // The executor keeps every stage's activations (it does not recompute them in the backward pass yet), so a
            // plan that counts on recomputation would need more memory than it predicts.
            AllowRecompute = false,
        };
        if (options.Schedule is { } schedule) planning = planning with { Schedules = [schedule] };
        if (options.MicroBatches is { } micro) planning = planning with { MinMicroBatches = micro, MaxMicroBatches = micro };
        if (options.MicroBatches is int forcedMicro && forcedMicro > batch)
        {
            throw new ArgumentException(
                $"RANNC_MICRO_BATCHES / MicroBatches asks for {forcedMicro} micro-batches, but the batch has only {batch} samples: " +
                "use at most as many micro-batches as samples.");
        }
        if (options.ForcedReplicasPerStage is { } replicas)
        {
            if (replicas.Max() > batch)
            {
                throw new ArgumentException(
                    $"The forced plan [{string.Join(", ", replicas)}] has a stage with {replicas.Max()} replicas, but the batch has only {batch} samples: " +
                    "every replica needs at least one sample. Use a larger batch or fewer replicas.");
            }
            if (options.MicroBatches is int forced && forced * replicas.Max() > batch)
            {
                throw new ArgumentException(
                    $"{forced} micro-batches on a stage of {replicas.Max()} replicas need at least {forced * replicas.Max()} samples, but the batch has {batch}: " +
                    "use fewer micro-batches or replicas, or a larger batch.");
            }
            if (replicas.Sum() > worldSize)
                throw new ArgumentException($"The forced plan [{string.Join(", ", replicas)}] needs {replicas.Sum()} ranks but there are {worldSize}.");
            planning = planning with { ForcedReplicasPerStage = replicas, MinStages = replicas.Count, MaxStages = replicas.Count };
        }
        return planning;
    }
}
