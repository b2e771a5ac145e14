using Rannc.Capture;
using TorchSharp;
using static TorchSharp.torch;
using Rannc.Partitioner;
using PlanningGraph = Rannc.Partitioner.Graph;

namespace Rannc.Execution;

/// <summary>
/// What each stage of a plan runs and exchanges, derived from the captured graph and the plan (the same on every
/// rank). A value produced in stage <c>p</c> and read in stage <c>q &gt; p+1</c> travels through the stages in
/// between, so each stage talks only to its neighbours, as the schedules and the partitioner's cost model assume.
/// Graph inputs are never sent: every rank has the whole batch and slices it itself.
/// </summary>
internal sealed class StageLayout
{
    /// <summary>Most values one stage boundary may carry (they are numbered inside a message tag).</summary>
    public const int MaxBoundaryValues = 2048;

    public StageLayout(CapturedGraph graph, PlanningGraph planningGraph, PartitionPlan plan,
        IReadOnlyDictionary<int, BatchDerivedNumber?> batchDerived, IReadOnlyList<ValueMeasurement> atSamples,
        IReadOnlyList<ValueMeasurement> atTwiceSamples, int samples)
    {
        BatchDerived = batchDerived;
        _graph = graph;
        _batchAxes = atSamples.Zip(atTwiceSamples, (a, b) => FindBatchAxis(a.Shape, b.Shape, samples)).ToArray();
        // An array's tensors each have their own batch axis; one that does not grow with the batch travels whole.
        _elementAxes = atSamples.Zip(atTwiceSamples, (a, b) => a.Elements is null || b.Elements is null ? null
            : a.Elements.Zip(b.Elements, (x, y) => new ElementAxis(FindBatchAxis(x.Shape, y.Shape, samples), x.Bytes != y.Bytes)).ToArray()).ToArray();
        int stageCount = plan.Stages.Count;
        Stages = plan.Stages.Select(s => graph.CreateStage(s.NodeIds)).ToArray();
        var graphInputs = new HashSet<int>(graph.Inputs);
        int[] producerStage = new int[graph.Values.Count];
        Array.Fill(producerStage, -1);
        int[] lastReaderStage = new int[graph.Values.Count];
        Array.Fill(lastReaderStage, -1);
        for (int s = 0; s < stageCount; s++)
        {
            foreach (int node in plan.Stages[s].NodeIds)
            {
                foreach (int v in graph.Nodes[node].Outputs) producerStage[v] = s;
                foreach (int v in graph.Nodes[node].Inputs) lastReaderStage[v] = Math.Max(lastReaderStage[v], s);
            }
        }
        foreach (int v in graph.Outputs) lastReaderStage[v] = stageCount; // outputs must reach the end of the pipeline

        // Boundary s (between stage s and s+1) carries every non-input value made before it and needed after it.
        Boundaries = new int[Math.Max(0, stageCount - 1)][];
        for (int s = 0; s + 1 < stageCount; s++)
        {
            Boundaries[s] = Enumerable.Range(0, graph.Values.Count)
                .Where(v => !graphInputs.Contains(v) && producerStage[v] >= 0 && producerStage[v] <= s && lastReaderStage[v] > s)
                .ToArray();
            if (Boundaries[s].Length > MaxBoundaryValues)
                throw new NotSupportedException($"The cut after stage {s} carries {Boundaries[s].Length} values; at most {MaxBoundaryValues} are supported.");
        }
        BatchDependent = planningGraph.Values.Select(v => v.BytesPerSample > 0).ToArray();
        NeedsGradient = planningGraph.Values.Select(v => v.RequiresGrad).ToArray();
        GraphInputs = graph.Inputs.ToArray();
        GraphOutputs = graph.Outputs.ToArray();
        ProducerStage = producerStage;
    }

    /// <summary>The captured-graph view of each stage (its nodes, the values it reads and writes).</summary>
    public GraphStage[] Stages { get; }

    /// <summary>Values sent from stage s to stage s+1, ascending.</summary>
    public int[][] Boundaries { get; }

    /// <summary>Per value: whether its first dimension is the batch (it grows with the number of samples).</summary>
    public bool[] BatchDependent { get; }

    /// <summary>Numbers computed from shapes that grow with the batch (null: not in proportion), by value id.</summary>
    public IReadOnlyDictionary<int, BatchDerivedNumber?> BatchDerived { get; }

    /// <summary>Per value: whether a gradient flows back through it.</summary>
    public bool[] NeedsGradient { get; }

    public int[] GraphInputs { get; }

    public int[] GraphOutputs { get; }

    /// <summary>Per value: the stage that computes it (-1 for graph inputs).</summary>
    public int[] ProducerStage { get; }

    private readonly CapturedGraph _graph;
    private readonly BatchAxis?[] _batchAxes;
    private readonly ElementAxis[]?[] _elementAxes;

    /// <summary>One tensor of an array value: its batch axis, and whether it grows with the batch at all.</summary>
    private readonly record struct ElementAxis(BatchAxis? Axis, bool Grows);

