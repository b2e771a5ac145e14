using Rannc.Capture;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Execution;

/// <summary>
/// A number (or each element of a shape) that the model computes from a tensor's shape and that grows with the
/// batch: <c>Slope × samples + Offset</c> (the batch size itself: 1 × n + 0; batch × sequence: s × n + 0). A stage
/// whose replicas see a different number of samples than the sender's recomputes it for its own slice.
/// </summary>
/// <param name="Slope">Per element: how much it grows per sample.</param>
/// <param name="Offset">Per element: its value at zero samples.</param>
internal sealed record BatchDerivedNumber(long[] Slope, long[] Offset)
{
    /// <summary>The value for <paramref name="samples"/> samples, in the form it had (long, int or long[]).</summary>
    public object For(int samples, object? like)
    {
        long[] values = Slope.Select((slope, i) => slope * samples + Offset[i]).ToArray();
        return like switch
        {
            long[] => values,
            int => (int)values[0],
            _ => values[0],
        };
    }

    /// <summary>
    /// Runs the graph at <paramref name="samples"/> and twice as many samples and returns, per value id, the numbers
    /// that change with the batch. Those that change but not in proportion are returned as null entries: they cannot
    /// be recomputed, so they must not cross between stages of different slice sizes.
    /// </summary>
    public static IReadOnlyDictionary<int, BatchDerivedNumber?> Find(CapturedGraph graph, Func<int, object?[]> inputs, int samples)
    {
        long[]?[] small = Numbers(graph, inputs(samples));
        long[]?[] large = Numbers(graph, inputs(2 * samples));
        var found = new Dictionary<int, BatchDerivedNumber?>();
        for (int v = 0; v < small.Length; v++)
        {
            if (small[v] is not long[] a || large[v] is not long[] b || a.SequenceEqual(b)) continue;
            if (a.Length != b.Length || a.Zip(b).Any(p => (p.Second - p.First) % samples != 0))
            {
                found[v] = null;
                continue;
            }
            long[] slope = a.Zip(b).Select(p => (p.Second - p.First) / samples).ToArray();
            found[v] = new BatchDerivedNumber(slope, a.Select((x, i) => x - slope[i] * samples).ToArray());
        }
        return found;
    }

    /// <summary>The integer values of one run of the graph (null for tensors and other values).</summary>
    private static long[]?[] Numbers(CapturedGraph graph, object?[] inputs)
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var values = new object?[graph.Values.Count];
        for (int i = 0; i < inputs.Length; i++) values[graph.Inputs[i]] = graph.BindExternal(graph.Inputs[i], inputs[i]);
        foreach (CapturedNode node in graph.Nodes) node.Execute(values);
        return values.Select(value => value switch
        {
            long[] shape => shape,
            long number => [number],
            int number => [(long)number],
            _ => null,
        }).ToArray();
    }
}
