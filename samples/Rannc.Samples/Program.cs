using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Rannc;
using Rannc.Communication;
using Rannc.Samples;
using TorchSharp;
using static TorchSharp.torch;

// Trains a sample model with Rannc: `dotnet run --project samples/Rannc.Samples -- --model bert --ranks 4`, or one
// process per rank: `mpiexec.hydra -n 4 dotnet samples/Rannc.Samples/bin/Release/net10.0/linux-x64/Rannc.Samples.dll`.
RootCommand command = SampleOptions.CreateCommand();
ParseResult parsed = command.Parse(args);
if (parsed.Errors.Count > 0)
{
    foreach (var error in parsed.Errors) Console.Error.WriteLine(error.Message);
    Console.Error.WriteLine();
    command.Parse("--help").Invoke(new InvocationConfiguration { Output = Console.Error });
    return 2;
}
if (parsed.Action is not null) return parsed.Invoke(); // --help, --version
SampleOptions options = SampleOptions.From(parsed);
SampleTask task = options.Task();
object initLock = new();

if (options.DryRun) return DryRun();
if (options.RenderTrace is { } traceFile)
{
    string picture = Path.ChangeExtension(traceFile, ".svg");
    File.WriteAllText(picture, Rannc.Execution.Tracing.TracePicture.Svg(File.ReadAllText(traceFile)));
    Console.WriteLine($"wrote {picture}");
    return 0;
}

if (options.Reference)
{
    torch.set_num_threads(Environment.ProcessorCount);
    Report(TrainReference(), ranks: 1, stages: 1, replicas: [1], microBatches: 1, schedule: "none", planCache: "none");
    return 0;
}

try
{
    RankLauncher.Run(options.Ranks, comm =>
    {
        (double[] losses, double stepMs, PlanSummary plan) = TrainWithRannc(comm);
        if (comm.Rank == 0) Report((losses, stepMs), comm.Size, plan.Stages, plan.Replicas, plan.MicroBatches, plan.Schedule, plan.Cache);
    });
}
catch (RankFailedException e)
{
    Console.Error.WriteLine($"Training failed on rank {e.Rank}: {e.InnerException?.Message}");
    return 1;
}
return 0;

nn.Module CreateModel()
{
    // In-process ranks are threads of one process sharing torch's random generator: build one model at a time.
    lock (initLock)
    {
        torch.manual_seed(options.Seed);
        return task.CreateModel().to(options.DType);
    }
}

Tensor[] Batch(int step) =>
    task.CreateBatch(options.Batch, options.Seed * 1000 + step).Select(t => t.is_floating_point() ? t.to_type(options.DType) : t).ToArray();

(double[] Losses, double StepMs, PlanSummary Plan) TrainWithRannc(ICommunicator comm)
{
    // This rank's communicator comes from RankLauncher. With --optimizer-factory, Adam gets only this rank's parameters;
    // with --deferred, only rank 0 builds the whole model (seeded as plain code), the others only their stage's parameters.
    using var rannc = options.Deferred ? CreateDeferred()
        : options.OptimizerFactory
        ? new RanncModule(CreateModel(), parameters => torch.optim.Adam(parameters, lr: options.LearningRate), options.ToRanncOptions())
        : WithWholeOptimizer(CreateModel());
    (double[] losses, double stepMs) = Train(rannc.Optimizer, rannc.forward, print: comm.Rank == 0);
    if (options.Dot is { } dotFile && comm.Rank == 0 && rannc.WriteGraph(dotFile) is { } svg && !options.Json)
        Console.WriteLine($"wrote {dotFile} and {svg}");
    var plan = rannc.Plan!;
    return (losses, stepMs, new PlanSummary(plan.Stages.Count, plan.Stages.Select(s => s.ReplicaRanks.Count).ToArray(),
        plan.MicroBatchCount, plan.Schedule switch { Rannc.Partitioner.PipelineScheduleKind.GPipe => "gpipe", Rannc.Partitioner.PipelineScheduleKind.ZeroBubble => "zb", _ => "1f1b" }, rannc.PlanLoaded ? "hit" : "miss"));
}

RanncModule WithWholeOptimizer(nn.Module model) =>
    new(model, torch.optim.Adam(model.parameters(), lr: options.LearningRate), options.ToRanncOptions());

// In-process ranks share torch's random generator: the factory seeds (CreateModel), not the code before the call.
RanncModule CreateDeferred() =>
    new(CreateModel, parameters => torch.optim.Adam(parameters, lr: options.LearningRate), options.ToRanncOptions());

(double[] Losses, double StepMs) TrainReference()
{
    nn.Module model = CreateModel();
    var optimizer = torch.optim.Adam(model.parameters(), lr: options.LearningRate);
    return Train(optimizer, batch => SampleTask.Forward(model, batch), print: true);
}

