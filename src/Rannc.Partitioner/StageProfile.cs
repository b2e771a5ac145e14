namespace Rannc.Partitioner;

/// <summary>A byte count that scales with the number of samples: <c>PerSample × n + Fixed</c>.</summary>
public readonly record struct ScaledBytes(long PerSample, long Fixed)
{
    /// <summary>Bytes for <paramref name="samples"/> samples.</summary>
    public long At(int samples) => PerSample * samples + Fixed;

    /// <summary>Sum of two sizes.</summary>
    public static ScaledBytes operator +(ScaledBytes a, ScaledBytes b) => new(a.PerSample + b.PerSample, a.Fixed + b.Fixed);
}

/// <summary>
/// Everything the cost and memory model needs about one stage (a contiguous range of nodes): summed compute
/// times, parameter bytes, and the activation sizes it keeps, receives and sends.
/// </summary>
/// <param name="ForwardFixedSeconds">Summed batch-independent forward time.</param>
/// <param name="ForwardSecondsPerSample">Summed forward time per sample.</param>
/// <param name="BackwardFixedSeconds">Summed batch-independent backward time.</param>
/// <param name="BackwardSecondsPerSample">Summed backward time per sample.</param>
/// <param name="TrainableParameterBytes">Bytes of distinct trainable parameters used by the stage.</param>
/// <param name="FrozenParameterBytes">Bytes of distinct buffers (non-trainable) used by the stage.</param>
/// <param name="Inputs">Values the stage reads but does not produce: received activations and graph inputs.</param>
/// <param name="Produced">Values produced by the stage's nodes plus the bytes they save for backward.</param>
/// <param name="ActivationsIn">Values received from the previous stage (the cut before the stage).</param>
/// <param name="GradientsIn">The part of <paramref name="ActivationsIn"/> that needs a gradient (sent back).</param>
/// <param name="ActivationsOut">Values sent to the next stage (the cut after the stage, including pass-through).</param>
/// <param name="GradientsOut">The part of <paramref name="ActivationsOut"/> that needs a gradient (received back).</param>
public sealed record StageProfile(
    double ForwardFixedSeconds,
    double ForwardSecondsPerSample,
    double BackwardFixedSeconds,
    double BackwardSecondsPerSample,
    long TrainableParameterBytes,
    long FrozenParameterBytes,
    ScaledBytes Inputs,
    ScaledBytes Produced,
    ScaledBytes ActivationsIn,
    ScaledBytes GradientsIn,
    ScaledBytes ActivationsOut,
    ScaledBytes GradientsOut)
{
    /// <summary>Fewest samples a slice of this stage may hold: the largest <see cref="GraphNode.MinSamplesPerSlice"/> of its nodes.</summary>
    public int MinSamplesPerSlice { get; init; } = 1;

    /// <summary>Batch-independent part of the zero-bubble weight-gradient pass (see
    /// <see cref="CostModel.WeightGradientShareOfBackward"/>); part of <see cref="BackwardFixedSeconds"/>.</summary>
    public double WeightGradientFixedSeconds { get; init; }

    /// <summary>Per-sample part of the zero-bubble weight-gradient pass; part of <see cref="BackwardSecondsPerSample"/>.</summary>
    public double WeightGradientSecondsPerSample { get; init; }

    /// <summary>Forward time for a replica slice of <paramref name="samples"/> samples.</summary>
    public double ForwardSeconds(int samples) => ForwardFixedSeconds + ForwardSecondsPerSample * samples;

    /// <summary>Backward time for <paramref name="samples"/> samples; with recomputation the forward runs again first.</summary>
    public double BackwardSeconds(int samples, bool recompute) =>
        BackwardFixedSeconds + BackwardSecondsPerSample * samples + (recompute ? ForwardSeconds(samples) : 0);

    /// <summary>Zero-bubble weight-gradient pass for <paramref name="samples"/> samples.</summary>
    public double WeightGradientSeconds(int samples) => WeightGradientFixedSeconds + WeightGradientSecondsPerSample * samples;

    /// <summary>Zero-bubble input-gradient pass for <paramref name="samples"/> samples: the backward without its weight pass.</summary>
    public double InputGradientSeconds(int samples) => BackwardSeconds(samples, recompute: false) - WeightGradientSeconds(samples);
}

