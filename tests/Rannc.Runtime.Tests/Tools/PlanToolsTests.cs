using System.Diagnostics;
using System.Text.Json;
using Rannc.Communication;
using Rannc.Execution;
using Rannc.Execution.Profiling;
using Rannc.Partitioner;
using Rannc.Samples;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Tests.Tools;

/// <summary>The dry run for a cluster this machine is not, the plan summary table and the profiling progress lines.</summary>
public sealed class PlanToolsTests
{
    private static readonly SampleTask Task = SampleTasks.Mlp(inputSize: 6, hiddenSize: 10, hiddenLayers: 4, classes: 3);

    [Fact]
    public void DryRun_For1024Devices_PlansForThatClusterWithoutTouchingTheModel()
    {
        nn.Module model = SeededModels.Create(Task.CreateModel, 5);
        Tensor[] sample = Task.CreateBatch(8, 0).Select(t => t.is_floating_point() ? t.to_type(ScalarType.Float64) : t).ToArray();
        var before = model.state_dict().ToDictionary(p => p.Key, p => p.Value.clone());
        Tensor randomBefore = torch.random.get_rng_state();
        var cluster = Cluster.Typical(nodes: 128, devicesPerNode: 8, memoryBytesPerDevice: 80L << 30);
        var lines = new List<string>();

        DryRunPlan result = RanncPlanner.Plan(model, sample, cluster, new RanncOptions { ProfileRepeats = 1, Log = lines.Add }, globalBatchSize: 4096);

        Assert.Equal(1024, result.Plan.DeviceCount);
        Assert.Equal(4096, result.Plan.GlobalBatchSize);
        Assert.InRange(result.Plan.RanksUsed, 1, 1024);
        Assert.Equal(result.Plan.PredictedStepSeconds, result.Simulation.StepSeconds);
        Assert.Contains("of 1024 device(s) (128 node(s) × 8, 80.00 GiB each)", result.Summary);
        AssertTable(result.Summary, result.Plan);
        Assert.Contains(lines, l => l.StartsWith("Rannc: profiling: ", StringComparison.Ordinal));
        // Nothing trained: parameters, buffers and the random state are as they were.
        foreach ((string name, Tensor value) in model.state_dict()) Assert.True(before[name].eq(value).all().item<bool>(), name);
        Assert.True(randomBefore.eq(torch.random.get_rng_state()).all().item<bool>());
    }

    [Fact]
    public void PlanSummary_OfATrainingRun_IsATableWithOneRowPerStage()
    {
        var lines = new List<string>();
        var options = new RanncOptions { ForcedReplicas = [1, 2], MicroBatches = 2, PlanCacheDirectory = "", ProfileRepeats = 1, Log = l => { lock (lines) lines.Add(l); } };
        PartitionPlan? plan = null;
        RankLauncher.Run(3, comm =>
        {
            torch.set_num_threads(1);
            nn.Module model = SeededModels.Create(Task.CreateModel, 5);
            var optimizer = torch.optim.SGD(model.parameters(), 0.1);
            using var rannc = new RanncModule(model, optimizer, options);
            Tensor[] batch = Task.CreateBatch(8, 0).Select(t => t.is_floating_point() ? t.to_type(ScalarType.Float64) : t).ToArray();
            rannc.forward(batch).backward();
            if (comm.Rank == 0) plan = rannc.Plan;
        }, new InProcessOptions(Timeout: TimeSpan.FromMinutes(2)));

        string summary = Assert.Single(lines, l => l.StartsWith("Rannc plan (new", StringComparison.Ordinal));
        Assert.NotNull(plan);
        AssertTable(summary, plan);
        Assert.Contains("2 micro-batch(es) of 4 sample(s)", summary);
        // Progress lines come from rank 0 only, and end with the total.
        Assert.Single(lines, l => l.StartsWith("Rannc: profiling: ", StringComparison.Ordinal) && l.Contains($"nodes", StringComparison.Ordinal)
            && l.Split(' ')[2].Split('/') is [var done, var total] && done == total);
    }

