using System.Diagnostics;
using Rannc.Communication;
using Rannc.Execution;
using Rannc.Samples;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Bench;

/// <summary>
/// Median training-step time of the BERT sample: plain TorchSharp (the reference), Rannc on 1 rank, and Rannc on 2
/// in-process ranks as 2 pipeline stages. Rounds alternate between the three so that machine load hits them alike.
/// Prints Rannc's overhead on 1 rank and the 2-stage speed-up next to the ideal the schedule's bubble allows.
/// </summary>
public static class TrainingStepBenchmark
{
    private const int Rounds = 3;
    private const int StepsPerRound = 6;

    public static int Run(string[] args)
    {
        int layers = args.Length > 0 ? int.Parse(args[0]) : 4;
        int hidden = args.Length > 1 ? int.Parse(args[1]) : 256;
        int batch = args.Length > 2 ? int.Parse(args[2]) : 32;
        SampleTask task = SampleTasks.Bert(SampleTasks.BertConfig(layers, hidden), sequenceLength: 64, maskedPerSequence: 8);
        Console.WriteLine($"# Training step, BERT sample ({layers} layers, hidden {hidden}, batch {batch}, sequence 64, float32), " +
            $"{Environment.ProcessorCount} cores, {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC");
        var reference = new List<double>();
        var oneRank = new List<double>();
        var oneRankAuto = new List<double>();
        var twoStages = new List<double>();
        int microBatches = 0, autoMicroBatches = 0;
        var allThreads = new InProcessOptions(TorchThreads: Environment.ProcessorCount);
        for (int round = 0; round < Rounds; round++)
        {
            torch.set_num_threads(Environment.ProcessorCount);
            reference.Add(Reference(task, batch));
            oneRank.Add(InProcessLauncher.Run(1, comm => WithRannc(task, batch, comm, (1, 1), microBatches: 1).StepMs, allThreads)[0]);
            var auto = InProcessLauncher.Run(1, comm => WithRannc(task, batch, comm, (1, 1), microBatches: null), allThreads)[0];
            oneRankAuto.Add(auto.StepMs);
            autoMicroBatches = auto.MicroBatches;
            var two = InProcessLauncher.Run(2, comm => WithRannc(task, batch, comm, (2, 1), microBatches: null), new InProcessOptions(TorchThreads: 1))[0];
            twoStages.Add(two.StepMs);
            microBatches = two.MicroBatches;
        }
        double referenceMs = Median(reference), oneMs = Median(oneRank), autoMs = Median(oneRankAuto), twoMs = Median(twoStages);
        // GPipe/1F1B with S stages and M micro-batches keep each stage busy M of M+S-1 slots.
        double idealSpeedUp = 2.0 * microBatches / (microBatches + 1);
        Console.WriteLine();
        Console.WriteLine("| run | median step | ratio |");
        Console.WriteLine("|---|---|---|");
        Console.WriteLine($"| plain TorchSharp (reference), {Environment.ProcessorCount} threads | {referenceMs:0.0} ms | 1.00 |");
        Console.WriteLine($"| Rannc, 1 rank (1×1), 1 micro-batch, {Environment.ProcessorCount} threads | {oneMs:0.0} ms | {oneMs / referenceMs:0.000} (overhead {(oneMs / referenceMs - 1) * 100:0.0} %) |");
        Console.WriteLine($"| Rannc, 1 rank (1×1), {autoMicroBatches} micro-batch(es) chosen by the planner | {autoMs:0.0} ms | {autoMs / referenceMs:0.000} |");
        Console.WriteLine($"| Rannc, 2 ranks as 2 stages (2×1), {microBatches} micro-batches, 1 thread each | {twoMs:0.0} ms | speed-up over 1 rank (planner's micro-batches) {autoMs / twoMs:0.00}; ideal with this bubble {idealSpeedUp:0.00} |");
        return 0;
    }

    private static double Reference(SampleTask task, int batch)
    {
        torch.manual_seed(7);
        nn.Module model = task.CreateModel();
        var optimizer = torch.optim.Adam(model.parameters());
        var times = new List<double>();
        for (int step = 0; step < StepsPerRound; step++)
        {
            using var scope = torch.NewDisposeScope();
            Tensor[] data = task.CreateBatch(batch, step);
            var clock = Stopwatch.StartNew();
            optimizer.zero_grad();
            SampleTask.Forward(model, data).backward();
            optimizer.step();
            times.Add(clock.Elapsed.TotalMilliseconds);
        }
        return Median(times.Skip(1).ToList());
    }

    private static (double StepMs, int MicroBatches) WithRannc(SampleTask task, int batch, ICommunicator comm, (int, int) shape, int? microBatches)
    {
        nn.Module model;
        lock (typeof(TrainingStepBenchmark))
        {
            torch.manual_seed(7);
            model = task.CreateModel();
        }
        var optimizer = torch.optim.Adam(model.parameters());
        using var rannc = new RanncModule(model, optimizer, comm, new RanncOptions { ForcedShape = shape, MicroBatches = microBatches, PlanCacheDirectory = "", Log = _ => { } });
        var times = new List<double>();
        for (int step = 0; step < StepsPerRound; step++)
        {
            using var scope = torch.NewDisposeScope();
            Tensor[] data = task.CreateBatch(batch, step);
            comm.Barrier();
            var clock = Stopwatch.StartNew();
            optimizer.zero_grad();
            rannc.forward(data).backward();
            optimizer.step();
            comm.Barrier();
            times.Add(clock.Elapsed.TotalMilliseconds);
        }
        return (Median(times.Skip(1).ToList()), rannc.Plan!.MicroBatchCount);
    }

    private static double Median(List<double> values)
    {
        values.Sort();
        return values[values.Count / 2];
    }
}
