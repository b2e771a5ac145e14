using System.Diagnostics;
using Rannc.Communication;
using TorchSharp;
using static TorchSharp.torch;
using MpiNative = MPI.Unsafe;

namespace Rannc.Bench;

/// <summary>
/// Point-to-point bandwidth/latency and all-reduce time of both communicators. For MPI, each measurement is paired
/// with the same transfer made by raw MPICH calls (MPI.NET's MPI.Unsafe on the tensor's memory) in the same run,
/// alternating rounds, and the ratio raw time / Rannc time is printed (1.0 = no overhead).
/// </summary>
public static class CommunicationBenchmark
{
    private static readonly long[] PointToPointBytes =
        [1L << 10, 16L << 10, 256L << 10, 1L << 20, 4L << 20, 16L << 20, 64L << 20, 256L << 20];

    private static readonly long[] AllReduceBytes = [1L << 20, 16L << 20, 64L << 20];

    private const int Rounds = 5;

    /// <summary>Runs the in-process measurement here, then this program on 2 MPI ranks.</summary>
    public static int Run(string[] args)
    {
        torch.set_num_threads(1);
        Console.WriteLine($"# Communication benchmark ({DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC, {Environment.ProcessorCount} cores)");
        Console.WriteLine();
        Console.WriteLine("## In-process communicator (2 ranks = 2 threads)");
        InProcessLauncher.Run(2, comm => Measure(comm, raw: false), new InProcessOptions(TorchThreads: 1));

        string? launcher = new[] { "mpiexec.hydra", "mpiexec.mpich" }
            .FirstOrDefault(name => (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':').Any(d => File.Exists(Path.Combine(d, name))));
        if (launcher is null)
        {
            Console.WriteLine("MPICH's mpiexec not found: install mpich for the MPI part.");
            return 1;
        }
        Console.WriteLine();
        Console.WriteLine($"## MPI communicator (2 processes, {launcher}), with raw MPICH calls for comparison");
        Console.Out.Flush();
        var start = new ProcessStartInfo(launcher) { UseShellExecute = false };
        foreach (string a in new[] { "-n", "2", "dotnet", typeof(CommunicationBenchmark).Assembly.Location, "comm-mpi-rank" }) start.ArgumentList.Add(a);
        using Process process = Process.Start(start)!;
        if (!process.WaitForExit(TimeSpan.FromMinutes(15)))
        {
            process.Kill(entireProcessTree: true);
            Console.WriteLine("MPI part timed out after 15 minutes");
            return 1;
        }
        return process.ExitCode;
    }

    public static int RunMpiRank(string[] args)
    {
        RankLauncher.RunMpi(comm => Measure(comm, raw: true), torchThreads: 1);
        return 0;
    }

    private static void Measure(ICommunicator comm, bool raw)
    {
        int partner = comm.Rank ^ 1;
        bool print = comm.Rank == 0;
        if (print)
        {
            Console.WriteLine();
            Console.WriteLine(raw
                ? "| message | Rannc one-way | Rannc bandwidth | raw MPICH one-way | raw bandwidth | ratio raw/Rannc time |"
                : "| message | one-way time | bandwidth |");
            Console.WriteLine(raw ? "|---|---|---|---|---|---|" : "|---|---|---|");
        }
        foreach (long bytes in PointToPointBytes)
        {
            using Tensor buffer = torch.zeros(bytes / 4, ScalarType.Float32);
            int iterations = (int)Math.Clamp((512L << 20) / bytes, 4, 2000);
            var ours = new List<double>();
            var rawTimes = new List<double>();
            PingPong(comm, buffer, partner, 2); // warm-up
            if (raw) RawPingPong(comm, buffer, partner, 2);
            for (int round = 0; round < Rounds; round++)
            {
                ours.Add(PingPong(comm, buffer, partner, iterations));
                if (raw) rawTimes.Add(RawPingPong(comm, buffer, partner, iterations));
            }
            if (!print) continue;
            double one = Median(ours);
            string row = $"| {Size(bytes)} | {Time(one)} | {Bandwidth(bytes, one)} |";
            if (raw)
            {
                double other = Median(rawTimes);
                row += $" {Time(other)} | {Bandwidth(bytes, other)} | {other / one:0.00} |";
            }
            Console.WriteLine(row);
        }

        if (print)
        {
            Console.WriteLine();
            Console.WriteLine(raw ? "| all-reduce (sum, float32) | Rannc | raw MPI_Allreduce | ratio raw/Rannc time |" : "| all-reduce (sum, float32) | time |");
            Console.WriteLine(raw ? "|---|---|---|---|" : "|---|---|");
        }
        foreach (long bytes in AllReduceBytes)
        {
            using Tensor buffer = torch.ones(bytes / 4, ScalarType.Float32);
            int iterations = (int)Math.Clamp((256L << 20) / bytes, 3, 200);
            var ours = new List<double>();
            var rawTimes = new List<double>();
            comm.AllReduce(buffer, ReduceOp.Sum);
            for (int round = 0; round < Rounds; round++)
            {
                comm.Barrier();
                var clock = Stopwatch.StartNew();
                for (int i = 0; i < iterations; i++) comm.AllReduce(buffer, ReduceOp.Sum);
                ours.Add(clock.Elapsed.TotalSeconds / iterations);
                if (raw)
                {
                    comm.Barrier();
                    clock.Restart();
                    for (int i = 0; i < iterations; i++) RawAllReduce(buffer);
                    rawTimes.Add(clock.Elapsed.TotalSeconds / iterations);
                }
                buffer.fill_(1); // keep values finite
            }
            if (!print) continue;
            string row = $"| {Size(bytes)} | {Time(Median(ours))} |";
            if (raw) row += $" {Time(Median(rawTimes))} | {Median(rawTimes) / Median(ours):0.00} |";
            Console.WriteLine(row);
        }
        Console.Out.Flush();
    }

