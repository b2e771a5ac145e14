using Rannc.Capture;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Execution;

/// <summary>
/// Cuts forward()'s arguments into slices of samples, each argument as it holds the batch (<see cref="InputBatch"/>:
/// along a declared dimension, whole for shared arguments, by offsets for a flat ragged argument), and finds the batch
/// size. Replicas, micro-batches, profiling samples and the verify mode all slice through it, so they agree.
/// </summary>
internal sealed class InputSlicer
{
    private readonly string[] _names;
    private readonly InputBatch[] _batching;
    // Per input: the index of the offsets input that cuts it (a flat ragged input), or -1.
    private readonly int[] _cutByOffsets;

    /// <param name="graph">The captured graph: its inputs' names and declared batching.</param>
    /// <param name="overrides">By forward() parameter name, batching that replaces the declared one (RanncOptions.InputBatching).</param>
    public InputSlicer(CapturedGraph graph, IReadOnlyDictionary<string, InputBatch>? overrides = null)
    {
        _names = graph.Inputs.Select(v => graph.Values[v].Name).ToArray();
        _batching = _names.Select((name, i) => graph.InputBatching.ElementAtOrDefault(i) ?? InputBatch.Along(0)).ToArray();
        foreach ((string name, InputBatch batch) in overrides ?? new Dictionary<string, InputBatch>())
        {
            int index = Array.IndexOf(_names, name);
            if (index < 0)
            {
                throw new ArgumentException(
                    $"RanncOptions.InputBatching names '{name}', but forward() of {graph.Model.GetType().Name} has no such parameter " +
                    $"(its parameters: {string.Join(", ", _names)}).");
            }
            _batching[index] = batch;
        }
        _cutByOffsets = new int[_names.Length];
        Array.Fill(_cutByOffsets, -1);
        for (int i = 0; i < _batching.Length; i++)
        {
            if (_batching[i].Kind != InputBatchKind.Offsets) continue;
            int flat = Array.IndexOf(_names, _batching[i].OffsetsInto);
            if (flat < 0 || flat == i)
            {
                throw new ArgumentException(
                    $"Parameter '{_names[i]}' of forward() is declared as offsets into '{_batching[i].OffsetsInto}', which is not another parameter " +
                    $"of forward() (its parameters: {string.Join(", ", _names)}).");
            }
            if (_cutByOffsets[flat] >= 0 || _batching[flat].Kind != InputBatchKind.Along || _batching[flat].Dim != 0)
            {
                throw new ArgumentException(
                    $"Parameter '{_names[flat]}' is cut by the offsets '{_names[i]}', so it must be a flat tensor with no other batch declaration " +
                    $"and no other offsets (it is declared {_batching[flat]}).");
            }
            _cutByOffsets[flat] = i;
        }
    }

    /// <summary>How each input holds the batch, after overrides.</summary>
    public IReadOnlyList<InputBatch> Batching => _batching;

    /// <summary>
    /// The number of samples in <paramref name="inputs"/>: the size of every batched input along its batch dimension
    /// (they must agree), or the number of offsets. Fails saying how to declare the batch dimension when they do not.
    /// </summary>
    public int BatchSize(IReadOnlyList<object?> inputs)
    {
        if (inputs.Count != _names.Length)
            throw new ArgumentException($"forward() takes {_names.Length} argument(s) ({string.Join(", ", _names)}), but {inputs.Count} were given.");
        var sizes = new List<(string Name, string How, long Size)>();
        for (int i = 0; i < inputs.Count; i++)
        {
            if (_cutByOffsets[i] >= 0 || inputs[i] is not Tensor tensor) continue;
            InputBatch batch = _batching[i];
            if (batch.Kind == InputBatchKind.NotBatched) continue;
            if (tensor.dim() == 0)
            {
                throw new ArgumentException(
                    $"forward() argument '{_names[i]}' is a scalar tensor, so it has no batch dimension: declare it [NotBatched] " +
                    "(or RanncOptions.InputBatching) if every sample shares it.");
            }
            int dim = Dimension(i, tensor);
            sizes.Add((_names[i], batch.Kind == InputBatchKind.Offsets ? "offsets" : $"dimension {dim}", tensor.shape[dim]));
        }
        if (sizes.Count == 0)
        {
            throw new ArgumentException(
                $"None of forward()'s arguments ({string.Join(", ", _names)}) holds a batch: at least one tensor must be batched " +
                "(dimension 0 unless declared with [Batch(dim)]).");
        }
        if (sizes.Select(s => s.Size).Distinct().Count() > 1)
        {
            throw new ArgumentException(
                "forward()'s arguments disagree on the batch size (" + string.Join(", ", sizes.Select(s => $"'{s.Name}' has {s.Size} along {s.How}")) +
                "). Every tensor argument is taken to hold the batch along dimension 0 unless declared otherwise: mark a sequence-first " +
                "argument [Batch(1)], an argument every sample shares (a [seq, seq] mask) [NotBatched], per-sample offsets into a flat " +
                "argument [OffsetsOf(\"name\")], or set RanncOptions.InputBatching for a model you cannot annotate.");
        }
        long size = sizes[0].Size;
        if (size < 1) throw new ArgumentException("The batch is empty: forward() needs at least one sample.");
        for (int i = 0; i < inputs.Count; i++)
        {
            if (_batching[i].Kind == InputBatchKind.Offsets && inputs[i] is Tensor offsets) CheckOffsets(i, offsets, inputs);
        }
        return checked((int)size);
    }

