namespace Rannc.Partitioner;

/// <summary>
/// What one node costs on one device. Times are affine in the number of samples the node processes:
/// <c>t(n) = Fixed + PerSample × n</c>, which covers both measured costs (a fixed launch overhead plus
/// work proportional to the batch) and analytic ones (FLOPs over a device rate).
/// </summary>
/// <param name="ForwardFixedSeconds">Forward time that does not depend on the batch size.</param>
/// <param name="ForwardSecondsPerSample">Forward time added by each sample.</param>
/// <param name="BackwardFixedSeconds">Backward time that does not depend on the batch size.</param>
/// <param name="BackwardSecondsPerSample">Backward time added by each sample.</param>
/// <param name="SavedBytesPerSample">
/// Activation bytes per sample the node keeps for its backward pass beyond its graph outputs (intermediate
/// tensors inside a leaf module, such as attention probabilities). Zero when only the outputs are kept.
/// </param>
public sealed record NodeCost(
    double ForwardFixedSeconds,
    double ForwardSecondsPerSample,
    double BackwardFixedSeconds,
    double BackwardSecondsPerSample,
    long SavedBytesPerSample = 0)
{
    /// <summary>Forward time for <paramref name="samples"/> samples.</summary>
    public double ForwardSeconds(int samples) => ForwardFixedSeconds + ForwardSecondsPerSample * samples;

    /// <summary>Backward time for <paramref name="samples"/> samples.</summary>
    public double BackwardSeconds(int samples) => BackwardFixedSeconds + BackwardSecondsPerSample * samples;
}

/// <summary>Costs of every node of a <see cref="Graph"/>, indexed by node id.</summary>
/// <param name="Nodes">One entry per graph node, in node-id order.</param>
public sealed record CostTable(IReadOnlyList<NodeCost> Nodes)
{
    /// <summary>
    /// Builds a table from times measured at one reference micro-batch size. A share
    /// <paramref name="fixedFraction"/> of each measured time is taken as batch-independent overhead and the
    /// rest scales linearly with the number of samples.
    /// </summary>
    public static CostTable FromMeasurements(
        int referenceMicroBatch,
        IReadOnlyList<double> forwardSeconds,
        IReadOnlyList<double> backwardSeconds,
        double fixedFraction = 0,
        IReadOnlyList<long>? savedBytesPerSample = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(referenceMicroBatch, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(fixedFraction);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(fixedFraction, 1);
        if (forwardSeconds.Count != backwardSeconds.Count)
        {
            throw new ArgumentException(
                $"forward has {forwardSeconds.Count} times but backward has {backwardSeconds.Count}.", nameof(backwardSeconds));
        }

        var nodes = new NodeCost[forwardSeconds.Count];
        for (int i = 0; i < nodes.Length; i++)
        {
            double f = forwardSeconds[i], b = backwardSeconds[i];
            double scaling = (1 - fixedFraction) / referenceMicroBatch;
            nodes[i] = new NodeCost(f * fixedFraction, f * scaling, b * fixedFraction, b * scaling, savedBytesPerSample?[i] ?? 0);
        }

        return new CostTable(nodes);
    }

    /// <summary>Throws when the table does not describe <paramref name="graph"/>.</summary>
    public void EnsureMatches(Graph graph)
    {
        if (Nodes.Count != graph.Nodes.Count)
        {
            throw new ArgumentException($"The cost table has {Nodes.Count} entries but the graph has {graph.Nodes.Count} nodes.");
        }

        for (int i = 0; i < Nodes.Count; i++)
        {
            NodeCost c = Nodes[i];
            if (c.ForwardFixedSeconds < 0 || c.ForwardSecondsPerSample < 0 || c.BackwardFixedSeconds < 0
                || c.BackwardSecondsPerSample < 0 || c.SavedBytesPerSample < 0)
            {
                throw new ArgumentException($"Cost of node {i} ('{graph.Nodes[i].Name}') has a negative entry: {c}.");
            }
        }
    }
}

/// <summary>
/// The analytic cost model for synthetic graphs: time = FLOPs / device rate, backward = a multiple of the
/// forward FLOPs, plus a fixed per-node overhead (kernel launches). Benchmarks and tests need no hardware.
/// </summary>
public static class AnalyticCostModel
{
    /// <summary>Builds a cost table from forward FLOPs per sample of every node.</summary>
    /// <param name="forwardFlopsPerSample">Forward FLOPs per sample, per node id.</param>
    /// <param name="deviceFlopsPerSecond">Sustained FLOP rate of one device.</param>
    /// <param name="backwardToForwardRatio">Backward FLOPs over forward FLOPs (2 for dense layers).</param>
    /// <param name="perNodeOverheadSeconds">Fixed time per node and pass, independent of the batch.</param>
    /// <param name="savedBytesPerSample">Optional activation bytes kept per node beyond its outputs.</param>
    public static CostTable Build(
        IReadOnlyList<double> forwardFlopsPerSample,
        double deviceFlopsPerSecond,
        double backwardToForwardRatio = 2.0,
        double perNodeOverheadSeconds = 0,
        IReadOnlyList<long>? savedBytesPerSample = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(deviceFlopsPerSecond);
        var nodes = new NodeCost[forwardFlopsPerSample.Count];
        for (int i = 0; i < nodes.Length; i++)
        {
            double forward = forwardFlopsPerSample[i] / deviceFlopsPerSecond;
            nodes[i] = new NodeCost(
                perNodeOverheadSeconds, forward, perNodeOverheadSeconds, forward * backwardToForwardRatio,
                savedBytesPerSample?[i] ?? 0);
        }

        return new CostTable(nodes);
    }
}
