using System.Diagnostics;
using Rannc.Capture;
using Rannc.Communication;
using Rannc.Partitioner;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Execution.Profiling;

/// <summary>
/// Measures each node's forward and backward time on this device at one micro-batch size. The nodes are shared out
/// among the ranks (node i on rank i mod N), so profiling takes 1/N of the time it would on one rank; the times are
/// then gathered so every rank plans with the same numbers. Each node is timed at two micro-batch sizes, so its cost
/// splits into a fixed part (dispatch, small kernels) and a part per sample: with only the second, the planner would
/// think many small micro-batches are free. Gradients are computed with <c>autograd.grad</c>, so no parameter's
/// <c>.grad</c> changes; the caller restores buffers and the random state. A node that writes into its input is timed
/// on a copy of it, so the rounds see the same values and the real pass stays as plain forward() would run it.
/// </summary>
internal static class NodeProfiler
{
    /// <summary>Costs from timings at <paramref name="smallSamples"/> and <paramref name="largeSamples"/> samples.</summary>
    /// <param name="log">Where progress lines go (rank 0 passes its log; the others null).</param>
    public static CostTable Profile(CapturedGraph graph, Func<int, IReadOnlyList<object?>> sampleInputs, int smallSamples, int largeSamples,
        ICommunicator comm, int repeats, Action<string>? log = null)
    {
        int passes = largeSamples <= smallSamples ? 1 : 2;
        var progress = log is null ? null : new ProfilingProgress(graph.Nodes.Count * passes, log);
        (double[] smallForward, double[] smallBackward) = Measure(graph, sampleInputs(smallSamples), comm, repeats, progress);
        if (largeSamples <= smallSamples)
        {
            progress?.Finish();
            return CostTable.FromMeasurements(smallSamples, smallForward, smallBackward);
        }
        (double[] largeForward, double[] largeBackward) = Measure(graph, sampleInputs(largeSamples), comm, repeats, progress);
        progress?.Finish();
        var nodes = new NodeCost[graph.Nodes.Count];
        for (int n = 0; n < nodes.Length; n++)
        {
            (double forwardFixed, double forwardPerSample) = Fit(smallForward[n], largeForward[n], smallSamples, largeSamples);
            (double backwardFixed, double backwardPerSample) = Fit(smallBackward[n], largeBackward[n], smallSamples, largeSamples);
            nodes[n] = new NodeCost(forwardFixed, forwardPerSample, backwardFixed, backwardPerSample);
        }
        return new CostTable(nodes);
    }

    /// <summary>The line through two timings, kept non-negative (noise can make the small one the slower).</summary>
    private static (double Fixed, double PerSample) Fit(double small, double large, int smallSamples, int largeSamples)
    {
        double perSample = Math.Max(0, (large - small) / (largeSamples - smallSamples));
        double fixedPart = Math.Max(0, small - perSample * smallSamples);
        if (perSample == 0) perSample = Math.Max(small, large) * 0.01 / largeSamples; // keep a little growth with size
        return (fixedPart, perSample);
    }

    /// <summary>Every node's forward and backward seconds on <paramref name="sampleInputs"/>, gathered from all ranks.</summary>
    private static (double[] Forward, double[] Backward) Measure(CapturedGraph graph, IReadOnlyList<object?> sampleInputs, ICommunicator comm, int repeats,
        ProfilingProgress? progress)
    {
        var parameters = graph.Model.named_parameters().ToDictionary(p => p.name, p => (Tensor)p.parameter);
        var forward = new double[graph.Nodes.Count];
        var backward = new double[graph.Nodes.Count];
        using (torch.NewDisposeScope())
        {
            var values = new object?[graph.Values.Count];
            for (int i = 0; i < sampleInputs.Count; i++) values[graph.Inputs[i]] = graph.BindExternal(graph.Inputs[i], sampleInputs[i]);
            using (torch.enable_grad())
            {
                foreach (CapturedNode node in graph.Nodes)
                {
                    if (node.Id % comm.Size == comm.Rank)
                    {
                        try
                        {
                            (forward[node.Id], backward[node.Id]) = Measure(node, values, parameters, repeats);
                        }
                        catch (Exception e) when (e is not NodeExecutionException)
                        {
                            throw new NodeExecutionException($"Profiling node '{node.Name}' ({node.Location}) failed: {e.Message}", e);
                        }
                    }
                    node.Execute(values); // the real values, for the nodes after it
                    progress?.NodeDone();
                }
            }
        }
        // Each rank filled its own nodes; everybody takes each node's time from the rank that measured it.
        double[][] allForward = comm.AllGather(forward);
        double[][] allBackward = comm.AllGather(backward);
        return (Enumerable.Range(0, graph.Nodes.Count).Select(n => allForward[n % comm.Size][n]).ToArray(),
            Enumerable.Range(0, graph.Nodes.Count).Select(n => allBackward[n % comm.Size][n]).ToArray());
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
            foreach (int v in node.Inputs.Distinct())
            {
                // A node that writes into its input gets a copy: the environment's value stays as the real pass made it
                // for every round, and the leaf itself is never written (libtorch refuses in-place writes on a leaf).
                bool written = node.ModifiesInput && v == node.Inputs[0];
                // Only inputs a gradient flows through become leaves, as in the pipeline: some inputs must not require one
                // (cross_entropy's class weights). Complex values carry gradients too (a rotary embedding's).
                if (values[v] is Tensor t && (t.is_floating_point() || t.is_complex()) && t.requires_grad)
                {
                    Tensor leaf = t.detach().requires_grad_(true);
                    values[v] = written ? leaf.clone() : leaf;
                    leaves.Add(leaf);
                }
                else if (values[v] is Tensor other && written)
                {
                    values[v] = other.clone();
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
