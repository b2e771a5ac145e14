using Rannc.Capture;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Execution;

/// <summary>How the slices' losses of a step combine into the step's loss.</summary>
internal enum LossRule
{
    /// <summary>Unknown final operation: a mean over samples is assumed; slice weights are their sample counts.</summary>
    PerSample,
    /// <summary>A known loss with mean reduction: each slice weighs what its mean divides by (e.g. its unmasked tokens).</summary>
    CountedMean,
    /// <summary>A known loss with sum reduction: slice losses add.</summary>
    Sum,
}

/// <summary>
/// Combines the losses of a step's slices (micro-batches × replicas) exactly. Each slice contributes a numerator
/// <c>weight × slice loss</c> and a denominator <c>weight</c>, where the weight is what the slice's mean divides by;
/// the step's loss is Σ numerators / Σ denominators over all slices of all ranks. For the masked-LM loss
/// (<c>cross_entropy</c> with <c>ignore_index</c>) the weight is the number of counted tokens, so the result equals the
/// whole-batch mean, and a slice without counted tokens adds nothing (instead of NaN).
/// </summary>
internal sealed class LossCombination
{
    private static readonly HashSet<string> ClassIndexLosses = new(StringComparer.Ordinal) { "cross_entropy", "nll_loss" };

    private static readonly HashSet<string> ElementwiseLosses = new(StringComparer.Ordinal)
    {
        "mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "binary_cross_entropy", "binary_cross_entropy_with_logits", "kl_div",
    };

    private readonly CapturedNode? _lossNode;

    private LossCombination(LossRule rule, CapturedNode? lossNode)
    {
        Rule = rule;
        _lossNode = lossNode;
    }

    public LossRule Rule { get; }

    /// <summary>The values the loss node reads (empty for the per-sample rule).</summary>
    public IReadOnlyList<int> InputValues => _lossNode?.Inputs ?? [];

    /// <summary>The final operation when it is a known loss, for the plan summary.</summary>
    public string? LossName => _lossNode?.Operation;

    /// <summary>The loss node's id in the graph (-1 for the per-sample rule): with <see cref="Rule"/>, what another rank needs to rebuild this.</summary>
    public int LossNodeId => _lossNode?.Id ?? -1;

    /// <summary>The combination another rank found (<see cref="Rule"/>, <see cref="LossNodeId"/>), for this rank's copy of the same graph.</summary>
    public static LossCombination Of(LossRule rule, int lossNodeId, CapturedGraph graph) =>
        lossNodeId < 0 ? new LossCombination(rule, null) : new LossCombination(rule, graph.Nodes[lossNodeId]);

    /// <summary>Per-sample weighting (for graphs whose output is not a scalar).</summary>
    public static LossCombination PerSample { get; } = new(LossRule.PerSample, null);

    /// <summary>
    /// Finds the rule from the graph's output node, using the values of one run of the whole graph
    /// (<paramref name="values"/>): whether a known loss divides by a count (its value is unchanged when its batch
    /// inputs are repeated) or sums (its value doubles).
    /// </summary>
    public static LossCombination Analyse(CapturedGraph graph, object?[] values, IReadOnlyList<bool> batchDependent)
    {
        int output = graph.Outputs[0];
        int producer = graph.Values[output].Producer;
        if (producer < 0) return PerSample;
        CapturedNode node = graph.Nodes[producer];
        string operation = node.Operation;
        if (operation == "mean" && node.Inputs.Count > 0 && !batchDependent[node.Inputs[0]] && values[node.Inputs[0]] is Tensor { NumberOfElements: > 1 })
        {
            throw new NotSupportedException(
                $"forward() ends with mean() over '{graph.Values[node.Inputs[0]].Name}' ({node.Location}), whose size does not grow with the batch, " +
                "so the mean of the whole batch cannot be assembled from micro-batch slices. Return a loss that is a mean or a sum over samples " +
                "(for example a TorchSharp loss function with its default mean reduction).");
        }
        if (node.Kind != NodeKind.Function || !(ClassIndexLosses.Contains(operation) || ElementwiseLosses.Contains(operation)))
            return PerSample;

        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        double once = Evaluate(graph, node, values, repeatBatch: false);
        double twice = Evaluate(graph, node, values, repeatBatch: true);
        LossRule rule;
        if (double.IsNaN(once) || Close(once, twice)) rule = LossRule.CountedMean;
        else if (Close(2 * once, twice)) rule = LossRule.Sum;
        else return PerSample;
        return new LossCombination(rule, node);
    }

