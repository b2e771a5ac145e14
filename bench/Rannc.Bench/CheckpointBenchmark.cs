using System.Diagnostics;
using Rannc.Communication;
using Rannc.Execution;
using Rannc.Samples;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Rannc.Bench;

/// <summary>
/// Checkpoint save and load of the BERT sample on 4 ranks (2 stages × 2 replicas), against the gather-to-rank-0 save
/// Rannc used before (every parameter and optimizer state brought to rank 0, one <c>module.save</c>), measured in the
/// same run: time, the bytes rank 0 writes and, when each rank is a process (<c>mpiexec -n 4</c>), rank 0's peak
/// memory during each operation above what it held before (<see cref="PeakMemory"/>). Without mpiexec the ranks are
/// threads of one process and the memory column is the whole process's.
/// </summary>
public static class CheckpointBenchmark
{
    private const int Rounds = 3;

    private sealed record Measured(double Milliseconds, long PeakBytes);

    public static int Run(string[] args)
    {
        int layers = args.Length > 0 ? int.Parse(args[0]) : 8;
        int hidden = args.Length > 1 ? int.Parse(args[1]) : 256;
        SampleTask task = SampleTasks.Bert(SampleTasks.BertConfig(layers, hidden), sequenceLength: 32, maskedPerSequence: 4);
        bool processes = MpiEnvironment.IsLaunchedByMpi;
        RankLauncher.Run(4, comm =>
        {
            if (comm.Size != 4) throw new InvalidOperationException($"the benchmark needs 4 ranks, not {comm.Size}");
            // Rank 0 makes the folder; under mpiexec the others learn its name.
            string root = comm.AllGather(comm.Rank == 0 ? Directory.CreateTempSubdirectory("rannc-bench-checkpoint-").FullName : "")[0];
            try
            {
                if (comm.Rank == 0)
                {
                    Console.WriteLine($"# Checkpoints, BERT sample ({layers} layers, hidden {hidden}, Adam), 4 {(processes ? "MPI processes" : "in-process ranks")} as 2×2, {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC");
                }
                Measure(comm, task, root, processes);
            }
            finally
            {
                comm.Barrier();
                if (comm.Rank == 0) Directory.Delete(root, recursive: true);
            }
        }, new InProcessOptions(Timeout: TimeSpan.FromMinutes(10)));
        return 0;
    }

    private static void Measure(ICommunicator comm, SampleTask task, string root, bool processes)
    {
        nn.Module model;
        lock (typeof(CheckpointBenchmark))
        {
            torch.manual_seed(7);
            model = task.CreateModel();
        }
        var optimizer = torch.optim.Adam(model.parameters());
        using var rannc = new RanncModule(model, optimizer, comm, new RanncOptions { ForcedShape = (2, 2), PlanCacheDirectory = "", Log = _ => { } });
        optimizer.zero_grad();
        rannc.forward(task.CreateBatch(8, 0)).backward();
        optimizer.step();
        var sharded = new List<Measured>();
        var gathered = new List<Measured>();
        var loads = new List<Measured>();
        long shardBytes = 0, gatherBytes = 0;
        for (int round = 0; round < Rounds; round++)
        {
            sharded.Add(Time(comm, () =>
            {
                string folder = rannc.SaveCheckpoint(Path.Combine(root, "sharded"));
                shardBytes = new FileInfo(Path.Combine(folder, "rank-0.bin")).Length;
            }));
            gathered.Add(Time(comm, () =>
            {
                // The former save: everything to rank 0, which writes one file.
                Dictionary<string, Tensor> state = rannc.StateDict();
                rannc.GatherOptimizerState();
                if (comm.Rank == 0)
                {
                    string file = Path.Combine(root, "gathered.bin");
                    using (var stream = File.Create(file))
                    using (var writer = new BinaryWriter(stream))
                    {
                        foreach ((string name, Tensor tensor) in state)
                        {
                            writer.Write(name);
                            tensor.Save(writer);
                        }
                    }
                    ((OptimizerHelper)optimizer).save_state_dict(Path.Combine(root, "gathered-optimizer.bin"));
                    gatherBytes = new FileInfo(file).Length + new FileInfo(Path.Combine(root, "gathered-optimizer.bin")).Length;
                }
                foreach (Tensor tensor in state.Values) tensor.Dispose();
            }));
            loads.Add(Time(comm, () => rannc.LoadCheckpoint(Path.Combine(root, "sharded"))));
        }
        if (comm.Rank != 0) return;
        Measured before = Median(gathered), save = Median(sharded), load = Median(loads);
        string memory = processes ? "rank 0 peak memory above its start" : "peak memory of the whole process (4 ranks)";
        Console.WriteLine();
        Console.WriteLine($"| what | median time | ratio | {memory} | bytes rank 0 writes |");
        Console.WriteLine("|---|---|---|---|---|");
        Console.WriteLine($"| gather to rank 0, one file (before) | {before.Milliseconds:0} ms | 1.00 | {MiB(before.PeakBytes)} | {MiB(gatherBytes)} |");
        Console.WriteLine($"| sharded save: a file per rank + manifest, atomic rename | {save.Milliseconds:0} ms | {save.Milliseconds / before.Milliseconds:0.00} | {MiB(save.PeakBytes)} | {MiB(shardBytes)} |");
        Console.WriteLine($"| load (each rank reads the items it holds, checksums checked) | {load.Milliseconds:0} ms | {load.Milliseconds / before.Milliseconds:0.00} | {MiB(load.PeakBytes)} | |");
    }

    /// <summary>Times <paramref name="action"/> between barriers; the peak memory is this rank's process's.</summary>
    private static Measured Time(ICommunicator comm, Action action)
    {
        comm.Barrier();
        var clock = Stopwatch.StartNew();
        long peak = PeakMemory.Above(() =>
        {
            action();
            comm.Barrier();
        });
        return new Measured(clock.Elapsed.TotalMilliseconds, peak);
    }

    private static string MiB(long bytes) => $"{bytes / 1048576.0:0.0} MiB";

    /// <summary>The median by time; its memory is the largest of the rounds (the peak is what matters).</summary>
    private static Measured Median(List<Measured> values)
    {
        var byTime = values.OrderBy(v => v.Milliseconds).ToList();
        return byTime[byTime.Count / 2] with { PeakBytes = values.Max(v => v.PeakBytes) };
    }
}
