using System.Diagnostics;
using Rannc.Capture;
using Rannc.Communication;
using Rannc.Partitioner;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Execution;

/// <summary>
/// Measures each node's forward and backward time on this device at one micro-batch size. The nodes are shared out
/// among the ranks (node i on rank i mod N), so profiling takes 1/N of the time it would on one rank; the times are
/// then gathered so every rank plans with the same numbers. Gradients are computed with <c>autograd.grad</c>, so no
/// parameter's <c>.grad</c> changes; the caller restores buffers and the random state.
/// </summary>
internal static class NodeProfiler
{
    public static CostTable Profile(CapturedGraph graph, IReadOnlyList<object?> sampleInputs, int samples, ICommunicator comm, int repeats)
    {
        var parameters = graph.Model.named_parameters().ToDictionary(p => p.name, p => (Tensor)p.parameter);
        var forward = new double[graph.Nodes.Count];
        var backward = new double[graph.Nodes.Count];
        using (torch.NewDisposeScope())
        {
            var values = new object?[graph.Values.Count];
            for (int i = 0; i < sampleInputs.Count; i++) values[graph.Inputs[i]] = sampleInputs[i];
            using (torch.enable_grad())
            {
                foreach (CapturedNode node in graph.Nodes)
                {
                    if (node.Id % comm.Size == comm.Rank)
                    {
                        (forward[node.Id], backward[node.Id]) = Measure(node, values, parameters, repeats);
                    }
                    node.Execute(values); // the real values, for the nodes after it
                }
            }
        }
        // Each rank filled its own nodes; everybody takes each node's time from the rank that measured it.
        double[][] allForward = comm.AllGather(forward);
        double[][] allBackward = comm.AllGather(backward);
        var forwardTimes = Enumerable.Range(0, graph.Nodes.Count).Select(n => allForward[n % comm.Size][n]).ToArray();
        var backwardTimes = Enumerable.Range(0, graph.Nodes.Count).Select(n => allBackward[n % comm.Size][n]).ToArray();
        return CostTable.FromMeasurements(samples, forwardTimes, backwardTimes);
    }

    /// <summary>Median forward and backward seconds of <paramref name="node"/> on the values it reads.</summary>
    private static (double Forward, double Backward) Measure(
        CapturedNode node, object?[] environment, Dictionary<string, Tensor> parameters, int repeats)
    {
        var forwardTimes = new List<double>();
        var backwardTimes = new List<double>();
        for (int r = 0; r < repeats + 1; r++) // the first round warms up and is not counted
        {
            using var scope = torch.NewDisposeScope();
            var values = (object?[])environment.Clone();
            var leaves = new List<Tensor>();
            foreach (int v in node.Inputs)
            {
                if (values[v] is Tensor t && t.is_floating_point())
                {
                    Tensor leaf = t.detach().requires_grad_(true);
                    values[v] = leaf;
                    leaves.Add(leaf);
                }
            }
            var clock = Stopwatch.StartNew();
            node.Execute(values);
            double forwardSeconds = clock.Elapsed.TotalSeconds;

            var outputs = node.Outputs.Select(o => values[o]).OfType<Tensor>().Where(t => t.requires_grad).ToList();
            var wrt = leaves.Concat(node.Parameters.Where(parameters.ContainsKey).Select(n => parameters[n]).Where(p => p.requires_grad)).ToList();
            double backwardSeconds = 0;
            if (outputs.Count > 0 && wrt.Count > 0)
            {
                var gradients = outputs.Select(o => torch.ones_like(o)).ToList();
                clock.Restart();
                torch.autograd.grad(outputs, wrt, gradients, retain_graph: false, create_graph: false, allow_unused: true);
                backwardSeconds = clock.Elapsed.TotalSeconds;
            }
            if (r == 0) continue;
            forwardTimes.Add(forwardSeconds);
            backwardTimes.Add(backwardSeconds);
        }
        return (Median(forwardTimes), Median(backwardTimes));
    }

    private static double Median(List<double> values)
    {
        values.Sort();
        return values[values.Count / 2];
    }
}
