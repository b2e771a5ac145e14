using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;
using Rannc.Communication;
using Rannc.Execution;
using TorchSharp;
using Xunit;

namespace Rannc.Tests.Communication;

public sealed class InProcessWatchdogTests
{
    [Fact]
    public void ARankThatReturnsEarly_FailsTheOthersAtOnceNamingIt()
    {
        var clock = Stopwatch.StartNew();
        var failure = Assert.Throws<RankFailedException>(() => InProcessLauncher.Run(3, comm =>
        {
            if (comm.Rank == 1) return;
            using var into = torch.zeros(4);
            comm.Receive(into, 1, 3);
        }, new InProcessOptions(Timeout: TimeSpan.FromSeconds(60), WaitTimeout: TimeSpan.FromSeconds(30))));
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(10), $"took {clock.Elapsed}");
        Assert.Contains("rank 1 left the program", failure.Message);
        Assert.Contains("Receive from rank 1 tag 3", failure.Message);
    }

    [Fact]
    public void ARankThatLeavesBeforeACollective_FailsTheOthersNamingIt()
    {
        var failure = Assert.Throws<RankFailedException>(() => InProcessLauncher.Run(3, comm =>
        {
            if (comm.Rank != 2) comm.Barrier();
        }, new InProcessOptions(Timeout: TimeSpan.FromSeconds(60), WaitTimeout: TimeSpan.FromSeconds(30))));
        Assert.Contains("rank 2 left the program", failure.Message);
        Assert.Contains("Barrier", failure.Message);
    }

    [Fact]
    public void ARankStuckInUserCode_FailsTheJobAtTheDeadlineNamingIt()
    {
        var clock = Stopwatch.StartNew();
        var failure = Assert.Throws<RankFailedException>(() => InProcessLauncher.Run(3, comm =>
        {
            comm.Barrier();
            if (comm.Rank == 2) Thread.Sleep(TimeSpan.FromSeconds(120)); // far beyond the deadline
            comm.Barrier();
        }, new InProcessOptions(Timeout: TimeSpan.FromSeconds(100), WaitTimeout: TimeSpan.FromSeconds(4))));
        // 4 s, not less: the first barrier must not expire while a loaded machine is still starting the threads.
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(4 + 6), $"took {clock.Elapsed}: {failure.Message}");
        Assert.Contains("watchdog", failure.Message);
        Assert.Contains("waiting on rank(s) 2", failure.Message);
        Assert.Contains("last completed: Barrier", failure.Message);
    }

    [Fact]
    public void SettingWaitTimeout_ReplacesTheDeadlineOfTheRunningJob()
    {
        // What RanncModule does with RanncOptions.Timeout: the launcher's 60 s deadline becomes 1 s.
        var clock = Stopwatch.StartNew();
        var failure = Assert.Throws<RankFailedException>(() => InProcessLauncher.Run(2, comm =>
        {
            comm.WaitTimeout = TimeSpan.FromSeconds(1);
            comm.Barrier();
            if (comm.Rank == 1) Thread.Sleep(TimeSpan.FromSeconds(30));
            comm.Barrier();
        }, new InProcessOptions(Timeout: TimeSpan.FromSeconds(100), WaitTimeout: TimeSpan.FromSeconds(60))));
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(1 + 8), $"took {clock.Elapsed}: {failure.Message}");
        Assert.Contains("RANNC_TIMEOUT=1)", failure.Message);
    }

    [Fact]
    public void WaitsThatEndBeforeTheDeadline_DoNotFail()
    {
        InProcessLauncher.Run(2, comm =>
        {
            using var tensor = torch.ones(3);
            if (comm.Rank == 0) Thread.Sleep(500);
            comm.AllReduce(tensor, ReduceOp.Sum);
            if (comm.Rank == 0) comm.Send(tensor, 1, 0);
            else comm.Receive(tensor, 0, 0);
        }, new InProcessOptions(Timeout: TimeSpan.FromSeconds(60), WaitTimeout: TimeSpan.FromSeconds(5)));
    }

    [Theory]
    [InlineData("0")]
    [InlineData("-3")]
    [InlineData("ten")]
    public void BadTimeouts_NameTheVariable(string text)
    {
        var error = Assert.Throws<ArgumentException>(() => new RanncOptions().WithVariables(n => n == "RANNC_TIMEOUT" ? text : null));
        Assert.Contains($"RANNC_TIMEOUT='{text}'", error.Message);
    }

    [Fact]
    public void TheTimeoutVariable_IsSeconds() =>
        Assert.Equal(TimeSpan.FromSeconds(20.5), new RanncOptions().WithVariables(n => n == "RANNC_TIMEOUT" ? "20.5" : null).Timeout);
}

