using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using MpiNative = MPI.Unsafe;

namespace Rannc.Communication;

/// <summary>
/// The deadline of every blocking wait of a communicator (<c>RANNC_TIMEOUT</c>, seconds; default 600 like PyTorch's
/// NCCL watchdog). Communicators exist before <c>RanncOptions</c> do, so they read the variable where they are made;
/// the deadline itself lives in each job (<see cref="ICommunicator.WaitTimeout"/>).
/// </summary>
public static class Watchdog
{
    public const string Variable = "RANNC_TIMEOUT";

    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(600);

    /// <summary>The deadline from <c>RANNC_TIMEOUT</c>, or <see cref="DefaultTimeout"/> when it is not set.</summary>
    public static TimeSpan TimeoutFromEnvironment() =>
        Environment.GetEnvironmentVariable(Variable) is { Length: > 0 } text ? ParseTimeout(text) : DefaultTimeout;

    /// <summary>Returns <paramref name="timeout"/> when it can be a deadline (above zero).</summary>
    internal static TimeSpan CheckTimeout(TimeSpan timeout)
    {
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(timeout, TimeSpan.Zero);
        return timeout;
    }

    /// <summary>Parses a positive number of seconds; the error names the variable and the accepted form.</summary>
    public static TimeSpan ParseTimeout(string text)
    {
        if (double.TryParse(text.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out double seconds)
            && seconds > 0 && double.IsFinite(seconds) && seconds <= TimeSpan.MaxValue.TotalSeconds / 2)
        {
            return TimeSpan.FromSeconds(seconds);
        }
        throw new ArgumentException($"{Variable}='{text}' is not a positive number of seconds (e.g. {Variable}=600).");
    }
}

/// <summary>
/// The MPI side of the watchdog (process-wide, like MPI): polls requests with growing sleeps so an idle rank does
/// not burn a core, enforces the deadline, and exchanges "I am leaving" notices on a duplicate of the world
/// communicator so ranks waiting for a rank that left fail at once instead of at the deadline.
/// </summary>
internal static unsafe class MpiWatchdog
{
    private const int NoticeTag = 1;
    private const int AnySource = -2; // MPICH's MPI_ANY_SOURCE

    /// <summary>A leave notice can overtake the leaving rank's last messages; wait this long before believing it.</summary>
    private static readonly TimeSpan LeaveGrace = TimeSpan.FromSeconds(2);

    /// <summary>Busy polling this long keeps short waits and large shared-memory copies (which MPICH progresses only inside MPI calls) fast.</summary>
    private static readonly TimeSpan SpinPhase = TimeSpan.FromMilliseconds(50);

    private static readonly object NoticeLock = new();
    private static int s_noticeComm;
    private static int s_noticeRequest = MpiNative.MPI_REQUEST_NULL;
    private static int* s_noticeIn;
    private static int* s_noticeOut;
    private static bool[] s_left = [];
    private static bool s_leaving;
    private static bool s_started;
    private static int s_worldRank;
    private static string s_lastCompleted = "nothing yet";
    private static long s_lastCompletedAt;

    private static delegate* unmanaged<int*, int*, MpiNative.MPI_Status*, int> s_test;
    private static delegate* unmanaged<int*, int> s_cancel;
    private static delegate* unmanaged<int*, int> s_requestFree;
    private static delegate* unmanaged<int, int*, int> s_commDup;
    private static delegate* unmanaged<int, int*, int> s_ibarrier;

    /// <summary>Called once after MPI_Init: binds the calls MPI.NET lacks, posts the notice receive.</summary>
    public static void Start(IntPtr library)
    {
        lock (NoticeLock)
        {
            if (s_started) return;
            s_test = (delegate* unmanaged<int*, int*, MpiNative.MPI_Status*, int>)NativeLibrary.GetExport(library, "MPI_Test");
            s_cancel = (delegate* unmanaged<int*, int>)NativeLibrary.GetExport(library, "MPI_Cancel");
            s_requestFree = (delegate* unmanaged<int*, int>)NativeLibrary.GetExport(library, "MPI_Request_free");
            s_commDup = (delegate* unmanaged<int, int*, int>)NativeLibrary.GetExport(library, "MPI_Comm_dup");
            s_ibarrier = (delegate* unmanaged<int, int*, int>)NativeLibrary.GetExport(library, "MPI_Ibarrier");
            MpiEnvironment.Check(MpiNative.MPI_Comm_rank(MpiNative.MPI_COMM_WORLD, out s_worldRank), "MPI_Comm_rank");
            MpiEnvironment.Check(MpiNative.MPI_Comm_size(MpiNative.MPI_COMM_WORLD, out int size), "MPI_Comm_size");
            int dup;
            MpiEnvironment.Check(s_commDup(MpiNative.MPI_COMM_WORLD, &dup), "MPI_Comm_dup");
            s_noticeComm = dup;
            s_left = new bool[size];
            s_noticeIn = (int*)NativeMemory.Alloc(sizeof(int));
            s_noticeOut = (int*)NativeMemory.Alloc(sizeof(int));
            *s_noticeOut = s_worldRank;
            PostNoticeReceive();
            s_started = true;
        }
    }

