using System.Diagnostics;
using System.Globalization;
using Rannc.Capture;
using Rannc.Communication;
using Rannc.Execution;
using Rannc.Execution.Profiling;
using Rannc.Partitioner;
using Rannc.Planning;
using TorchSharp;
using static TorchSharp.torch;
using PlanningGraph = Rannc.Partitioner.Graph;

namespace Rannc;

/// <summary>What a dry run found: the plan for the cluster, its summary table, and the simulated step.</summary>
/// <param name="Plan">The plan the partitioner chose for the cluster.</param>
/// <param name="Summary">The plan summary as Rannc prints it (one row per stage, then schedule, micro-batches and simulated step).</param>
/// <param name="Simulation">The simulated step of the plan on the cluster, with this machine's profiled compute times.</param>
public sealed record DryRunPlan(PartitionPlan Plan, string Summary, SimulationResult Simulation);

/// <summary>
/// Plans a <c>[RaNNC]</c> model for a cluster you do not have: captures the graph and profiles its nodes here (one
/// process, this machine's compute times), then plans for the given <see cref="Cluster"/> (its device count, memory and
/// links) and simulates the step, without training and without other ranks.
/// </summary>
public static class RanncPlanner
{
    /// <param name="model">The model, as it would be given to <see cref="RanncModule"/>; its buffers and the random state are left as they were.</param>
    /// <param name="sampleInputs">forward()'s arguments for a few samples (first dimension = batch, at least 2): the graph is captured and profiled on them.</param>
    /// <param name="cluster">The cluster to plan for.</param>
    /// <param name="options">Planning options (memory margin, schedule, forced plan, micro-batches); the budget per device is the cluster's.</param>
    /// <param name="globalBatchSize">Samples per step on the cluster; null: the batch of <paramref name="sampleInputs"/>.</param>
    public static DryRunPlan Plan(nn.Module model, Tensor[] sampleInputs, Cluster cluster, RanncOptions? options = null, int? globalBatchSize = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(sampleInputs);
        ArgumentNullException.ThrowIfNull(cluster);
        cluster.EnsureValid();
        if (sampleInputs.Length == 0 || sampleInputs[0].dim() == 0 || sampleInputs[0].shape[0] < 2)
            throw new ArgumentException("The dry run needs sample batch tensors with at least 2 samples (first dimension = batch).", nameof(sampleInputs));
        RanncOptions settings = (options ?? new RanncOptions()).WithEnvironment();
        Action<string> log = settings.Log ?? (line => Console.Error.WriteLine(line));
        int sampleBatch = (int)sampleInputs[0].shape[0];
        int batch = globalBatchSize ?? sampleBatch;
        var clock = Stopwatch.StartNew();

        CapturedGraph graph;
        PlanningGraph planningGraph;
        CostTable costs;
        using (new RanncModule.PreservedState(model))
        {
            graph = CapturedGraph.Build(model, sampleInputs.Cast<object?>().ToArray());
            object?[] SampleInputs(int n) => sampleInputs.Select(t => (object?)t.narrow(0, 0, Math.Min(n, sampleBatch))).ToArray();
            int measureSamples = Math.Max(1, sampleBatch / 2);
            planningGraph = graph.ToPlanningGraph(measureSamples, SampleInputs);
            // Node costs are fitted as fixed + per sample, so a few samples here extrapolate to the cluster's slices.
            using ICommunicator single = SingleRank();
            costs = NodeProfiler.Profile(graph, n => SampleInputs(n), Math.Max(1, sampleBatch / 4), sampleBatch, single, settings.ProfileRepeats, log);
        }

        // A loss does not grow with the batch; logits do.
        bool scalarOutput = planningGraph.Values[planningGraph.Outputs[0]].BytesPerSample == 0;
        PlanningOptions planning = PlanningSettings.For(settings, batch, cluster.DeviceCount, scalarOutput);
        if (PlanFailure.TooFewNodes(graph, planning.ForcedReplicasPerStage) is { } tooFew) throw new InvalidOperationException(tooFew);
        PartitionPlan plan;
        try
        {
            plan = Planner.Plan(planningGraph, costs, cluster, planning);
        }
        catch (NoFeasiblePlanException e)
        {
            throw new InvalidOperationException(PlanFailure.Explain(e, graph, planning.ForcedReplicasPerStage, cluster.DeviceCount,
                PlanSummaryTable.FormatBytes(cluster.MemoryBytesPerDevice), settings.MemoryMargin), e);
        }
        SimulationResult simulation = PipelineSimulator.Simulate(plan, planningGraph, costs, cluster, planning);
        string heading = string.Create(CultureInfo.InvariantCulture,
            $"Rannc dry run (ready in {clock.Elapsed.TotalSeconds:0.0} s): {plan.Stages.Count} stage(s) on {plan.RanksUsed} of {cluster.DeviceCount} device(s) " +
            $"({cluster.Nodes} node(s) × {cluster.DevicesPerNode}, {PlanSummaryTable.FormatBytes(cluster.MemoryBytesPerDevice)} each); compute times profiled on this machine");
        return new DryRunPlan(plan, PlanSummaryTable.Format(heading, plan, graph, planningGraph, simulation), simulation);
    }

    /// <summary>A one-rank communicator: the profiler shares nodes out among ranks, here there is one.</summary>
    private static InProcessCommunicator SingleRank()
    {
        var job = new InProcessJob(1, Watchdog.TimeoutFromEnvironment());
        return new InProcessCommunicator(new InProcessGroup(job, job.NewGroupId(), [0]), 0);
    }
}
