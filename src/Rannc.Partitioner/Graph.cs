namespace Rannc.Partitioner;

/// <summary>
/// A dataflow value: an activation, a shape-derived scalar, a constant. Its size is
/// <c>BytesPerSample × micro-batch size + FixedBytes</c>, so one graph serves every micro-batch size.
/// </summary>
/// <param name="Id">Index of the value in <see cref="Graph.Values"/>.</param>
/// <param name="Name">Readable name for messages and plan summaries.</param>
/// <param name="BytesPerSample">Bytes that scale with the batch dimension (0 for batch-independent values).</param>
/// <param name="FixedBytes">Bytes that do not depend on the batch size (shape scalars, constants).</param>
/// <param name="RequiresGrad">Whether a gradient flows back through this value (false for ids, masks, shapes).</param>
public sealed record GraphValue(int Id, string Name, long BytesPerSample, long FixedBytes, bool RequiresGrad)
{
    /// <summary>Bytes of this value for a micro-batch of <paramref name="samples"/> samples.</summary>
    public long BytesAt(int samples) => BytesPerSample * samples + FixedBytes;

    /// <summary>
    /// Whether the runtime can send this value between stages (default true). False for kinds it cannot transfer
    /// (e.g. the <c>Tensor[]</c> result of <c>chunk</c>/<c>split</c>): the planner keeps its producer and every
    /// reader in one stage, and <see cref="PartitionPlan.FindViolations"/> reports a plan where it crosses a boundary.
    /// </summary>
    public bool CanCrossStage { get; init; } = true;
}

/// <summary>A trainable parameter or a buffer, by its name in the model's <c>named_parameters()</c>/<c>named_buffers()</c>.</summary>
/// <param name="Id">Index in <see cref="Graph.Parameters"/>.</param>
/// <param name="Name">The model's own name for it (e.g. <c>encoder.layers.3.attention.query.weight</c>).</param>
/// <param name="Bytes">Storage bytes.</param>
/// <param name="Trainable">True for parameters (they get gradients and optimizer state), false for buffers.</param>
public sealed record GraphParameter(int Id, string Name, long Bytes, bool Trainable);

/// <summary>One operation of the captured forward pass.</summary>
/// <param name="Id">Index of the node in <see cref="Graph.Nodes"/> (nodes are in topological order).</param>
/// <param name="Name">Readable, unique name (module path plus operation, e.g. <c>layers.3.ffn.fc1</c>).</param>
/// <param name="Kind">Operation kind as captured (e.g. <c>Module</c>, <c>Function</c>, <c>TensorMethod</c>, <c>Operator</c>).</param>
/// <param name="Inputs">Ids of the values it reads.</param>
/// <param name="Outputs">Ids of the values it writes; each value has exactly one producer (or is a graph input).</param>
/// <param name="Parameters">Ids of the parameters and buffers it uses; a parameter used by several nodes is shared.</param>
public sealed record GraphNode(
    int Id, string Name, string Kind, IReadOnlyList<int> Inputs, IReadOnlyList<int> Outputs, IReadOnlyList<int> Parameters)
{
    /// <summary>
    /// Fewest samples this node may see in one training slice (default 1; 2 for batch normalisation, whose batch
    /// variance is undefined on one sample). The planner never chooses micro-batch and replica counts that give the
    /// stage holding it a smaller slice (see <see cref="MicroBatchLayout"/>); <see cref="PlanningOptions.MinSamplesPerSlice"/>
    /// raises the floor for every node.
    /// </summary>
    public int MinSamplesPerSlice { get; init; } = 1;
}

/// <summary>
/// The planning view of a model: what the partitioner needs and nothing TorchSharp-specific.
/// The runtime converts a captured graph to this type; tests and benchmarks build synthetic ones.
/// </summary>
public sealed record Graph(
    IReadOnlyList<GraphNode> Nodes,
    IReadOnlyList<GraphValue> Values,
    IReadOnlyList<GraphParameter> Parameters,
    IReadOnlyList<int> Inputs,
    IReadOnlyList<int> Outputs);
