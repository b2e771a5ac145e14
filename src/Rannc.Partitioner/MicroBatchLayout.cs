namespace Rannc.Partitioner;

/// <summary>
/// How the samples of one step map onto micro-batches and replicas. This is the contract between the plan and
/// the runtime, which must redistribute the batch between stages with different replica counts:
/// <list type="bullet">
/// <item>The global batch (samples <c>0 … B−1</c>) is cut into <c>M</c> contiguous micro-batches; the first
/// <c>B mod M</c> get one extra sample.</item>
/// <item>Every replica of a stage takes part in every micro-batch: micro-batch <c>m</c> of a stage with
/// <c>r</c> replicas is cut into <c>r</c> contiguous slices, the first <c>size mod r</c> one sample larger; replica
/// <c>j</c> owns slice <c>j</c>.</item>
/// <item>Between neighbouring stages, each overlapping pair of slices is one message (activation forward,
/// gradient backward) carrying exactly the overlapping samples, in sample order.</item>
/// </list>
/// </summary>
public sealed record MicroBatchLayout(int GlobalBatchSize, int MicroBatchCount)
{
    /// <summary>Samples in micro-batch <paramref name="microBatch"/>.</summary>
    public int MicroBatchSize(int microBatch) =>
        GlobalBatchSize / MicroBatchCount + (microBatch < GlobalBatchSize % MicroBatchCount ? 1 : 0);

    /// <summary>Index of the first sample of micro-batch <paramref name="microBatch"/> in the global batch.</summary>
    public int MicroBatchStart(int microBatch) =>
        microBatch * (GlobalBatchSize / MicroBatchCount) + Math.Min(microBatch, GlobalBatchSize % MicroBatchCount);

    /// <summary>Largest micro-batch.</summary>
    public int LargestMicroBatch => CostModel.CeilDiv(GlobalBatchSize, MicroBatchCount);

    /// <summary>Smallest micro-batch; a stage may have at most this many replicas so that none is idle.</summary>
    public int SmallestMicroBatch => GlobalBatchSize / MicroBatchCount;

    /// <summary>Global sample range <c>[Start, Start + Count)</c> that <paramref name="replica"/> of a stage with
    /// <paramref name="replicas"/> replicas processes in <paramref name="microBatch"/>.</summary>
    public SampleRange ReplicaSlice(int microBatch, int replicas, int replica)
    {
        int size = MicroBatchSize(microBatch);
        int start = MicroBatchStart(microBatch) + replica * (size / replicas) + Math.Min(replica, size % replicas);
        return new SampleRange(start, size / replicas + (replica < size % replicas ? 1 : 0));
    }

    /// <summary>Largest slice any replica of a stage with <paramref name="replicas"/> replicas processes.</summary>
    public int LargestSlice(int replicas) => CostModel.CeilDiv(LargestMicroBatch, replicas);

    /// <summary>Messages between a stage with <paramref name="fromReplicas"/> replicas and the next one with
    /// <paramref name="toReplicas"/> for one micro-batch: each overlapping pair of slices, in sample order.</summary>
    public IReadOnlyList<SliceTransfer> Transfers(int microBatch, int fromReplicas, int toReplicas)
    {
        var transfers = new List<SliceTransfer>();
        int from = 0, to = 0;
        while (from < fromReplicas && to < toReplicas)
        {
            SampleRange a = ReplicaSlice(microBatch, fromReplicas, from), b = ReplicaSlice(microBatch, toReplicas, to);
            int start = Math.Max(a.Start, b.Start), end = Math.Min(a.End, b.End);
            if (end > start)
            {
                transfers.Add(new SliceTransfer(from, to, new SampleRange(start, end - start)));
            }

            if (a.End <= b.End)
            {
                from++;
            }
            else
            {
                to++;
            }
        }

        return transfers;
    }
}

/// <summary>Samples <c>[Start, Start + Count)</c> of the global batch.</summary>
public readonly record struct SampleRange(int Start, int Count)
{
    /// <summary>One past the last sample.</summary>
    public int End => Start + Count;
}

/// <summary>One message between replica <paramref name="FromReplica"/> of a stage and replica
/// <paramref name="ToReplica"/> of the next, carrying <paramref name="Samples"/>.</summary>
public readonly record struct SliceTransfer(int FromReplica, int ToReplica, SampleRange Samples);
