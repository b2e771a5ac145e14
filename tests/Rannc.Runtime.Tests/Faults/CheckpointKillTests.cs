using System.Diagnostics;
using Rannc.Mpi.Worker;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace Rannc.Tests.Faults;

/// <summary>
/// <c>kill -9</c> at random moments during checkpoint saves: every time, a fresh process loads the newest complete
/// checkpoint, bit-identical to what was saved (every parameter equals the one save's value), never a mix and never
/// an exception.
/// </summary>
[Collection(MpiCollection.Name)]
public sealed class CheckpointKillTests(ITestOutputHelper output)
{
    [Fact]
    public void KilledDuringSaves_TheNewestCompleteCheckpointLoads()
    {
        string directory = Directory.CreateTempSubdirectory("rannc-checkpoint-kill-").FullName;
        var random = new Random(20261202);
        try
        {
            for (int attempt = 0; attempt < 10; attempt++)
            {
                (long lastReported, TimeSpan saveTime) = RunAndKill(directory, TimeSpan.FromMilliseconds(random.Next(0, 1500)));
                nn.Module model = CheckpointScenarios.CreateModel();
                RanncModule.ConsolidateCheckpoint(directory, model, Path.Combine(directory, "consolidated.bin"));
                var values = model.named_parameters().Select(p => p.parameter).ToList();
                double first = values[0].flatten()[0].item<double>();
                foreach (Tensor value in values) Assert.True(value.eq(first).all().item<bool>(), $"attempt {attempt}: a mix of saves");
                // Never older than the last save the process reported done (later reports may be lost with the killed process's output).
                Assert.True(first >= lastReported, $"attempt {attempt}: loaded save {first}, but the process had reported save {lastReported} done");
                output.WriteLine($"attempt {attempt}: loaded save {first} (last reported {lastReported}), a save took {saveTime.TotalMilliseconds:0} ms");
            }
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    /// <summary>Starts the save loop, waits for its first save, waits <paramref name="delay"/> more and kills the process tree.</summary>
    private static (long LastReported, TimeSpan SaveTime) RunAndKill(string directory, TimeSpan delay)
    {
        var start = new ProcessStartInfo(MpiJob.Launcher ?? throw new InvalidOperationException("MPICH is not installed"))
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (string arg in new[] { "-n", "1", "dotnet", MpiJob.WorkerPath, "checkpoint-loop" }) start.ArgumentList.Add(arg);
        start.Environment["RANNC_TEST_CHECKPOINT_DIR"] = directory;
        start.Environment["MALLOC_MMAP_THRESHOLD_"] = "131072";
        using var process = new Process { StartInfo = start };
        long last = 0;
        var saves = new List<TimeSpan>();
        var clock = Stopwatch.StartNew();
        var firstSave = new ManualResetEventSlim();
        process.OutputDataReceived += (_, e) =>
        {
            if (e.Data is { } line && line.StartsWith("rannc-worker: saved ", StringComparison.Ordinal))
            {
                lock (saves)
                {
                    last = long.Parse(line["rannc-worker: saved ".Length..]);
                    saves.Add(clock.Elapsed);
                }
                firstSave.Set();
            }
        };
        process.ErrorDataReceived += (_, _) => { };
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        try
        {
            Assert.True(firstSave.Wait(TimeSpan.FromSeconds(90)), "the save loop never saved");
            Thread.Sleep(delay);
        }
        finally
        {
            process.Kill(entireProcessTree: true); // SIGKILL
            process.WaitForExit(10_000);
        }
        lock (saves)
        {
            TimeSpan saveTime = saves.Count >= 2 ? (saves[^1] - saves[0]) / (saves.Count - 1) : TimeSpan.Zero;
            return (last, saveTime);
        }
    }
}
