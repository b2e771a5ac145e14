using System.Diagnostics;
using Rannc.Communication;
using Rannc.Execution;
using Rannc.Samples;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Rannc.Bench;

/// <summary>
/// Checkpoint save and load of the BERT sample on 4 in-process ranks (2 stages × 2 replicas), against the
/// gather-to-rank-0 save Rannc used before (every parameter and optimizer state brought to rank 0, one
/// <c>module.save</c>), measured in the same run. Also prints the bytes rank 0 writes (its share of the model) in both.
/// </summary>
public static class CheckpointBenchmark
{
    private const int Rounds = 3;

    public static int Run(string[] args)
    {
        int layers = args.Length > 0 ? int.Parse(args[0]) : 8;
        int hidden = args.Length > 1 ? int.Parse(args[1]) : 256;
        SampleTask task = SampleTasks.Bert(SampleTasks.BertConfig(layers, hidden), sequenceLength: 32, maskedPerSequence: 4);
        Console.WriteLine($"# Checkpoints, BERT sample ({layers} layers, hidden {hidden}, Adam), 4 in-process ranks as 2×2, {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC");
        string root = Directory.CreateTempSubdirectory("rannc-bench-checkpoint-").FullName;
        try
        {
            var results = InProcessLauncher.Run(4, comm =>
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
                var sharded = new List<double>();
                var gathered = new List<double>();
                var loads = new List<double>();
                long shardBytes = 0, gatherBytes = 0;
                for (int round = 0; round < Rounds; round++)
                {
                    comm.Barrier();
                    var clock = Stopwatch.StartNew();
                    string folder = rannc.SaveCheckpoint(Path.Combine(root, "sharded"));
                    sharded.Add(clock.Elapsed.TotalMilliseconds);
                    shardBytes = new FileInfo(Path.Combine(folder, "rank-0.bin")).Length;

                    comm.Barrier();
                    clock.Restart();
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
                    comm.Barrier();
                    gathered.Add(clock.Elapsed.TotalMilliseconds);

                    comm.Barrier();
                    clock.Restart();
                    rannc.LoadCheckpoint(Path.Combine(root, "sharded"));
                    comm.Barrier();
                    loads.Add(clock.Elapsed.TotalMilliseconds);
                }
                return (Sharded: Median(sharded), Gathered: Median(gathered), Load: Median(loads), shardBytes, gatherBytes);
            }, new InProcessOptions(Timeout: TimeSpan.FromMinutes(10)));
            var rank0 = results[0];
            Console.WriteLine();
            Console.WriteLine("| what | median | ratio | bytes rank 0 writes |");
            Console.WriteLine("|---|---|---|---|");
            Console.WriteLine($"| gather to rank 0, one file (before) | {rank0.Gathered:0} ms | 1.00 | {rank0.gatherBytes / 1048576.0:0.0} MiB |");
            Console.WriteLine($"| sharded save: a file per rank + manifest, atomic rename | {rank0.Sharded:0} ms | {rank0.Sharded / rank0.Gathered:0.00} | {rank0.shardBytes / 1048576.0:0.0} MiB |");
            Console.WriteLine($"| load (every rank reads its items, checksums checked) | {rank0.Load:0} ms | {rank0.Load / rank0.Gathered:0.00} | |");
            return 0;
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    }

    private static double Median(List<double> values)
    {
        values.Sort();
        return values[values.Count / 2];
    }
}
