using System.Diagnostics;
using TorchSharp;

namespace Rannc.Communication;

/// <summary>Settings of an in-process run.</summary>
/// <param name="Timeout">The whole run fails after this long (null: no limit).</param>
/// <param name="StallTimeout">
/// How long every rank may sit blocked (or finished) with no transfer completing before the run is declared
/// deadlocked and fails, naming what each rank waits for.
/// </param>
/// <param name="TorchThreads">Intra-op threads for libtorch (process-wide); null: cores divided by ranks, at least 1.</param>
/// <param name="WaitTimeout">
/// The watchdog's deadline for each blocking wait of a rank (null: <c>RANNC_TIMEOUT</c> seconds, else 600 s); it
/// also catches a rank stuck outside Rannc, since whoever waits for it fails naming it.
/// </param>
public sealed record InProcessOptions(TimeSpan? Timeout = null, TimeSpan? StallTimeout = null, int? TorchThreads = null,
    TimeSpan? WaitTimeout = null)
{
    public static InProcessOptions Default { get; } = new();
}

/// <summary>
/// Runs the same delegate on N ranks, each a thread of this process with its own <see cref="ICommunicator"/>
/// (SPMD). Returns when all finish; if any rank throws, the others are stopped and a
/// <see cref="RankFailedException"/> naming the first failing rank is thrown.
/// </summary>
public static class InProcessLauncher
{
    private static readonly TimeSpan DefaultStallTimeout = TimeSpan.FromSeconds(10);

    /// <summary>How long stopped ranks get to notice and return before the failure is reported anyway (a rank stuck
    /// in user code never notices, so this bounds how late the failure is reported).</summary>
    private static readonly TimeSpan StopGrace = TimeSpan.FromSeconds(3);

    public static void Run(int ranks, Action<ICommunicator> body, InProcessOptions? options = null) =>
        Run<object?>(ranks, comm =>
        {
            body(comm);
            return null;
        }, options);

    /// <summary>Runs <paramref name="body"/> on every rank and returns each rank's result, indexed by rank.</summary>
    public static T[] Run<T>(int ranks, Func<ICommunicator, T> body, InProcessOptions? options = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(ranks, 1);
        ArgumentNullException.ThrowIfNull(body);
        options ??= InProcessOptions.Default;
        TorchNatives.EnsureLoadable();
        torch.set_num_threads(options.TorchThreads ?? Math.Max(1, Environment.ProcessorCount / ranks));

        var job = new InProcessJob(ranks, options.WaitTimeout ?? Watchdog.TimeoutFromEnvironment());
        var group = new InProcessGroup(job, job.NewGroupId(), Enumerable.Range(0, ranks).ToArray());
        var results = new T[ranks];
        Exception? firstFailure = null;
        int failedRank = -1;
        object failureLock = new();
        var threads = new Thread[ranks];
        for (int rank = 0; rank < ranks; rank++)
        {
            int r = rank;
            // Deep autograd graphs recurse in native code; give ranks a main-thread-sized stack.
            threads[r] = new Thread(() =>
            {
                try
                {
                    using var comm = new InProcessCommunicator(group, r);
                    using var ambient = AmbientCommunicator.Enter(comm);
                    results[r] = body(comm);
                }
                catch (Exception e)
                {
                    lock (failureLock)
                    {
                        // A rank stopped because another failed is a consequence, not the cause.
                        bool consequence = e is JobAbortedException { IsOrigin: false };
                        if (!consequence && firstFailure is null)
                        {
                            firstFailure = e;
                            failedRank = r;
                        }
                    }
                    job.Stop($"rank {r} failed: {e.GetType().Name}: {e.Message}");
                }
                finally
                {
                    job.MarkFinished(r);
                }
            }, maxStackSize: 16 * 1024 * 1024)
            {
                IsBackground = true,
                Name = $"rannc-rank-{r}",
            };
        }
        foreach (Thread t in threads) t.Start();
        Watch(job, threads, options);

        if (firstFailure is not null) throw new RankFailedException(failedRank, ranks, firstFailure);
        if (job.StopReason is not null) throw new JobAbortedException(job.StopReason);
        return results;
    }

    /// <summary>Waits for the ranks, stopping the job on timeout or deadlock.</summary>
    private static void Watch(InProcessJob job, Thread[] threads, InProcessOptions options)
    {
        var clock = Stopwatch.StartNew();
        TimeSpan stallLimit = options.StallTimeout ?? DefaultStallTimeout;
        long lastProgress = job.Progress;
        var sinceProgress = Stopwatch.StartNew();
        TimeSpan? stoppedAt = null;
        while (threads.Any(t => t.IsAlive))
        {
            threads.FirstOrDefault(t => t.IsAlive)?.Join(50);
            if (stoppedAt is null && job.Cancellation.IsCancellationRequested) stoppedAt = clock.Elapsed;
            if (stoppedAt is not null)
            {
                if (clock.Elapsed - stoppedAt > StopGrace) return; // report now; the stuck ranks are background threads
                continue;
            }
            if (options.Timeout is { } limit && clock.Elapsed > limit)
            {
                job.Stop($"the run exceeded its timeout of {limit.TotalSeconds:0.#} s ({job.DescribeStall() ?? "ranks still running"})");
                continue;
            }
            long progress = job.Progress;
            string? stall = job.DescribeStall();
            if (progress != lastProgress || stall is null)
            {
                lastProgress = progress;
                sinceProgress.Restart();
            }
            else if (sinceProgress.Elapsed > stallLimit)
            {
                job.Stop($"deadlock: no rank can make progress ({stall})");
            }
        }
    }
}