    /// <summary>Returns the one-way time of a ping-pong through the communicator.</summary>
    private static double PingPong(ICommunicator comm, Tensor buffer, int partner, int iterations)
    {
        comm.Barrier();
        var clock = Stopwatch.StartNew();
        for (int i = 0; i < iterations; i++)
        {
            if (comm.Rank % 2 == 0)
            {
                comm.Send(buffer, partner, 0);
                comm.Receive(buffer, partner, 0);
            }
            else
            {
                comm.Receive(buffer, partner, 0);
                comm.Send(buffer, partner, 0);
            }
        }
        return clock.Elapsed.TotalSeconds / (2.0 * iterations);
    }

    /// <summary>The same ping-pong as plain MPI_Send/MPI_Recv of the tensor's bytes on MPI_COMM_WORLD.</summary>
    private static double RawPingPong(ICommunicator comm, Tensor buffer, int partner, int iterations)
    {
        comm.Barrier();
        IntPtr address = TensorBuffers.Address(buffer);
        int count = checked((int)TensorBuffers.ByteCount(buffer));
        var clock = Stopwatch.StartNew();
        for (int i = 0; i < iterations; i++)
        {
            if (comm.Rank % 2 == 0)
            {
                MpiNative.MPI_Send(address, count, MpiNative.MPI_BYTE, partner, 77, MpiNative.MPI_COMM_WORLD);
                MpiNative.MPI_Recv(address, count, MpiNative.MPI_BYTE, partner, 77, MpiNative.MPI_COMM_WORLD, out _);
            }
            else
            {
                MpiNative.MPI_Recv(address, count, MpiNative.MPI_BYTE, partner, 77, MpiNative.MPI_COMM_WORLD, out _);
                MpiNative.MPI_Send(address, count, MpiNative.MPI_BYTE, partner, 77, MpiNative.MPI_COMM_WORLD);
            }
        }
        return clock.Elapsed.TotalSeconds / (2.0 * iterations);
    }

    private static void RawAllReduce(Tensor buffer) =>
        MpiNative.MPI_Allreduce(-1, TensorBuffers.Address(buffer), (int)buffer.numel(), MpiNative.MPI_FLOAT, MpiNative.MPI_SUM,
            MpiNative.MPI_COMM_WORLD);

    private static double Median(List<double> values)
    {
        values.Sort();
        return values[values.Count / 2];
    }

    private static string Size(long bytes) => bytes >= 1 << 20 ? $"{bytes >> 20} MiB" : $"{bytes >> 10} KiB";

    private static string Time(double seconds) => seconds >= 1e-3 ? $"{seconds * 1e3:0.00} ms" : $"{seconds * 1e6:0.0} µs";

    private static string Bandwidth(long bytes, double seconds) => $"{bytes / seconds / 1e9:0.00} GB/s";
}
