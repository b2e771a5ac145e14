using System.Diagnostics;
using Rannc.Partitioner;

namespace Rannc.Bench.Planning;

/// <summary>Issue #12's tables: the RaNNC paper's enlarged-BERT configurations, the 100B-scale cases and planning CPU
/// time against layers and devices. Ratios are baseline ÷ planner in simulated step time (≥ 1: the planner is no slower),
/// all measured in the same run.</summary>
internal static class ScaleTables
{
    /// <summary>The RaNNC paper's enlarged BERT grid (hidden 1024/1536/2048 × 24…256 layers, sequence 512) on 4 nodes ×
    /// 8 V100-32GB, batch 256.</summary>
    public static IEnumerable<(string Name, SyntheticModel Model, Cluster Cluster, PlanningOptions Options)> Paper()
    {
        foreach (int hidden in new[] { 1024, 1536, 2048 })
        {
            foreach (int layers in new[] { 24, 48, 96, 144, 192, 256 })
            {
                yield return ($"h{hidden} × {layers}", SyntheticModels.BertLike(layers, hidden, deviceFlopsPerSecond: 30e12),
                    Cluster.Typical(4, 8, 32 * Scenarios.Gib), new PlanningOptions(256));
            }
        }
    }

    /// <summary>100B (h 8192 × 128 layers) and 206B (h 8192 × 256 layers), batch 8192.</summary>
    public static IEnumerable<(string Name, SyntheticModel Model, Cluster Cluster, PlanningOptions Options)> Large()
    {
        SyntheticModel b100 = SyntheticModels.BertLike(128, 8192);
        yield return ("100B on 1024 × 80 GiB", b100, Cluster.Typical(128, 8, 80 * Scenarios.Gib), new PlanningOptions(8192));
        yield return ("100B on 1024 × 32 GiB", b100, Cluster.Typical(128, 8, 32 * Scenarios.Gib), new PlanningOptions(8192));
        yield return ("206B on 1024 × 80 GiB", SyntheticModels.BertLike(256, 8192), Cluster.Typical(128, 8, 80 * Scenarios.Gib), new PlanningOptions(8192));
        yield return ("100B on 4096 × 80 GiB", b100, Cluster.Typical(512, 8, 80 * Scenarios.Gib), new PlanningOptions(8192));
    }

    public static void PrintComparison(TextWriter output, string title, IEnumerable<(string Name, SyntheticModel Model, Cluster Cluster, PlanningOptions Options)> cases)
    {
        output.WriteLine($"### {title}");
        output.WriteLine();
        output.WriteLine("| config | plan CPU | plan: stages × [replicas], M, schedule | planner sim | uniform ÷ planner | parameters ÷ planner | data-parallel ÷ planner |");
        output.WriteLine("|---|---:|---|---:|---:|---:|---:|");
        foreach ((string name, SyntheticModel model, Cluster cluster, PlanningOptions options) in cases)
        {
            (PartitionPlan? plan, double cpu, string? error) = Time(model.Graph, model.Costs, cluster, options);
            string Ratio(BaselineSplit split)
            {
                double baseline = BaselineRuns.Best(model.Graph, model.Costs, cluster, options, split).Simulated;
                return double.IsInfinity(baseline) ? "infeasible" : plan is null ? "planner infeasible" : $"{baseline / plan.PredictedStepSeconds:0.000}";
            }

            output.WriteLine(
                $"| {name} | {cpu:0.00} s | {Describe(plan, error)} | {(plan is null ? "–" : $"{plan.PredictedStepSeconds * 1e3:0.#} ms")} | "
                + $"{Ratio(BaselineSplit.Uniform)} | {Ratio(BaselineSplit.Parameters)} | {Ratio(BaselineSplit.DataParallel)} |");
            output.Flush();
        }

        output.WriteLine();
    }

    public static void PrintGrowth(TextWriter output)
    {
        output.WriteLine("### Planning CPU time vs layers and devices (h 8192, batch 8 per device, 80 GiB)");
        output.WriteLine();
        output.WriteLine("| layers | devices | CPU | plan |");
        output.WriteLine("|---:|---:|---:|---|");
        foreach ((int layers, int devices) in new[] { (32, 1024), (64, 1024), (128, 1024), (256, 1024), (128, 256), (128, 4096) })
        {
            SyntheticModel model = SyntheticModels.BertLike(layers, 8192);
            (PartitionPlan? plan, double cpu, string? error) = Time(
                model.Graph, model.Costs, Cluster.Typical(devices / 8, 8, 80 * Scenarios.Gib), new PlanningOptions(8 * devices));
            output.WriteLine($"| {layers} | {devices} | {cpu:0.00} s | {Describe(plan, error)} |");
            output.Flush();
        }

        output.WriteLine();
    }

    private static (PartitionPlan? Plan, double CpuSeconds, string? Error) Time(Graph graph, CostTable costs, Cluster cluster, PlanningOptions options)
    {
        using Process process = Process.GetCurrentProcess();
        TimeSpan before = process.TotalProcessorTime;
        try
        {
            return (Planner.Plan(graph, costs, cluster, options), Cpu(process, before), null);
        }
        catch (NoFeasiblePlanException e)
        {
            return (null, Cpu(process, before), "infeasible: " + e.Message[..Math.Min(e.Message.Length, 120)] + "…");
        }
    }

    private static double Cpu(Process process, TimeSpan before)
    {
        process.Refresh();
        return (process.TotalProcessorTime - before).TotalSeconds;
    }

    private static string Describe(PartitionPlan? plan, string? error) =>
        plan is null
            ? error ?? "–"
            : $"{plan.Stages.Count} × [{string.Join(",", plan.Stages.Select(s => s.ReplicaRanks.Count).Distinct())}], M={plan.MicroBatchCount}, {plan.Schedule}"
              + (plan.Stages.Any(s => s.Recompute) ? $", recompute {plan.Stages.Count(s => s.Recompute)}/{plan.Stages.Count}" : "");
}
