using System.Diagnostics;
using Rannc.Partitioner;

namespace Rannc.Bench.Planning;

/// <summary>Stopwatch tables: wall time of <see cref="Planner.Plan"/> (one call after a warm-up, single thread)
/// and plan quality against the baselines.</summary>
internal static class Tables
{
    public static void PrintPlanningTime(TextWriter output)
    {
        Warm();
        output.WriteLine("## Planning time (BERT-like, hidden 1024, seq 512; one call each after a warm-up, pinned to one core; wall = Stopwatch, CPU = process processor time)");
        output.WriteLine();
        output.WriteLine("| layers | devices | memory/device | global batch | wall | CPU | plan: stages × [replicas], micro-batches, schedule | predicted step |");
        output.WriteLine("|---:|---:|---:|---:|---:|---:|---|---:|");
        foreach (int layers in new[] { 24, 96, 384 })
        {
            foreach (int devices in new[] { 8, 64, 1024 })
            {
                foreach (int memory in new[] { 16, 80 })
                {
                    var (graph, costs, cluster, options) = Scenarios.Bert(layers, devices, memory);
                    (PartitionPlan? plan, double seconds, string? error) = Time(graph, costs, cluster, options);
                    output.WriteLine(
                        $"| {layers} | {devices} | {memory} GiB | {options.GlobalBatchSize} | {Format(seconds)} | {Format(s_lastCpuSeconds)} | {Describe(plan, error)} | "
                        + $"{(plan is null ? "–" : $"{plan.PredictedStepSeconds * 1e3:0.#} ms")} |");
                }
            }
        }

        output.WriteLine();
    }

    public static void PrintOne(TextWriter output, int layers, int devices, int memoryGib)
    {
        var (graph, costs, cluster, options) = Scenarios.Bert(layers, devices, memoryGib);
        (_, double first, _) = Time(graph, costs, cluster, options);
        (PartitionPlan? plan, double seconds, string? error) = Time(graph, costs, cluster, options);
        output.WriteLine($"bert-{layers} on {devices} × {memoryGib} GiB, batch {options.GlobalBatchSize}: {Format(seconds)} wall, {Format(s_lastCpuSeconds)} CPU (first call {Format(first)})");
        output.WriteLine(Describe(plan, error));
        if (plan is not null)
        {
            output.WriteLine($"objective {Ms(plan.ObjectiveSeconds)}, simulated {Ms(plan.PredictedStepSeconds)}");
        }
    }

    public static void PrintLargestWithin(TextWriter output, double seconds)
    {
        output.WriteLine($"## Largest BERT-like model planned within {seconds} s (1024 devices, 80 GiB)");
        output.WriteLine();
        output.WriteLine("| layers | wall | CPU | plan |");
        output.WriteLine("|---:|---:|---:|---|");
        int layers = 384;
        while (true)
        {
            var (graph, costs, cluster, options) = Scenarios.Bert(layers, 1024, 80);
            (PartitionPlan? plan, double elapsed, string? error) = Time(graph, costs, cluster, options);
            output.WriteLine($"| {layers} | {Format(elapsed)} | {Format(s_lastCpuSeconds)} | {Describe(plan, error)} |");
            if (plan is null || s_lastCpuSeconds > seconds || layers >= 24576)
            {
                break;
            }

            layers *= 2;
        }

        output.WriteLine();
    }

    public static void PrintQuality(TextWriter output)
    {
        output.WriteLine("## Plan quality: predicted step time, ours vs DeepSpeed-style baselines (each with its best stage count, micro-batches, schedule)");
        output.WriteLine();
        output.WriteLine("Objective J = the search objective; simulated = event simulation of the plan. Ratio = baseline ÷ ours (> 1: ours is faster).");
        output.WriteLine();
        output.WriteLine("| graph | devices | memory | ours J | uniform J | parameters J | ours sim | uniform sim | parameters sim | uniform ÷ ours (sim) | parameters ÷ ours (sim) |");
        output.WriteLine("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        foreach ((string name, SyntheticModel model, int devices, int memoryGib, int batch) in QualityScenarios())
        {
            Cluster cluster = Cluster.Typical(Math.Max(1, devices / 8), Math.Min(8, devices), memoryGib * Scenarios.Gib);
            var options = new PlanningOptions(batch);
            string ours = "–", oursSim = "–";
            double oursSimSeconds = double.NaN;
            try
            {
                PartitionPlan plan = Planner.Plan(model.Graph, model.Costs, cluster, options);
                ours = Ms(plan.ObjectiveSeconds);
                oursSim = Ms(plan.PredictedStepSeconds);
                oursSimSeconds = plan.PredictedStepSeconds;
            }
            catch (NoFeasiblePlanException)
            {
                ours = "infeasible";
            }

            BaselineRuns.Result uniform = BaselineRuns.Best(model.Graph, model.Costs, cluster, options, BaselineSplit.Uniform);
            BaselineRuns.Result parameters = BaselineRuns.Best(model.Graph, model.Costs, cluster, options, BaselineSplit.Parameters);
            output.WriteLine(
                $"| {name} | {devices} | {memoryGib} GiB | {ours} | {Ms(uniform.Objective)} | {Ms(parameters.Objective)} | {oursSim} | "
                + $"{Ms(uniform.Simulated)} | {Ms(parameters.Simulated)} | {Ratio(uniform.Simulated, oursSimSeconds)} | "
                + $"{Ratio(parameters.Simulated, oursSimSeconds)} |");
        }

        output.WriteLine();
    }

    private static IEnumerable<(string Name, SyntheticModel Model, int Devices, int MemoryGib, int Batch)> QualityScenarios()
    {
        yield return ("bert-24", SyntheticModels.BertLike(24), 8, 16, 64);
        yield return ("bert-24", SyntheticModels.BertLike(24), 64, 16, 512);
        yield return ("bert-96", SyntheticModels.BertLike(96), 64, 32, 512);
        yield return ("bert-96", SyntheticModels.BertLike(96), 1024, 80, 8192);
        yield return ("bert-24, vocab 250k (huge embedding + LM head)", SyntheticModels.BertLike(24, vocabulary: 250_000), 8, 32, 64);
        yield return ("bert-48, hidden 2048, vocab 250k", SyntheticModels.BertLike(48, hidden: 2048, vocabulary: 250_000), 64, 40, 512);
        yield return ("resnet-50-like ×4 width", SyntheticModels.ResNetLike(widthFactor: 4), 8, 16, 256);
        yield return ("resnet-152-like ×8 width", SyntheticModels.ResNetLike([3, 8, 36, 3], widthFactor: 8), 32, 32, 512);
    }

    /// <summary>CPU seconds of the last <see cref="Time"/> call (the process's processor time: the planner is
    /// single-threaded, so on a busy machine this is closer to the time on an idle core than the wall clock).</summary>
    private static double s_lastCpuSeconds;

    private static (PartitionPlan? Plan, double Seconds, string? Error) Time(Graph graph, CostTable costs, Cluster cluster, PlanningOptions options)
    {
        using Process process = Process.GetCurrentProcess();
        TimeSpan cpuBefore = process.TotalProcessorTime;
        var watch = Stopwatch.StartNew();
        try
        {
            PartitionPlan plan = Planner.Plan(graph, costs, cluster, options);
            return (plan, watch.Elapsed.TotalSeconds, null);
        }
        catch (NoFeasiblePlanException e)
        {
            return (null, watch.Elapsed.TotalSeconds, "infeasible: " + e.Message[..Math.Min(e.Message.Length, 150)] + "…");
        }
        finally
        {
            process.Refresh();
            s_lastCpuSeconds = (process.TotalProcessorTime - cpuBefore).TotalSeconds;
        }
    }

    private static void Warm()
    {
        var (graph, costs, cluster, options) = Scenarios.Bert(4, 8, 16);
        for (int i = 0; i < 3; i++)
        {
            Planner.Plan(graph, costs, cluster, options);
        }
    }

    private static string Describe(PartitionPlan? plan, string? error) =>
        plan is null
            ? error ?? "–"
            : $"{plan.Stages.Count} × [{Compress(plan.Stages.Select(s => s.ReplicaRanks.Count))}], M={plan.MicroBatchCount}, {plan.Schedule}"
              + (plan.Stages.Any(s => s.Recompute) ? $", recompute {plan.Stages.Count(s => s.Recompute)}/{plan.Stages.Count}" : "");

    private static string Compress(IEnumerable<int> values)
    {
        var runs = new List<string>();
        foreach (var group in values.Select((v, i) => (v, i)).GroupBy(x => x.v).OrderBy(g => g.First().i))
        {
            int count = group.Count();
            runs.Add(count == 1 ? $"{group.Key}" : $"{group.Key}×{count}");
        }

        return string.Join(",", runs);
    }

    private static string Format(double seconds) => seconds < 1 ? $"{seconds * 1e3:0.#} ms" : $"{seconds:0.##} s";

    private static string Ms(double seconds) => double.IsNaN(seconds) || double.IsInfinity(seconds) ? "–" : $"{seconds * 1e3:0.#} ms";

    private static string Ratio(double baseline, double ours) =>
        double.IsNaN(ours) || double.IsNaN(baseline) || double.IsInfinity(baseline) ? "–" : $"{baseline / ours:0.00}";
}
