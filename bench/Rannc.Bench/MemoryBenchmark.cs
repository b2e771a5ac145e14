using System.Diagnostics;
using System.Globalization;
using Rannc.Communication;
using Rannc.Execution;
using Rannc.Execution.Memory;
using Rannc.Samples;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Bench;

/// <summary>
/// Per-rank memory of the BERT sample under <c>mpiexec</c> (one process per rank), for the plans 2×2 and 4×1:
/// the runtime's memory report (<c>RANNC_MEMORY_REPORT</c>: measured tensor peak of steps 1–2 next to the plan's
/// predicted stage peak) and, per rank, the process's resident peak during construction and deployment and during
/// the measured steps, above the process's resident size before the model was built.
/// </summary>
public static class MemoryBenchmark
{
    private const int Steps = 4;

    public static int Run(string[] args)
    {
        int layers = args.Length > 0 ? int.Parse(args[0], CultureInfo.InvariantCulture) : 8;
        int hidden = args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 512;
        string? launcher = new[] { "mpiexec.hydra", "mpiexec.mpich" }
            .FirstOrDefault(name => (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':').Any(d => File.Exists(Path.Combine(d, name))));
        if (launcher is null)
        {
            Console.WriteLine("MPICH's mpiexec not found: install mpich.");
            return 1;
        }
        Console.WriteLine($"# Memory, BERT sample ({layers} layers, hidden {hidden}, seq 64, batch 8, Adam, float32), 4 MPI ranks, {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC");
        string[] constructions = args.Length > 3 ? args[3].Split(',') : ["whole"];
        foreach (string plan in args.Length > 2 ? args[2].Split(',') : ["2x2", "4x1"])
        foreach (string construction in constructions)
        {
            Console.WriteLine();
            Console.WriteLine($"## plan {plan}, {(construction == "deferred" ? "deferred construction (rank 0 builds the model, the others their stage)" : "the model built whole on every rank")}");
            Console.Out.Flush();
            var start = new ProcessStartInfo(launcher) { UseShellExecute = false };
            // Freed tensors go back to the system at once, so resident memory follows the live tensors.
            start.Environment["MALLOC_MMAP_THRESHOLD_"] = "65536";
            start.Environment["RANNC_MEMORY_REPORT"] = "2";
            foreach (string a in new[] { "-n", "4", "dotnet", typeof(MemoryBenchmark).Assembly.Location, "memory-mpi-rank", plan, $"{layers}", $"{hidden}", construction })
                start.ArgumentList.Add(a);
            using Process process = Process.Start(start)!;
            if (!process.WaitForExit(TimeSpan.FromMinutes(10)))
            {
                process.Kill(entireProcessTree: true);
                Console.WriteLine("timed out after 10 minutes");
                return 1;
            }
            if (process.ExitCode != 0) return process.ExitCode;
        }
        return 0;
    }

    public static int RunMpiRank(string[] args)
    {
        string plan = args[0];
        int layers = int.Parse(args[1], CultureInfo.InvariantCulture);
        int hidden = int.Parse(args[2], CultureInfo.InvariantCulture);
        bool deferred = args.Length > 3 && args[3] == "deferred";
        SampleTask task = SampleTasks.Bert(SampleTasks.BertConfig(layers, hidden), sequenceLength: 64, maskedPerSequence: 8);
        RankLauncher.RunMpi(comm =>
        {
            using (torch.zeros(1)) { }
            long before = ProcessMemory.ResidentBytes();
            string[] shape = plan.Split('x');
            var options = new RanncOptions
            {
                ForcedShape = (int.Parse(shape[0], CultureInfo.InvariantCulture), int.Parse(shape[1], CultureInfo.InvariantCulture)),
                PlanCacheDirectory = "",
                ProfileRepeats = 1,
                Log = line => Console.WriteLine(line),
            };
            torch.manual_seed(7);
            // Deferred: rank 0 builds the model, the others build it on meta and get storage for their stage only.
            using var rannc = deferred
                ? new RanncModule(task.CreateModel, parameters => torch.optim.Adam(parameters), comm, options)
                : WholeModel(task.CreateModel(), comm, options);
            var optimizer = rannc.Optimizer;
            // The whole model's parameters and Adam's two moments of them (rank 0 holds the whole model in either case).
            long modelBytes = 3 * rannc.Model.parameters().Sum(p => p.numel() * p.ElementSize);
            long deploymentPeak = 0;
            for (int step = 0; step < Steps; step++)
            {
                // The runtime's report resets the peak at the start of step 1: read what construction and step 0 reached.
                if (step == 1) deploymentPeak = ProcessMemory.PeakResidentBytes() - before;
                optimizer.zero_grad();
                rannc.forward(task.CreateBatch(8, step)).backward();
                optimizer.step();
            }
            long stepsPeak = ProcessMemory.PeakResidentBytes() - before;
            long[][] all = comm.AllGather(new[] { deploymentPeak, stepsPeak, before, modelBytes });
            // Every rank's meta model knows the whole model's size too (shapes): take rank 0's, which was built on the CPU.
            foreach (long[] rank in all) rank[3] = all[0][3];
            if (comm.Rank != 0) return;
            Console.WriteLine();
            Console.WriteLine("| rank | resident before the model | whole model's params + Adam state | peak over construction, deployment, step 0 | peak of step 3 |");
            Console.WriteLine("|---|---|---|---|---|");
            for (int r = 0; r < all.Length; r++)
            {
                Console.WriteLine($"| {r} | {Mib(all[r][2])} | {Mib(all[r][3])} | {Mib(all[r][0])} | {Mib(all[r][1])} |");
            }
            Console.Out.Flush();
        }, torchThreads: 1);
        return 0;
    }

    private static RanncModule WholeModel(nn.Module model, ICommunicator comm, RanncOptions options) =>
        new(model, torch.optim.Adam(model.parameters()), comm, options);

    private static string Mib(long bytes) => FormattableString.Invariant($"{bytes / 1048576.0:0.0} MiB");
}