    private static void PostNoticeReceive()
    {
        MpiEnvironment.Check(MpiNative.MPI_Irecv((IntPtr)s_noticeIn, 1, MpiNative.MPI_INT, AnySource, NoticeTag, s_noticeComm,
            out s_noticeRequest), "MPI_Irecv (leave notices)");
    }

    /// <summary>Records notices that arrived; returns the world ranks known to have left.</summary>
    private static void PollNotices()
    {
        lock (NoticeLock)
        {
            while (s_started && !s_leaving && s_noticeRequest != MpiNative.MPI_REQUEST_NULL)
            {
                int flag = 0;
                MpiNative.MPI_Status status;
                int request = s_noticeRequest;
                MpiEnvironment.Check(s_test(&request, &flag, &status), "MPI_Test (leave notices)");
                s_noticeRequest = request;
                if (flag == 0) return;
                int who = *s_noticeIn;
                if (who >= 0 && who < s_left.Length) s_left[who] = true;
                PostNoticeReceive();
            }
        }
    }

    /// <summary>
    /// Tells every other rank that this one leaves the program (once; best effort), waiting at most
    /// <paramref name="timeout"/> (the job's deadline) for the notices to be exchanged.
    /// </summary>
    public static void AnnounceLeaving(TimeSpan timeout)
    {
        lock (NoticeLock)
        {
            if (!s_started || s_leaving) return;
            s_leaving = true;
            if (MpiNative.MPI_Finalized(out int finalized) != MpiNative.MPI_SUCCESS || finalized != 0) return;
            var sends = new List<int>();
            for (int r = 0; r < s_left.Length; r++)
            {
                if (r == s_worldRank) continue;
                if (MpiNative.MPI_Isend((IntPtr)s_noticeOut, 1, MpiNative.MPI_INT, r, NoticeTag, s_noticeComm, out int send) == MpiNative.MPI_SUCCESS)
                    sends.Add(send);
            }
            // Every rank sends each other rank one notice when it leaves. Wait until this rank's notices are delivered and
            // it holds every other rank's, so no message is in flight at MPI_Finalize: over a network (UCX) MPI_Finalize
            // flushes in-flight messages while the peers already sit in the launcher's exit barrier, and never returns.
            // This waits like MPI_Finalize itself (for the slowest rank), but never longer than the deadline.
            var clock = Stopwatch.StartNew();
            while ((sends.Count > 0 || !EveryOtherRankLeft()) && clock.Elapsed < timeout)
            {
                for (int i = sends.Count - 1; i >= 0; i--)
                {
                    int request = sends[i], flag = 0;
                    MpiNative.MPI_Status status;
                    s_test(&request, &flag, &status);
                    if (flag != 0) sends.RemoveAt(i);
                    else sends[i] = request;
                }
                ReceiveNoticesWhileLeaving();
                if (sends.Count > 0 || !EveryOtherRankLeft()) Thread.Sleep(1);
            }
            foreach (int pending in sends)
            {
                int request = pending;
                s_requestFree(&request);
            }
            // The notice receive must not be pending at MPI_Finalize.
            if (s_noticeRequest != MpiNative.MPI_REQUEST_NULL)
            {
                int request = s_noticeRequest;
                s_cancel(&request);
                MpiNative.MPI_Wait(ref request, out _);
                s_noticeRequest = MpiNative.MPI_REQUEST_NULL;
            }
            if (sends.Count == 0 && EveryOtherRankLeft()) EnterFinalizeTogether(timeout - clock.Elapsed);
        }
    }

    /// <summary>
    /// A last barrier, polled without sleeping, so every rank starts MPI_Finalize within a message latency of the others.
    /// MPICH 4.0's UCX netmod closes its endpoints in MPI_Finalize without a barrier first (later MPICH added one), and
    /// over UCX's TCP transport a close that races with the peers' own closes can stay unflushed for ever. This makes
    /// that rarer; <see cref="MpiEnvironment"/>'s finalize guard ends a rank that is caught anyway.
    /// </summary>
    private static void EnterFinalizeTogether(TimeSpan timeout)
    {
        int request;
        if (s_ibarrier(s_noticeComm, &request) != MpiNative.MPI_SUCCESS) return;
        var clock = Stopwatch.StartNew();
        int flag = 0;
        MpiNative.MPI_Status status;
        while (flag == 0 && clock.Elapsed < timeout) s_test(&request, &flag, &status);
        if (flag == 0) s_requestFree(&request);
    }

    private static bool EveryOtherRankLeft()
    {
        for (int r = 0; r < s_left.Length; r++)
        {
            if (r != s_worldRank && !s_left[r]) return false;
        }
        return true;
    }