    /// <summary>What the slice's mean divides by, from the loss node's inputs in <paramref name="values"/> (by value id).</summary>
    public double SliceWeight(IReadOnlyDictionary<int, object?> values, int samples, CapturedGraph graph)
    {
        if (Rule == LossRule.PerSample || _lossNode is null) return samples;
        if (Rule == LossRule.Sum) return 1;
        var input = (Tensor)values[_lossNode.Inputs[0]]!;
        if (ElementwiseLosses.Contains(_lossNode.Operation)) return input.NumberOfElements; // the mean is over every element
        // cross_entropy / nll_loss: targets of class indices count the items not ignored (times their class weight);
        // probability targets count every item.
        var target = values[_lossNode.Inputs[1]] as Tensor;
        if (target is null || target.is_floating_point()) return input.dim() >= 2 ? input.NumberOfElements / input.shape[1] : 1;
        return CountedItems(graph, values, input);
    }

    /// <summary>
    /// The items a class-index loss counts: the gradient of the loss at a constant input is non-zero exactly for them
    /// (this finds <c>ignore_index</c> whatever its value). Unequal magnitudes mean class weights, whose absolute
    /// size cannot be recovered, so they are refused.
    /// </summary>
    private double CountedItems(CapturedGraph graph, IReadOnlyDictionary<int, object?> values, Tensor input)
    {
        using var scope = torch.NewDisposeScope();
        using var enableGrad = torch.enable_grad();
        Tensor probe = torch.zeros_like(input, dtype: input.dtype).requires_grad_(true);
        var slots = new object?[graph.Values.Count];
        foreach (int v in _lossNode!.Inputs) slots[v] = values[v];
        slots[_lossNode.Inputs[0]] = probe;
        _lossNode.Execute(slots);
        var loss = (Tensor)slots[_lossNode.Outputs[0]]!;
        Tensor gradient = torch.autograd.grad([loss], [probe], allow_unused: true)[0];
        if (gradient is null || gradient.IsInvalid) return 0;
        Tensor perItem = input.dim() >= 2 ? gradient.abs().amax([1]) : gradient.abs().amax([0]);
        Tensor counted = perItem.gt(0);
        long count = counted.sum().item<long>();
        if (count == 0) return 0;
        using Tensor magnitudes = perItem.masked_select(counted).to_type(ScalarType.Float64);
        double smallest = magnitudes.min().item<double>();
        double largest = magnitudes.max().item<double>();
        // With class weights, equal magnitudes in one slice may only mean that its counted items share a class.
        if (ClassWeightTotal(values, input, counted) is double total) return total;
        if (largest - smallest <= 1e-6 * largest) return count;
        // Unequal magnitudes: class weights. The mean divides by the sum of the counted items' class weights, which the
        // gradient shows only up to a common factor, so the weight vector is read from the node's inputs: the one
        // floating-point vector with one entry per class (the only such argument of cross_entropy and nll_loss).
        throw new NotSupportedException(
            $"{_lossNode.Operation} at {_lossNode.Location} weighs its items unequally, and its class weights could not be identified among its " +
            "inputs, so its mean over the batch cannot be assembled exactly from micro-batch slices. Use reduction: Sum and divide by the batch's " +
            "total weight yourself, or a plan with one micro-batch and one replica in the last stage.");
    }

    /// <summary>Σ weight[target] over the counted items, when exactly one input is a class-weight vector.</summary>
    private double? ClassWeightTotal(IReadOnlyDictionary<int, object?> values, Tensor input, Tensor counted)
    {
        if (input.dim() < 2 || values[_lossNode!.Inputs[1]] is not Tensor target || target.is_floating_point()) return null;
        long classes = input.shape[1];
        var candidates = _lossNode.Inputs.Skip(2).Select(v => values[v]).OfType<Tensor>()
            .Where(t => t.dim() == 1 && t.shape[0] == classes && t.is_floating_point()).ToList();
        if (candidates.Count != 1) return null;
        Tensor labels = target.masked_select(counted);
        return candidates[0].to_type(ScalarType.Float64).index_select(0, labels).sum().item<double>();
    }

    private static double Evaluate(CapturedGraph graph, CapturedNode node, object?[] values, bool repeatBatch)
    {
        var slots = new object?[graph.Values.Count];
        for (int i = 0; i < node.Inputs.Count; i++)
        {
            int v = node.Inputs[i];
            // The input and the target carry the batch; further arguments (class weights) do not.
            slots[v] = repeatBatch && i < 2 && values[v] is Tensor { IsInvalid: false } t && t.dim() > 0 ? torch.cat([t, t], 0) : values[v];
        }
        node.Execute(slots);
        return slots[node.Outputs[0]] is Tensor { IsInvalid: false } loss && loss.dim() == 0 ? loss.to_type(ScalarType.Float64).item<double>() : double.NaN;
    }

    private static bool Close(double a, double b) => Math.Abs(a - b) <= 1e-6 * Math.Max(Math.Abs(a), Math.Abs(b)) + 1e-300;
}
