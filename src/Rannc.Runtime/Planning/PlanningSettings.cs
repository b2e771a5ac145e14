using Rannc.Execution;
using Rannc.Partitioner;

namespace Rannc.Planning;

/// <summary>The partitioner's options for a batch and a world size, from the user's <see cref="RanncOptions"/>.</summary>
internal static class PlanningSettings
{
    /// <summary>The planning options; a forced plan or micro-batch count that cannot fit the batch or the ranks fails here, saying why.</summary>
    /// <param name="scalarOutput">
    /// Whether forward() returns the loss. Otherwise (logits) the loss is computed after the output is gathered, so the
    /// executor runs every forward before any backward: GPipe's order, whose activation memory the plan must count.
    /// </param>
    public static PlanningOptions For(RanncOptions options, int batch, int worldSize, bool scalarOutput)
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
        if (!scalarOutput)
        {
            if (options.Schedule is { } forcedSchedule && forcedSchedule != PipelineScheduleKind.GPipe)
            {
                throw new ArgumentException(
                    $"RANNC_SCHEDULE / Schedule asks for {forcedSchedule}, but this model's forward() returns a tensor that is not the loss " +
                    "(e.g. logits): its backward waits for the loss computed after the output is gathered, so the pipeline runs every " +
                    "forward first (GPipe). Leave the schedule unset or GPipe, or return the loss from forward() to use other schedules.");
            }
            planning = planning with { Schedules = [PipelineScheduleKind.GPipe] };
        }
        else if (options.Schedule is { } schedule)
        {
            planning = planning with { Schedules = [schedule] };
        }
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