    /// <summary>Where a tensor holds its samples: dimension <paramref name="Dim"/>, <paramref name="PerSample"/> rows each
    /// (1 for batch-first tensors; the sequence length for a [batch × sequence, …] view).</summary>
    private readonly record struct BatchAxis(int Dim, long PerSample);

    /// <summary>The rows of samples [<paramref name="first"/>, +<paramref name="count"/>) of a slice's tensor.</summary>
    public Tensor SliceSamples(int value, Tensor tensor, int first, int count)
    {
        BatchAxis axis = AxisOf(value);
        return tensor.narrow(axis.Dim, first * axis.PerSample, count * axis.PerSample);
    }

    /// <summary>The shape of value <paramref name="value"/> for <paramref name="samples"/> samples, from its shape for <paramref name="sliceSamples"/>.</summary>
    public long[] ShapeForSamples(int value, long[] sliceShape, int sliceSamples, int samples)
    {
        BatchAxis axis = AxisOf(value);
        long[] shape = (long[])sliceShape.Clone();
        shape[axis.Dim] = shape[axis.Dim] / sliceSamples * samples;
        return shape;
    }

    /// <summary>Joins pieces of consecutive samples (in sample order) along the batch axis.</summary>
    public Tensor JoinSamples(int value, IList<Tensor> pieces) => torch.cat(pieces, AxisOf(value).Dim);

    /// <summary>
    /// The samples [<paramref name="first"/>, +<paramref name="count"/>) of a batch-dependent value: a tensor, or each
    /// tensor of an array (those that do not grow with the batch whole).
    /// </summary>
    public object SliceValue(int value, object content, int first, int count) => content switch
    {
        Tensor tensor => SliceSamples(value, tensor, first, count),
        Tensor[] array => array.Select((t, i) => ElementGrows(value, i) ? t.narrow(ElementAxisOf(value, i).Dim,
            first * ElementAxisOf(value, i).PerSample, count * ElementAxisOf(value, i).PerSample) : t).ToArray(),
        _ => throw new NotSupportedException($"Value '{_graph.Values[value].Name}' ({content.GetType().Name}) cannot be split between replicas."),
    };

    /// <summary>
    /// Joins pieces of consecutive samples of a batch-dependent value (a tensor or an array of tensors). An array's
    /// tensor that does not grow with the batch is the same in every piece for activations (the first is taken) and
    /// is summed for gradients (every piece used it).
    /// </summary>
    public object JoinValue(int value, IList<object> pieces, bool gradients)
    {
        if (pieces.Count == 1) return pieces[0];
        if (pieces[0] is Tensor) return JoinSamples(value, pieces.Cast<Tensor>().ToList());
        var arrays = pieces.Cast<Tensor[]>().ToList();
        var joined = new Tensor[arrays[0].Length];
        for (int i = 0; i < joined.Length; i++)
        {
            var parts = arrays.Select(a => a[i]).ToList();
            if (ElementGrows(value, i)) joined[i] = torch.cat(parts, ElementAxisOf(value, i).Dim);
            else joined[i] = gradients ? parts.Aggregate((a, b) => a + b) : parts[0];
        }
        return joined;
    }

    private bool ElementGrows(int value, int element) => ElementAxes(value)[element].Grows;

    private BatchAxis ElementAxisOf(int value, int element) => ElementAxes(value)[element].Axis ?? throw new NotSupportedException(
        $"Tensor {element} of value '{_graph.Values[value].Name}' grows with the batch but not along one dimension, so it cannot be split " +
        "between replicas of neighbouring stages; give them equal replica counts (e.g. RANNC_PLAN=SxR).");

    private ElementAxis[] ElementAxes(int value) => _elementAxes[value] ?? throw new InvalidOperationException(
        $"Value '{_graph.Values[value].Name}' was not measured as an array of tensors.");

    private BatchAxis AxisOf(int value) => _batchAxes[value] ?? throw new NotSupportedException(
        $"Value '{_graph.Values[value].Name}' grows with the batch but not along one dimension, so it cannot be split between " +
        "replicas of neighbouring stages; give them equal replica counts (e.g. RANNC_PLAN=SxR).");

    /// <summary>The one dimension that grows in proportion to the samples between two measurements, if any.</summary>
    private static BatchAxis? FindBatchAxis(long[]? small, long[]? large, int samples)
    {
        if (small is null || large is null || small.Length != large.Length) return null;
        var growing = Enumerable.Range(0, small.Length).Where(d => small[d] != large[d]).ToList();
        if (growing.Count != 1) return null;
        int dim = growing[0];
        long perSample = (large[dim] - small[dim]) / samples;
        return perSample > 0 && small[dim] == perSample * samples && large[dim] == 2 * perSample * samples ? new BatchAxis(dim, perSample) : null;
    }

    /// <summary>Values stage <paramref name="stage"/> receives from the previous stage.</summary>
    public IReadOnlyList<int> Incoming(int stage) => stage == 0 ? [] : Boundaries[stage - 1];

    /// <summary>Values stage <paramref name="stage"/> sends to the next stage.</summary>
    public IReadOnlyList<int> Outgoing(int stage) => stage == Stages.Length - 1 ? [] : Boundaries[stage];
}