    [Fact]
    public void ProfilingProgress_PrintsAtMostEveryTwoSeconds_AndAlwaysTheFinalLine()
    {
        var lines = new List<string>();
        TimeSpan now = TimeSpan.Zero;
        var progress = new ProfilingProgress(10, lines.Add, () => now);
        for (int node = 1; node <= 10; node++)
        {
            now = TimeSpan.FromSeconds(0.9 * node); // 0.9 s per node: lines after nodes 3 (2.7 s), 6 (5.4 s), 9 (8.1 s), none for the last
            progress.NodeDone();
        }
        progress.Finish();

        Assert.Equal(["Rannc: profiling: 3/10 nodes, 2.7 s", "Rannc: profiling: 6/10 nodes, 5.4 s", "Rannc: profiling: 9/10 nodes, 8.1 s",
            "Rannc: profiling: 10/10 nodes, 9.0 s"], lines);
    }

    [Fact]
    public void SampleDryRun_1024Devices_PrintsThePlanTableAndTheSimulatedStep()
    {
        (int exitCode, string stdout, string stderr) = RunSample("--dry-run", "--devices", "1024", "--devices-per-node", "8", "--memory", "80GiB",
            "--model", "mlp", "--layers", "2", "--hidden", "16", "--batch", "4096", "--json");
        Assert.True(exitCode == 0, $"exit {exitCode}:\n{stdout}\n{stderr}");
        string[] lines = stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.StartsWith("Rannc dry run", lines[0]);
        Assert.Contains("of 1024 device(s) (128 node(s) × 8, 80.00 GiB each)", lines[0]);
        Assert.Contains(lines, l => l.Split('|').Select(c => c.Trim()).Take(3).SequenceEqual(["stage", "nodes", "first … last module"]));
        Assert.Contains(lines, l => l.Contains("simulated step", StringComparison.Ordinal));
        Assert.DoesNotContain("step 1/", stdout); // nothing trained
        using JsonDocument json = JsonDocument.Parse(lines[^1]);
        Assert.Equal(1024, json.RootElement.GetProperty("devices").GetInt32());
        int used = json.RootElement.GetProperty("replicas").EnumerateArray().Sum(r => r.GetInt32());
        Assert.Equal(json.RootElement.GetProperty("devices_used").GetInt32(), used);
        Assert.True(json.RootElement.GetProperty("simulated_step_ms").GetDouble() > 0);
    }

    internal static (int ExitCode, string Output, string Errors) RunSample(params string[] args)
    {
        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        start.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "Rannc.Samples.dll"));
        foreach (string arg in args) start.ArgumentList.Add(arg);
        start.Environment["RANNC_PROFILE_REPEATS"] = "1";
        using Process process = Process.Start(start)!;
        System.Threading.Tasks.Task<string> output = process.StandardOutput.ReadToEndAsync();
        System.Threading.Tasks.Task<string> errors = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(TimeSpan.FromMinutes(3)))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"the sample did not finish: {string.Join(" ", args)}");
        }
        return (process.ExitCode, output.Result, errors.Result);
    }

    /// <summary>The table's header and one row per stage, each with the stage's node count, replicas and ranks.</summary>
    private static void AssertTable(string summary, PartitionPlan plan)
    {
        string[] lines = summary.Split('\n');
        string[] headings = ["stage", "nodes", "first … last module", "replicas", "ranks", "parameters", "peak memory", "compute/step", "recompute"];
        int header = Array.FindIndex(lines, l => l.Split('|').Select(c => c.Trim()).SequenceEqual(headings));
        Assert.True(header > 0, summary);
        for (int s = 0; s < plan.Stages.Count; s++)
        {
            string[] cells = lines[header + 2 + s].Split('|').Select(c => c.Trim()).ToArray();
            StagePlan stage = plan.Stages[s];
            Assert.Equal(s.ToString(), cells[0]);
            Assert.Equal(stage.NodeIds.Count.ToString(), cells[1]);
            Assert.Equal(stage.ReplicaRanks.Count.ToString(), cells[3]);
            Assert.Contains(stage.ReplicaRanks[0].ToString(), cells[4]);
            Assert.EndsWith(" ms", cells[7]);
        }
        Assert.Contains($"{plan.MicroBatchCount} micro-batch(es)", lines[header + 2 + plan.Stages.Count]);
        Assert.Contains("simulated step", lines[header + 2 + plan.Stages.Count]);
    }
}
