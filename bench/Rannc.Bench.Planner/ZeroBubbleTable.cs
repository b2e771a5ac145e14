using System.Diagnostics;
using Rannc.Partitioner;

namespace Rannc.Bench.Planning;

/// <summary>
/// Issue #12: what the zero-bubble schedule gains in simulation. (1) Forced pipelines of S stages × 1 replica at M
/// micro-batches: the 1F1B plan and the same plan run with the zero-bubble schedule, both simulated by
/// <see cref="PipelineSimulator"/> in the same run. (2) The planner with the zero-bubble schedule allowed vs its
/// defaults (GPipe and 1F1B), on BERT-like models: chosen schedule, simulated step and planning CPU time.
/// </summary>
internal static class ZeroBubbleTable
{
    public static void Print(TextWriter output)
    {
        output.WriteLine("#### Zero bubble vs 1F1B on the same plan (BERT-like h1024 × 24 layers, 8 samples per micro-batch, 8 × 80 GiB per node)");
        output.WriteLine();
        output.WriteLine("| stages × replicas | M | 1F1B sim | zero-bubble sim | 1F1B ÷ zero bubble | 1F1B bubble bound (S−1)/(M+S−1) |");
        output.WriteLine("|---|---:|---:|---:|---:|---:|");
        SyntheticModel model = SyntheticModels.BertLike(24);
        foreach (int stages in new[] { 2, 4, 8 })
        {
            foreach (int microBatches in new[] { stages, 2 * stages, 4 * stages })
            {
                var cluster = Cluster.Typical(Math.Max(1, stages / 8), Math.Min(8, stages), 80 * Scenarios.Gib);
                var options = new PlanningOptions(8 * microBatches)
                {
                    Schedules = [PipelineScheduleKind.OneFOneB],
                    ForcedReplicasPerStage = Enumerable.Repeat(1, stages).ToArray(),
                    MinMicroBatches = microBatches,
                    MaxMicroBatches = microBatches,
                    AllowRecompute = false,
                };
                PartitionPlan oneFOneB = Planner.Plan(model.Graph, model.Costs, cluster, options);
                PartitionPlan zeroBubble = oneFOneB with { Schedule = PipelineScheduleKind.ZeroBubble };
                double a = PipelineSimulator.Simulate(oneFOneB, model.Graph, model.Costs, cluster, options).StepSeconds;
                double z = PipelineSimulator.Simulate(zeroBubble, model.Graph, model.Costs, cluster, options).StepSeconds;
                output.WriteLine($"| {stages} × 1 | {microBatches} | {a * 1e3:0.0} ms | {z * 1e3:0.0} ms | {a / z:0.000} | {(stages - 1.0) / (microBatches + stages - 1):0.000} |");
            }
        }

        output.WriteLine();
        output.WriteLine("#### The planner with the zero-bubble schedule allowed (BERT-like h1024, 8 devices per node, batch 256, default options otherwise)");
        output.WriteLine();
        output.WriteLine("| layers, devices, GiB | defaults: plan, sim | defaults plan CPU | + zero bubble: plan, sim | + zero bubble plan CPU | defaults ÷ with zero bubble |");
        output.WriteLine("|---|---|---:|---|---:|---:|");
        foreach ((int layers, int devices, int memory) in new[] { (24, 8, 16), (48, 8, 16), (48, 32, 32), (96, 32, 32), (96, 16, 16) })
        {
            SyntheticModel bert = SyntheticModels.BertLike(layers);
            var cluster = Cluster.Typical(Math.Max(1, devices / 8), Math.Min(8, devices), memory * Scenarios.Gib);
            var defaults = new PlanningOptions(256);
            var withZeroBubble = defaults with { Schedules = [.. defaults.Schedules, PipelineScheduleKind.ZeroBubble] };
            (PartitionPlan a, double aCpu) = Timed(() => Planner.Plan(bert.Graph, bert.Costs, cluster, defaults));
            (PartitionPlan z, double zCpu) = Timed(() => Planner.Plan(bert.Graph, bert.Costs, cluster, withZeroBubble));
            output.WriteLine($"| {layers}, {devices}, {memory} | {Describe(a)} | {aCpu:0.00} s | {Describe(z)} | {zCpu:0.00} s | "
                + $"{a.PredictedStepSeconds / z.PredictedStepSeconds:0.000} |");
        }

        output.WriteLine();
    }

    private static string Describe(PartitionPlan plan) =>
        $"{plan.Stages.Count} × [{string.Join(",", plan.Stages.Select(s => s.ReplicaRanks.Count).Distinct())}], M={plan.MicroBatchCount}, "
        + $"{plan.Schedule}, {plan.PredictedStepSeconds * 1e3:0.0} ms";

    private static (PartitionPlan Plan, double CpuSeconds) Timed(Func<PartitionPlan> plan)
    {
        plan(); // warm-up (JIT)
        TimeSpan before = Process.GetCurrentProcess().TotalProcessorTime;
        PartitionPlan result = plan();
        return (result, (Process.GetCurrentProcess().TotalProcessorTime - before).TotalSeconds);
    }
}
