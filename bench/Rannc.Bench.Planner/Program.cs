using System.Diagnostics;
using System.Globalization;
using BenchmarkDotNet.Running;
using Rannc.Bench.Planning;

// Planner benchmarks.
//   dotnet run -c Release --project bench/Rannc.Bench.Planner -- tables   planning-time and plan-quality tables (Stopwatch)
//   dotnet run -c Release --project bench/Rannc.Bench.Planner -- plan 96 1024 80   one planning run with its plan
//   dotnet run -c Release --project bench/Rannc.Bench.Planner -- quality  the plan-quality table alone
//   dotnet run -c Release --project bench/Rannc.Bench.Planner -- zb       zero bubble vs 1F1B, simulated (issue #12)
//   dotnet run -c Release --project bench/Rannc.Bench.Planner -- scale [paper | large | growth | objective]   issue #12's tables
//   dotnet run -c Release --project bench/Rannc.Bench.Planner -- bdn      BenchmarkDotNet short run of the headline case
CultureInfo.DefaultThreadCurrentCulture = CultureInfo.InvariantCulture;
CultureInfo.CurrentCulture = CultureInfo.InvariantCulture;
string mode = args.Length > 0 ? args[0] : "tables";
if (mode == "bdn")
{
    BenchmarkSwitcher.FromAssembly(typeof(PlanningBenchmarks).Assembly).Run(args[1..]);
    return 0;
}

if (mode == "plan" && args.Length == 4)
{
    // One planning run: plan <layers> <devices> <memory GiB>
    Tables.PrintOne(Console.Out, int.Parse(args[1], CultureInfo.InvariantCulture), int.Parse(args[2], CultureInfo.InvariantCulture),
        int.Parse(args[3], CultureInfo.InvariantCulture));
    return 0;
}

if (mode == "probe")
{
    // probe <layers> <devices> <memory GiB> <batch> <maxBlocks> <beam> [refinement blocks]: one warm planning run with these knobs
    int[] a = args[1..].Select(x => int.Parse(x, CultureInfo.InvariantCulture)).ToArray();
    var model = Rannc.Partitioner.SyntheticModels.BertLike(a[0]);
    var cluster = Rannc.Partitioner.Cluster.Typical(Math.Max(1, a[1] / 8), Math.Min(8, a[1]), a[2] * Scenarios.Gib);
    var options = new Rannc.Partitioner.PlanningOptions(a[3]) { MaxBlocks = a[4], SearchBeamWidth = a[5], RefinementBlocks = a.Length > 6 ? a[6] : 128 };
    Rannc.Partitioner.Planner.Plan(model.Graph, model.Costs, cluster, options);
    var watch = Stopwatch.StartNew();
    var plan = Rannc.Partitioner.Planner.Plan(model.Graph, model.Costs, cluster, options);
    Console.WriteLine($"{watch.Elapsed.TotalSeconds:0.00} s J={plan.ObjectiveSeconds * 1e3:0.0} sim={plan.PredictedStepSeconds * 1e3:0.0} S={plan.Stages.Count} r=[{string.Join(",", plan.Stages.Select(s => s.ReplicaRanks.Count))}] M={plan.MicroBatchCount} {plan.Schedule} exhaustive={plan.SearchWasExhaustive}");
    return 0;
}

if (mode == "scale")
{
    // Issue #12: the paper table, the 100B table and the growth table (CPU time of one core)
    if (OperatingSystem.IsLinux() || OperatingSystem.IsWindows())
    {
        Process.GetCurrentProcess().ProcessorAffinity = 1;
    }

    string only = args.Length > 1 ? args[1] : "all";
    ScaleTables.PrintComparison(Console.Out, "Warm-up", ScaleTables.Paper().Take(1));
    if (only is "all" or "paper")
    {
        ScaleTables.PrintComparison(Console.Out, "RaNNC paper configurations (4 × 8 devices, 32 GiB, batch 256)", ScaleTables.Paper());
    }

    if (only is "all" or "large")
    {
        ScaleTables.PrintComparison(Console.Out, "100B scale (h 8192, batch 8192)", ScaleTables.Large());
    }

    if (only is "all" or "growth")
    {
        ScaleTables.PrintGrowth(Console.Out);
    }

    if (only is "all" or "objective")
    {
        ObjectiveTable.Print(Console.Out, "RaNNC paper configurations", ScaleTables.Paper());
        ObjectiveTable.Print(Console.Out, "100B scale", ScaleTables.Large());
    }

    return 0;
}

if (mode == "zb")
{
    // Issue #12: simulated gain of the zero-bubble schedule over 1F1B, and the planner's choice with it allowed
    if (OperatingSystem.IsLinux() || OperatingSystem.IsWindows())
    {
        Process.GetCurrentProcess().ProcessorAffinity = 1;
    }

    ZeroBubbleTable.Print(Console.Out);
    return 0;
}

if (mode == "quality")
{
    Tables.PrintQuality(Console.Out); // the plan-quality table alone
    return 0;
}

if (mode != "tables")
{
    Console.Error.WriteLine("usage: Rannc.Bench.Planner [tables | quality | plan <layers> <devices> <memory GiB> | bdn [BenchmarkDotNet arguments]]");
    return 2;
}

if (OperatingSystem.IsLinux() || OperatingSystem.IsWindows())
{
    Process.GetCurrentProcess().ProcessorAffinity = 1; // the planner is single-threaded; measure it on one core
}

Tables.PrintPlanningTime(Console.Out);
Tables.PrintLargestWithin(Console.Out, seconds: 10);
Tables.PrintQuality(Console.Out);
return 0;
