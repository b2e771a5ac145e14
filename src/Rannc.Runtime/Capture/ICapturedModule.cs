namespace Rannc.Capture;

/// <summary>
/// Implemented by the source generator on every <c>[RaNNC]</c> class: the captured template and the code that runs
/// each template node on this instance. Everything is a <c>switch</c> over ids; nothing uses reflection.
/// Loop indices are the iteration numbers of the enclosing template loops, outermost first.
/// </summary>
public interface ICapturedModule
{
    /// <summary>The template captured from <c>forward()</c> at build time.</summary>
    CaptureTemplate CaptureTemplate { get; }

    /// <summary>Number of iterations of template loop <paramref name="loopId"/> for this instance.</summary>
    int GetLoopCount(int loopId, ReadOnlySpan<int> loopIndices);

    /// <summary>Index of the arm of template branch <paramref name="branchId"/> that this instance takes.</summary>
    int SelectBranch(int branchId, ReadOnlySpan<int> loopIndices);

    /// <summary>
    /// The submodule called by a <see cref="NodeKind.Module"/> node, or the tensor read by an
    /// <see cref="NodeKind.Attribute"/> node; null for other kinds.
    /// </summary>
    object? ResolveTarget(int nodeId, ReadOnlySpan<int> loopIndices);

    /// <summary>Runs template node <paramref name="nodeId"/>: reads its inputs from the frame and writes its outputs.</summary>
    void ExecuteNode(int nodeId, NodeFrame frame);
}

/// <summary>
/// The values one node execution reads and writes: slots of an environment array selected by the node's
/// concrete input and output value ids, plus the loop iteration the node belongs to.
/// </summary>
public readonly struct NodeFrame
{
    private readonly object?[] _values;
    private readonly int[] _inputs;
    private readonly int[] _outputs;
    private readonly int[] _loopIndices;

    /// <summary>Creates a frame over <paramref name="values"/> (indexed by concrete value id).</summary>
    public NodeFrame(object?[] values, int[] inputs, int[] outputs, int[] loopIndices)
    {
        _values = values;
        _inputs = inputs;
        _outputs = outputs;
        _loopIndices = loopIndices;
    }

    /// <summary>Iteration numbers of the enclosing loops, outermost first.</summary>
    public ReadOnlySpan<int> LoopIndices => _loopIndices;

    /// <summary>Input <paramref name="index"/> of the node, as its C# type.</summary>
    public T Input<T>(int index) => (T)_values[_inputs[index]]!;

    /// <summary>Stores output <paramref name="index"/> of the node.</summary>
    public void SetOutput(int index, object? value) => _values[_outputs[index]] = value;
}