/// <summary>--dry-run: plans the model for the cluster the options describe and prints the plan, without training.</summary>
int DryRun()
{
    int devices = options.Devices ?? options.Ranks;
    int perNode = Math.Min(options.DevicesPerNode, devices);
    if (devices % perNode != 0)
    {
        Console.Error.WriteLine($"--devices {devices} is not a multiple of --devices-per-node {perNode}.");
        Console.Error.WriteLine();
        command.Parse("--help").Invoke(new InvocationConfiguration { Output = Console.Error });
        return 2;
    }
    // One thread: the profile stands for one device, and small operations on a busy machine time more steadily so.
    torch.set_num_threads(1);
    var cluster = Rannc.Partitioner.Cluster.Typical(devices / perNode, perNode, options.MemoryBytes ?? 80L << 30);
    nn.Module model = CreateModel();
    // A few samples are enough to capture and profile: costs are fitted per sample and scaled to the cluster's slices.
    Tensor[] sample = task.CreateBatch(Math.Min(options.Batch, 8), options.Seed * 1000)
        .Select(t => t.is_floating_point() ? t.to_type(options.DType) : t).ToArray();
    DryRunPlan result;
    try
    {
        result = RanncPlanner.Plan(model, sample, cluster, options.ToRanncOptions(), globalBatchSize: options.Batch);
    }
    catch (Exception e) when (e is InvalidOperationException or ArgumentException)
    {
        Console.Error.WriteLine($"Dry run failed: {e.Message}");
        return 1;
    }
    Console.WriteLine(result.Summary);
    if (options.Json)
    {
        var plan = result.Plan;
        Console.WriteLine(JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["model"] = options.Model,
            ["devices"] = devices,
            ["devices_used"] = plan.RanksUsed,
            ["stages"] = plan.Stages.Count,
            ["replicas"] = plan.Stages.Select(s => s.ReplicaRanks.Count).ToArray(),
            ["micro_batches"] = plan.MicroBatchCount,
            ["schedule"] = plan.Schedule == Rannc.Partitioner.PipelineScheduleKind.GPipe ? "gpipe" : "1f1b",
            ["simulated_step_ms"] = Math.Round(result.Simulation.StepSeconds * 1e3, 6),
        }));
    }
    return 0;
}

/// <summary>The training loop both modes share: the loss comes from <paramref name="forward"/>.</summary>
(double[] Losses, double StepMs) Train(optim.Optimizer optimizer, Func<Tensor[], Tensor> forward, bool print)
{
    var losses = new List<double>();
    var times = new List<double>();
    for (int step = 0; step < options.Steps; step++)
    {
        using var scope = torch.NewDisposeScope();
        Tensor[] batch = Batch(step);
        var clock = Stopwatch.StartNew();
        optimizer.zero_grad();
        Tensor loss = forward(batch);
        loss.backward();
        optimizer.step();
        times.Add(clock.Elapsed.TotalMilliseconds);
        losses.Add(loss.to_type(ScalarType.Float64).item<double>());
        if (print && !options.Json) Console.WriteLine($"step {step + 1}/{options.Steps}: loss {losses[^1]:0.000000} ({times[^1]:0} ms)");
    }
    return (losses.ToArray(), MedianAfterFirst(times));
}

static double MedianAfterFirst(List<double> times)
{
    var measured = (times.Count > 1 ? times.Skip(1) : times).Order().ToList();
    return measured[measured.Count / 2];
}

void Report((double[] Losses, double StepMs) run, int ranks, int stages, int[] replicas, int microBatches, string schedule, string planCache)
{
    if (!options.Json)
    {
        Console.WriteLine($"{options.Model}: {ranks} rank(s), {stages} stage(s), replicas [{string.Join(", ", replicas)}], " +
            $"{microBatches} micro-batch(es), {schedule}; median step {run.StepMs:0.0} ms; plan cache {planCache}");
        return;
    }
    var json = new Dictionary<string, object>
    {
        ["model"] = options.Model,
        ["ranks"] = ranks,
        ["stages"] = stages,
        ["replicas"] = replicas,
        ["micro_batches"] = microBatches,
        ["schedule"] = schedule,
        ["losses"] = run.Losses,
        ["step_ms"] = Math.Round(run.StepMs, 3),
        ["plan_cache"] = planCache,
        ["dtype"] = options.DType == ScalarType.Float64 ? "float64" : "float32",
    };
    Console.Out.Flush();
    Console.WriteLine(JsonSerializer.Serialize(json));
}

/// <summary>What the JSON report says about the plan.</summary>
internal sealed record PlanSummary(int Stages, int[] Replicas, int MicroBatches, string Schedule, string Cache);
