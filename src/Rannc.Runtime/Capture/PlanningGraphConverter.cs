using TorchSharp;
using static TorchSharp.torch;
using PlanningGraph = Rannc.Partitioner.Graph;

namespace Rannc.Capture;

/// <summary>What one execution of the graph showed about a value.</summary>
/// <param name="DType">Element type for tensors; null otherwise.</param>
/// <param name="Shape">Shape for tensors; null otherwise.</param>
/// <param name="Bytes">Bytes the value occupies (tensors: elements × element size; shape arrays and scalars: 8 per number).</param>
/// <param name="RequiresGrad">Whether a gradient flows back through it (for an array: through any of its tensors).</param>
/// <param name="Elements">For an array of tensors (<c>chunk</c>'s result): each tensor's measurement; null otherwise.</param>
public sealed record ValueMeasurement(ScalarType? DType, long[]? Shape, long Bytes, bool RequiresGrad, IReadOnlyList<ValueMeasurement>? Elements = null);

/// <summary>Measures values by running the graph, and converts a captured graph to the partitioner's pure graph.</summary>
public static class PlanningGraphConverter
{
    /// <summary>Runs the whole graph once on <paramref name="inputs"/> (with autograd on) and records every value.</summary>
    public static IReadOnlyList<ValueMeasurement> Measure(this CapturedGraph graph, params object?[] inputs)
    {
        if (inputs.Length != graph.Inputs.Count)
        {
            throw new ArgumentException($"The graph takes {graph.Inputs.Count} input(s) but {inputs.Length} were given.", nameof(inputs));
        }
        using var scope = torch.NewDisposeScope();
        using var grad = torch.enable_grad();
        var values = new object?[graph.Values.Count];
        for (var i = 0; i < inputs.Length; i++)
        {
            values[graph.Inputs[i]] = graph.BindExternal(graph.Inputs[i], inputs[i]);
        }
        foreach (var node in graph.Nodes)
        {
            node.Execute(values);
        }
        return values.Select(MeasureValue).ToList();
    }

    private static ValueMeasurement MeasureValue(object? value) => value switch
    {
        Tensor tensor => new ValueMeasurement(tensor.dtype, tensor.shape, tensor.NumberOfElements * tensor.ElementSize, tensor.requires_grad),
        Tensor[] array => MeasureArray(array),
        long[] shape => new ValueMeasurement(null, null, shape.LongLength * sizeof(long), false),
        bool or byte or sbyte or short or ushort or int or uint or long or ulong or float or double => new ValueMeasurement(null, null, sizeof(long), false),
        _ => new ValueMeasurement(null, null, 0, false),
    };

    private static ValueMeasurement MeasureArray(Tensor[] array)
    {
        var elements = array.Select(MeasureValue).ToList();
        return new ValueMeasurement(null, null, elements.Sum(e => e.Bytes), elements.Any(e => e.RequiresGrad), elements);
    }

    /// <summary>
    /// The partitioner's view of the graph. Value sizes are measured at <paramref name="microBatchSize"/> and at twice
    /// that size, so each value's bytes split into a per-sample part and a fixed part.
    /// </summary>
    /// <param name="graph">The captured graph.</param>
    /// <param name="microBatchSize">Samples per micro-batch used for the first measurement.</param>
    /// <param name="sampleInputs">forward()'s arguments for a batch of the given number of samples.</param>
    public static PlanningGraph ToPlanningGraph(this CapturedGraph graph, int microBatchSize, Func<int, object?[]> sampleInputs)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(microBatchSize, 1);
        var small = graph.Measure(sampleInputs(microBatchSize));
        var large = graph.Measure(sampleInputs(2 * microBatchSize));
        return graph.ToPlanningGraph(small, large, microBatchSize);
    }

    /// <summary>The partitioner's view from two measurements, at <paramref name="samples"/> and at twice as many samples.</summary>
    public static PlanningGraph ToPlanningGraph(
        this CapturedGraph graph, IReadOnlyList<ValueMeasurement> atSamples, IReadOnlyList<ValueMeasurement> atTwiceSamples, int samples)
    {
        var parameterIds = new Dictionary<string, int>(StringComparer.Ordinal);
        var parameters = new List<Partitioner.GraphParameter>();
        foreach (var parameter in graph.Parameters)
        {
            parameterIds[parameter.Name] = parameters.Count;
            parameters.Add(new Partitioner.GraphParameter(parameters.Count, parameter.Name, parameter.Bytes, !parameter.IsBuffer));
        }
        var values = graph.Values.Select(value =>
        {
            var perSample = Math.Max(0, (atTwiceSamples[value.Id].Bytes - atSamples[value.Id].Bytes) / samples);
            var fixedBytes = Math.Max(0, atSamples[value.Id].Bytes - (perSample * samples));
            // Values of other types (objects the runtime cannot send) stay inside one stage: the planner keeps their
            // producer and users together. The name is what a refused plan file names: it says why.
            string? refusal = Execution.ValueTransfer.CanCross(value)
                ? Execution.ValueTransfer.WhyNotSendable(atSamples[value.Id])
                : "values of that type cannot travel between stages";
            bool crosses = refusal is null;
            string name = crosses ? value.Name : $"{value.Name}, a {value.TypeName}: {refusal}";
            return new Partitioner.GraphValue(value.Id, name, perSample, fixedBytes, atSamples[value.Id].RequiresGrad)
            {
                CanCrossStage = crosses,
            };
        }).ToList();
        var nodes = graph.Nodes.Select(node => new Partitioner.GraphNode(
            node.Id, node.Name, node.Kind.ToString(), node.Inputs.ToList(), node.Outputs.ToList(),
            node.Parameters.Concat(node.Buffers).Where(parameterIds.ContainsKey).Select(name => parameterIds[name]).Distinct().ToList())
        {
            // Batch statistics over one sample are degenerate (zero variance): batch norm needs slices of 2 or more.
            MinSamplesPerSlice = node.Buffers.Any(b => b.EndsWith("running_var", StringComparison.Ordinal)) ? 2 : 1,
        }).ToList();
        return new PlanningGraph(nodes, values, parameters, graph.Inputs.ToList(), graph.Outputs.ToList());
    }
}
