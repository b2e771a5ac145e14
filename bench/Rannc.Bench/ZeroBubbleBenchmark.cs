using System.Diagnostics;
using Rannc.Communication;
using Rannc.Execution;
using Rannc.Samples;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Bench;

/// <summary>
/// Issue #12: measured step time of the zero-bubble schedule against 1F1B on the same 2-stage pipeline (BERT sample,
/// 2 in-process ranks with 1 torch thread each), rounds alternating between the two so that machine load hits them
/// alike; each round is the median of 5 steps after a warm-up step. Prints the measured ratio; the simulated ratio for
/// the same shapes is in the planner benchmark (<c>Rannc.Bench.Planner zb</c>), not here, because each run here
/// profiles (and so predicts) under a different machine load.
/// </summary>
public static class ZeroBubbleBenchmark
{
    private const int Rounds = 3;
    private const int StepsPerRound = 6;

    public static int Run(string[] args)
    {
        int layers = args.Length > 0 ? int.Parse(args[0]) : 4;
        int hidden = args.Length > 1 ? int.Parse(args[1]) : 256;
        int batch = args.Length > 2 ? int.Parse(args[2]) : 32;
        SampleTask task = SampleTasks.Bert(SampleTasks.BertConfig(layers, hidden), sequenceLength: 64, maskedPerSequence: 8);
        Console.WriteLine($"# Zero bubble vs 1F1B, BERT sample ({layers} layers, hidden {hidden}, batch {batch}, sequence 64, float32, Adam), " +
            $"2 ranks as 2 stages, 1 thread each, {Environment.ProcessorCount} cores, {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC");
        Console.WriteLine();
        Console.WriteLine("| M | 1F1B median step | zero-bubble median step | measured 1F1B ÷ zero bubble |");
        Console.WriteLine("|---:|---:|---:|---:|");
        foreach (int microBatches in new[] { 2, 4, 8 })
        {
            var oneFOneB = new List<double>();
            var zeroBubble = new List<double>();
            for (int round = 0; round < Rounds; round++)
            {
                var a = InProcessLauncher.Run(2, comm => Steps(task, batch, comm, "1f1b", microBatches), new InProcessOptions(TorchThreads: 1))[0];
                var z = InProcessLauncher.Run(2, comm => Steps(task, batch, comm, "zb", microBatches), new InProcessOptions(TorchThreads: 1))[0];
                oneFOneB.Add(a);
                zeroBubble.Add(z);
            }
            double am = Median(oneFOneB), zm = Median(zeroBubble);
            Console.WriteLine($"| {microBatches} | {am:0.0} ms | {zm:0.0} ms | {am / zm:0.000} |");
        }
        return 0;
    }

    private static double Steps(SampleTask task, int batch, ICommunicator comm, string schedule, int microBatches)
    {
        nn.Module model;
        lock (typeof(ZeroBubbleBenchmark))
        {
            torch.manual_seed(7);
            model = task.CreateModel();
        }
        var optimizer = torch.optim.Adam(model.parameters());
        var options = new RanncOptions
        {
            ForcedShape = (2, 1), MicroBatches = microBatches, Schedule = RanncOptions.ParseSchedule(schedule), PlanCacheDirectory = "", Log = _ => { },
        };
        using var rannc = new RanncModule(model, optimizer, comm, options);
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
        return Median(times.Skip(1).ToList());
    }

    private static double Median(List<double> values)
    {
        values.Sort();
        return values[values.Count / 2];
    }
}