[Collection(MpiCollection.Name)]
public sealed partial class MpiWatchdogTests
{
    [Fact]
    public void ARankThatReturnsEarly_EndsTheJobWithin10SecondsNamingIt()
    {
        MpiJobResult result = MpiJob.RunWorker(3, "leave-early", TimeSpan.FromSeconds(60));
        Assert.False(result.TimedOut, $"hung until killed after {result.Elapsed}:\n{result.Output}");
        Assert.NotEqual(0, result.ExitCode);
        Assert.Contains("rank 1 left the program", result.Output);
        Assert.Contains("Receive from rank 1 tag 3", result.Output);
        // Start-up of dotnet and MPI is included (about 3 s in all on 2 shared cores, the 2 s grace included).
        Assert.True(result.Elapsed < TimeSpan.FromSeconds(10), $"took {result.Elapsed}:\n{result.Output}");
    }

    [Fact]
    public void AStoppedBertRankOn2x2_EndsTheJobAtTheDeadlineNamingWhatTheOthersWaitFor()
    {
        int stoppedPid = 0;
        long stoppedAtTicks = 0;
        var clock = Stopwatch.StartNew();
        MpiJobResult result;
        try
        {
            result = MpiJob.RunWorker(4, "train-until-stopped", TimeSpan.FromSeconds(180),
                new Dictionary<string, string> { ["RANNC_TIMEOUT"] = "20" },
                line =>
                {
                    // Rank 3 is stopped once training is under way (step 20 printed by rank 0).
                    Match pid = PidLine().Match(line);
                    if (pid.Success && pid.Groups[1].Value == "3") Volatile.Write(ref stoppedPid, int.Parse(pid.Groups[2].Value, CultureInfo.InvariantCulture));
                    if (line.Contains("rank 0 step 20", StringComparison.Ordinal) && Volatile.Read(ref stoppedPid) is > 0 and int p && Interlocked.CompareExchange(ref stoppedAtTicks, clock.Elapsed.Ticks, 0) == 0)
                        Signal("STOP", p);
                });
        }
        finally
        {
            // Never leave a stopped process behind, whatever happened (SIGKILL ends a stopped process too).
            if (Volatile.Read(ref stoppedPid) is > 0 and int p) Signal("KILL", p);
        }
        Assert.True(stoppedAtTicks > 0, $"training never reached step 20:\n{result.Output}");
        TimeSpan afterStop = clock.Elapsed - TimeSpan.FromTicks(stoppedAtTicks);
        Assert.False(result.TimedOut, $"hung until killed:\n{result.Output}");
        Assert.NotEqual(0, result.ExitCode);
        Assert.True(afterStop < TimeSpan.FromSeconds(60), $"ended {afterStop} after the stop:\n{result.Output}");
        // The waiting rank names what it waits for (transfer or collective, where in training) and on whom.
        Assert.Matches(@"watchdog: rank [0-2] waited 2\d(\.\d)? s \(RANNC_TIMEOUT=20\) for .+ during step \d+\b.*, waiting on .*rank\(s\) [\d, ]+", result.Output);
        Assert.Contains("; last completed: ", result.Output);
    }

    [Fact]
    public void ABertRankThatReturnsEarlyOn2x2_EndsTheJobWithin10SecondsNamingIt()
    {
        long leftAtTicks = 0;
        var clock = Stopwatch.StartNew();
        MpiJobResult result = MpiJob.RunWorker(4, "train-then-leave", TimeSpan.FromSeconds(180), onLine: line =>
        {
            if (line.Contains("rank 3 leaves after step", StringComparison.Ordinal)) Interlocked.CompareExchange(ref leftAtTicks, clock.Elapsed.Ticks, 0);
        });
        Assert.False(result.TimedOut, $"hung until killed:\n{result.Output}");
        Assert.True(leftAtTicks > 0, $"rank 3 never left:\n{result.Output}");
        TimeSpan afterLeaving = clock.Elapsed - TimeSpan.FromTicks(leftAtTicks);
        Assert.NotEqual(0, result.ExitCode);
        Assert.True(afterLeaving < TimeSpan.FromSeconds(10), $"ended {afterLeaving} after rank 3 left:\n{result.Output}");
        Assert.Matches(@"rank 3 left the program \(its delegate returned or its process exited\) while rank [0-2] waited for .+ during step 11\b", result.Output);
    }

    private static void Signal(string signal, int pid)
    {
        using var kill = Process.Start(new ProcessStartInfo("kill", $"-{signal} {pid}") { RedirectStandardError = true });
        kill?.WaitForExit(5000);
    }

    [GeneratedRegex(@"rannc-worker: rank (\d+) pid (\d+)")]
    private static partial Regex PidLine();
}