/// <summary>
/// Stage profiles for every contiguous range of an ordered list of blocks (each block a list of node ids). A value
/// produced in one block and read in a later one crosses every stage boundary in between (it is passed through).
/// Graph inputs are never transferred: every rank loads its own copy of the batch.
/// </summary>
internal sealed class RangeTable
{
    private readonly StageProfile[] _profiles;
    private readonly bool _stagesOnly;

    public int BlockCount { get; }

    private RangeTable(int blockCount, StageProfile[] profiles, bool stagesOnly)
    {
        BlockCount = blockCount;
        _profiles = profiles;
        _stagesOnly = stagesOnly;
    }

    /// <summary>The profile of blocks <c>[first, end)</c> (only <c>end = first + 1</c> in a <see cref="BuildStages"/> table).</summary>
    public StageProfile Get(int first, int end) =>
        _stagesOnly
            ? (end == first + 1 ? _profiles[first] : throw new InvalidOperationException("A stage table holds single blocks only."))
            : _profiles[first * (BlockCount + 1) + end];

    public static RangeTable Build(Graph graph, CostTable costs, IReadOnlyList<IReadOnlyList<int>> blocks) =>
        Build(graph, costs, blocks, stagesOnly: false);

    /// <summary>Profiles of each block alone (the stages of a plan): linear in the graph, where <see cref="Build"/> is
    /// quadratic in the block count.</summary>
    public static RangeTable BuildStages(Graph graph, CostTable costs, IReadOnlyList<IReadOnlyList<int>> stages) =>
        Build(graph, costs, stages, stagesOnly: true);