    /// <summary>forward()'s arguments for samples [<paramref name="start"/>, +<paramref name="count"/>) of the whole batch.</summary>
    public object?[] Slice(IReadOnlyList<object?> inputs, int start, int count)
    {
        var sliced = new object?[inputs.Count];
        for (int i = 0; i < inputs.Count; i++)
        {
            sliced[i] = inputs[i] is Tensor tensor ? SliceOne(i, tensor, inputs, start, count) : inputs[i];
        }
        return sliced;
    }

    /// <summary>Input <paramref name="index"/> for samples [<paramref name="start"/>, +<paramref name="count"/>).</summary>
    public object? SliceInput(int index, IReadOnlyList<object?> inputs, int start, int count) =>
        inputs[index] is Tensor tensor ? SliceOne(index, tensor, inputs, start, count) : inputs[index];

    private Tensor SliceOne(int index, Tensor tensor, IReadOnlyList<object?> inputs, int start, int count)
    {
        if (_cutByOffsets[index] is int offsetsIndex and >= 0)
        {
            (long first, long end) = ItemRange((Tensor)inputs[offsetsIndex]!, tensor.shape[0], start, count);
            return tensor.narrow(0, first, end - first);
        }
        InputBatch batch = _batching[index];
        if (batch.Kind == InputBatchKind.NotBatched || tensor.dim() == 0) return tensor;
        if (batch.Kind == InputBatchKind.Offsets)
        {
            Tensor mine = tensor.narrow(0, start, count);
            long first = tensor[start].item<long>();
            // Re-based so that the slice's first sample starts at item 0 of its slice of the flat input.
            return first == 0 ? mine : mine - first;
        }
        return tensor.narrow(Dimension(index, tensor), start, count);
    }

    /// <summary>The items [first, end) of the flat input that samples [start, +count) own.</summary>
    private static (long First, long End) ItemRange(Tensor offsets, long items, int start, int count)
    {
        long first = offsets[start].item<long>();
        long end = start + count < offsets.shape[0] ? offsets[start + count].item<long>() : items;
        return (first, end);
    }

    private int Dimension(int index, Tensor tensor)
    {
        int dim = _batching[index].Dim;
        int resolved = dim < 0 ? dim + (int)tensor.dim() : dim;
        if (resolved < 0 || resolved >= tensor.dim())
        {
            throw new ArgumentException(
                $"forward() argument '{_names[index]}' is declared to hold the batch along dimension {dim}, but it has {tensor.dim()} dimension(s).");
        }
        return resolved;
    }

    /// <summary>Offsets must be a 1-D integer tensor, start at 0, never decrease and stay within the flat input.</summary>
    private void CheckOffsets(int index, Tensor offsets, IReadOnlyList<object?> inputs)
    {
        int flat = Array.IndexOf(_names, _batching[index].OffsetsInto);
        string problem = offsets.dim() != 1 ? $"it has {offsets.dim()} dimensions, not 1"
            : offsets.is_floating_point() || offsets.dtype == ScalarType.Bool ? $"it is {offsets.dtype}, not an integer tensor"
            : inputs[flat] is not Tensor { } items || items.dim() != 1 ? $"'{_names[flat]}' is not a 1-D tensor"
            : offsets[0].item<long>() != 0 ? "its first offset is not 0"
            : offsets.shape[0] > 1 && (offsets.narrow(0, 1, offsets.shape[0] - 1) - offsets.narrow(0, 0, offsets.shape[0] - 1)).lt(0).any().item<bool>()
                ? "it decreases"
            : offsets[-1].item<long>() > items.shape[0] ? $"its last offset is past the end of '{_names[flat]}' ({items.shape[0]} items)"
            : "";
        if (problem.Length > 0)
        {
            throw new ArgumentException(
                $"forward() argument '{_names[index]}' is declared as offsets into '{_names[flat]}' (one start per sample, the first 0, never " +
                $"decreasing, as EmbeddingBag takes without include_last_offset), but {problem}.");
        }
    }
}
