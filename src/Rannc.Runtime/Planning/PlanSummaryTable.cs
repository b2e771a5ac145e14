using System.Globalization;
using System.Text;
using Rannc.Capture;
using Rannc.Partitioner;
using PlanningGraph = Rannc.Partitioner.Graph;

namespace Rannc.Planning;

/// <summary>
/// The plan summary rank 0 prints (and <see cref="RanncPlanner"/> returns): a heading, one table row per stage (nodes
/// and their first … last module, replicas and ranks, parameters, predicted peak memory, compute time per step,
/// recompute), then the schedule, the micro-batches and the simulated step.
/// </summary>
internal static class PlanSummaryTable
{
    private static readonly string[] Headings = ["stage", "nodes", "first … last module", "replicas", "ranks", "parameters", "peak memory", "compute/step", "recompute"];

    /// <param name="heading">The first line, e.g. <c>Rannc plan (new, ready in 1.2 s): 2 stage(s) on 4 rank(s)</c>.</param>
    /// <param name="simulation">The simulated step (null when the plan was loaded without a profile): gives the compute column.</param>
    public static string Format(string heading, PartitionPlan plan, CapturedGraph graph, PlanningGraph planningGraph, SimulationResult? simulation)
    {
        var rows = new List<string[]>();
        foreach (StagePlan stage in plan.Stages)
        {
            long parameterBytes = stage.NodeIds.SelectMany(n => planningGraph.Nodes[n].Parameters).Distinct().Sum(p => planningGraph.Parameters[p].Bytes);
            string compute = simulation is null ? "-" : Milliseconds(stage.ReplicaRanks.Average(r => simulation.ComputeSecondsPerRank[r]));
            rows.Add(
            [
                Number(stage.Index),
                Number(stage.NodeIds.Count),
                $"{ModuleOf(graph.Nodes[stage.NodeIds[0]])} … {ModuleOf(graph.Nodes[stage.NodeIds[^1]])}",
                Number(stage.ReplicaRanks.Count),
                Ranks(stage.ReplicaRanks),
                FormatBytes(parameterBytes),
                FormatBytes(stage.PeakMemoryBytes),
                compute,
                stage.Recompute ? "yes" : "no",
            ]);
        }
        var text = new StringBuilder();
        text.AppendLine(heading);
        AppendTable(text, rows);
        string step = Milliseconds(simulation?.StepSeconds ?? plan.PredictedStepSeconds);
        text.AppendLine(CultureInfo.InvariantCulture,
            $"  schedule {(plan.Schedule == PipelineScheduleKind.GPipe ? "GPipe" : "1F1B")}, {plan.MicroBatchCount} micro-batch(es) of {SizesOf(plan.MicroBatchSizes)} sample(s), " +
            $"global batch {plan.GlobalBatchSize}, simulated step {step}");
        if (OpaqueModules.Summary(graph) is { } opaque) text.AppendLine("  " + opaque);
        return text.ToString().TrimEnd();
    }

    /// <summary>Columns padded to their widest cell; numbers right-aligned.</summary>
    private static void AppendTable(StringBuilder text, List<string[]> rows)
    {
        int[] widths = Headings.Select((h, c) => Math.Max(h.Length, rows.Select(r => r[c].Length).DefaultIfEmpty(0).Max())).ToArray();
        bool[] numeric = [true, true, false, true, false, true, true, true, false];
        string Line(string[] cells) =>
            "  " + string.Join(" | ", cells.Select((cell, c) => numeric[c] ? cell.PadLeft(widths[c]) : cell.PadRight(widths[c]))).TrimEnd();
        text.AppendLine(Line(Headings));
        text.AppendLine("  " + string.Join("-+-", widths.Select(w => new string('-', w))));
        foreach (string[] row in rows) text.AppendLine(Line(row));
    }

    /// <summary>The module a node belongs to: its module path, or the model itself.</summary>
    private static string ModuleOf(CapturedNode node) => node.ModulePath.Length > 0 ? node.ModulePath : node.Name;

    /// <summary><c>0-3</c> for consecutive ranks, else the list.</summary>
    private static string Ranks(IReadOnlyList<int> ranks) =>
        ranks.Count > 1 && ranks[^1] - ranks[0] == ranks.Count - 1 ? $"{ranks[0]}-{ranks[^1]}" : string.Join(",", ranks);

    private static string SizesOf(IReadOnlyList<int> sizes) =>
        sizes.Distinct().Count() == 1 ? Number(sizes[0]) : $"{sizes.Min()}-{sizes.Max()}";

    private static string Number(int n) => n.ToString(CultureInfo.InvariantCulture);

    public static string Milliseconds(double seconds) => string.Create(CultureInfo.InvariantCulture, $"{seconds * 1e3:0.00} ms");

    public static string FormatBytes(long bytes) =>
        bytes >= 1L << 30 ? string.Create(CultureInfo.InvariantCulture, $"{bytes / (double)(1L << 30):0.00} GiB")
        : bytes >= 1L << 20 ? string.Create(CultureInfo.InvariantCulture, $"{bytes / (double)(1L << 20):0.0} MiB")
        : string.Create(CultureInfo.InvariantCulture, $"{bytes / 1024.0:0.0} KiB");
}