    private static RangeTable Build(Graph graph, CostTable costs, IReadOnlyList<IReadOnlyList<int>> blocks, bool stagesOnly)
    {
        int blockCount = blocks.Count;
        int[] blockOfNode = new int[graph.Nodes.Count];
        Array.Fill(blockOfNode, -1);
        for (int b = 0; b < blockCount; b++)
        {
            foreach (int node in blocks[b])
            {
                blockOfNode[node] = b;
            }
        }

        // Producer block of every value (-1 for graph inputs) and the last block that reads it.
        int valueCount = graph.Values.Count;
        int[] producerBlock = new int[valueCount];
        int[] lastConsumerBlock = new int[valueCount];
        Array.Fill(producerBlock, -1);
        Array.Fill(lastConsumerBlock, -1);
        foreach (GraphNode node in graph.Nodes)
        {
            foreach (int v in node.Outputs)
            {
                producerBlock[v] = blockOfNode[node.Id];
            }

            foreach (int v in node.Inputs)
            {
                lastConsumerBlock[v] = Math.Max(lastConsumerBlock[v], blockOfNode[node.Id]);
            }
        }

        // cut[p] = values produced before block p and read at or after p. Built with difference arrays.
        var cutDelta = new ScaledBytes[blockCount + 2];
        var gradDelta = new ScaledBytes[blockCount + 2];
        for (int v = 0; v < valueCount; v++)
        {
            int from = producerBlock[v], to = lastConsumerBlock[v];
            if (from < 0 || to <= from)
            {
                continue;
            }

            GraphValue value = graph.Values[v];
            var size = new ScaledBytes(value.BytesPerSample, value.FixedBytes);
            cutDelta[from + 1] += size;
            cutDelta[to + 1] += new ScaledBytes(-size.PerSample, -size.Fixed);
            if (value.RequiresGrad)
            {
                gradDelta[from + 1] += size;
                gradDelta[to + 1] += new ScaledBytes(-size.PerSample, -size.Fixed);
            }
        }

        var cut = new ScaledBytes[blockCount + 1];
        var gradCut = new ScaledBytes[blockCount + 1];
        ScaledBytes runningCut = default, runningGrad = default;
        for (int p = 0; p <= blockCount; p++)
        {
            runningCut += cutDelta[p];
            runningGrad += gradDelta[p];
            cut[p] = runningCut;
            gradCut[p] = runningGrad;
        }

        var graphInputs = new HashSet<int>(graph.Inputs);
        bool[] hasWeightPass = graph.Nodes.Select(n => n.Parameters.Any(p => graph.Parameters[p].Trainable)).ToArray();
        var profiles = new StageProfile[stagesOnly ? blockCount : (blockCount + 1) * (blockCount + 1)];
        bool[] parameterSeen = new bool[graph.Parameters.Count];
        bool[] inputSeen = new bool[valueCount];
        for (int first = 0; first < blockCount; first++)
        {
            if (stagesOnly)
            {
                // Only this block's own entries need clearing: keeps the table linear in the graph size.
                foreach (int nodeId in blocks[first])
                {
                    foreach (int p in graph.Nodes[nodeId].Parameters)
                    {
                        parameterSeen[p] = false;
                    }

                    foreach (int v in graph.Nodes[nodeId].Inputs)
                    {
                        inputSeen[v] = false;
                    }
                }
            }
            else
            {
                Array.Clear(parameterSeen);
                Array.Clear(inputSeen);
            }

            double ff = 0, fs = 0, bf = 0, bs = 0, wf = 0, ws = 0;
            int minSlice = 1;
            long trainable = 0, frozen = 0;
            ScaledBytes produced = default, graphInputBytes = default;
            for (int end = first + 1; end <= (stagesOnly ? first + 1 : blockCount); end++)
            {
                foreach (int nodeId in blocks[end - 1])
                {
                    GraphNode node = graph.Nodes[nodeId];
                    NodeCost cost = costs.Nodes[nodeId];
                    minSlice = Math.Max(minSlice, node.MinSamplesPerSlice);
                    ff += cost.ForwardFixedSeconds;
                    fs += cost.ForwardSecondsPerSample;
                    bf += cost.BackwardFixedSeconds;
                    bs += cost.BackwardSecondsPerSample;
                    if (hasWeightPass[nodeId])
                    {
                        wf += cost.BackwardFixedSeconds * CostModel.WeightGradientShareOfBackward;
                        ws += cost.BackwardSecondsPerSample * CostModel.WeightGradientShareOfBackward;
                    }

                    produced += new ScaledBytes(cost.SavedBytesPerSample, 0);
                    foreach (int v in node.Outputs)
                    {
                        produced += new ScaledBytes(graph.Values[v].BytesPerSample, graph.Values[v].FixedBytes);
                    }

                    foreach (int v in node.Inputs)
                    {
                        if (graphInputs.Contains(v) && !inputSeen[v])
                        {
                            inputSeen[v] = true;
                            graphInputBytes += new ScaledBytes(graph.Values[v].BytesPerSample, graph.Values[v].FixedBytes);
                        }
                    }

                    foreach (int p in node.Parameters)
                    {
                        if (!parameterSeen[p])
                        {
                            parameterSeen[p] = true;
                            GraphParameter parameter = graph.Parameters[p];
                            if (parameter.Trainable)
                            {
                                trainable += parameter.Bytes;
                            }
                            else
                            {
                                frozen += parameter.Bytes;
                            }
                        }
                    }
                }

                profiles[stagesOnly ? first : first * (blockCount + 1) + end] = new StageProfile(
                    ff, fs, bf, bs, trainable, frozen,
                    Inputs: cut[first] + graphInputBytes,
                    Produced: produced,
                    ActivationsIn: cut[first],
                    GradientsIn: gradCut[first],
                    ActivationsOut: cut[end],
                    GradientsOut: gradCut[end])
                {
                    MinSamplesPerSlice = minSlice,
                    WeightGradientFixedSeconds = wf,
                    WeightGradientSecondsPerSample = ws,
                };
            }
        }

        return new RangeTable(blockCount, profiles, stagesOnly);
    }
}