    /// <summary>Takes the notices that arrived, posting the next receive only while a rank has yet to send its notice.</summary>
    private static void ReceiveNoticesWhileLeaving()
    {
        while (s_noticeRequest != MpiNative.MPI_REQUEST_NULL)
        {
            int flag = 0;
            MpiNative.MPI_Status status;
            int request = s_noticeRequest;
            if (s_test(&request, &flag, &status) != MpiNative.MPI_SUCCESS) return;
            s_noticeRequest = request;
            if (flag == 0) return;
            int who = *s_noticeIn;
            if (who >= 0 && who < s_left.Length) s_left[who] = true;
            s_noticeRequest = MpiNative.MPI_REQUEST_NULL;
            if (!EveryOtherRankLeft()) PostNoticeReceive();
        }
    }

    /// <summary>
    /// Waits for every request (freeing each as it completes). Aborts the job when <paramref name="timeout"/> passes or a rank in
    /// <paramref name="awaitedWorldRanks"/> announced it left. <paramref name="onFirstComplete"/> runs when request 0 is done.
    /// </summary>
    public static void WaitAll(List<int> requests, Func<string> describe, int[] awaitedWorldRanks, long bytes, TimeSpan timeout,
        Action? onFirstComplete = null)
    {
        // A large transfer keeps needing MPI calls to progress: spin at least as long as it takes at 1 GB/s.
        TimeSpan spinPhase = SpinPhase + TimeSpan.FromSeconds(bytes / 1e9);
        var clock = Stopwatch.StartNew();
        TimeSpan phaseStart = TimeSpan.Zero; // restarted whenever a request completes: data is flowing again
        TimeSpan? leftSeenAt = null;
        int next = 0;
        int sleepMs = 1;
        while (true)
        {
            bool advanced = false;
            while (next < requests.Count)
            {
                int request = requests[next], flag = 0;
                MpiNative.MPI_Status status;
                int code = s_test(&request, &flag, &status);
                requests[next] = request;
                if (code != MpiNative.MPI_SUCCESS) MpiEnvironment.Check(code, $"{describe()} (MPI_Test)");
                if (flag == 0) break;
                if (next == 0) onFirstComplete?.Invoke();
                next++;
                advanced = true;
            }
            if (next == requests.Count)
            {
                s_lastCompleted = describe();
                s_lastCompletedAt = Stopwatch.GetTimestamp();
                return;
            }
            TimeSpan now = clock.Elapsed;
            if (advanced)
            {
                phaseStart = now;
                sleepMs = 1;
            }
            if (now > timeout)
            {
                Expire($"waited {now.TotalSeconds:0.#} s ({Watchdog.Variable}={timeout.TotalSeconds:0.#}) for {describe()}, " +
                    $"waiting on {WaitingOn(awaitedWorldRanks)}");
            }
            PollNotices();
            int left = FirstLeft(awaitedWorldRanks);
            if (left >= 0)
            {
                leftSeenAt ??= now;
                if (now - leftSeenAt > LeaveGrace)
                    Expire($"gives up: rank {left} left the program (its delegate returned or its process exited) while rank {s_worldRank} waited for {describe()}");
            }
            if (now - phaseStart < spinPhase)
            {
                Thread.SpinWait(20);
            }
            else
            {
                // Growing sleeps: an idle wait costs little CPU; a wait that ends after long idling is late by at most 10 ms.
                Thread.Sleep(sleepMs);
                if (now - phaseStart > TimeSpan.FromSeconds(1)) sleepMs = Math.Min(10, sleepMs + 1);
            }
        }
    }

    /// <summary>The ranks a wait depends on, in words: the peer of a transfer, or a collective's group.</summary>
    private static string WaitingOn(int[] awaitedWorldRanks)
    {
        int[] others = awaitedWorldRanks.Where(r => r != s_worldRank).ToArray();
        if (awaitedWorldRanks.Length == 1) return $"rank(s) {string.Join(", ", others)}";
        // MPI's non-blocking collectives do not report which members hold them up.
        return $"one or more of rank(s) {string.Join(", ", others)} (MPI does not tell which)";
    }

    private static int FirstLeft(int[] worldRanks)
    {
        lock (NoticeLock)
        {
            foreach (int r in worldRanks)
                if (r >= 0 && r < s_left.Length && s_left[r] && r != s_worldRank) return r;
        }
        return -1;
    }

    [System.Diagnostics.CodeAnalysis.DoesNotReturn]
    private static void Expire(string what)
    {
        double ago = s_lastCompletedAt == 0 ? 0 : Stopwatch.GetElapsedTime(s_lastCompletedAt).TotalSeconds;
        string last = s_lastCompletedAt == 0 ? s_lastCompleted : $"{s_lastCompleted} ({ago:0.#} s ago)";
        MpiCommunicator.AbortJob($"watchdog: rank {s_worldRank} {what}; last completed: {last}");
    }
}

/// <summary>The deadline one MPI world and the groups split from it share (what <see cref="ICommunicator.WaitTimeout"/> sets).</summary>
internal sealed class MpiDeadline(TimeSpan timeout)
{
    public TimeSpan Timeout { get; set; } = timeout;
}
