using static TorchSharp.torch;

namespace Rannc.Communication;

/// <summary>
/// State shared by the threads of one in-process run: a mailbox per rank, the job-wide cancellation that stops every
/// rank when one fails, and what each rank is waiting for (so a deadlock is reported instead of hanging).
/// </summary>
internal sealed class InProcessJob
{
    private readonly Mailbox[] _mailboxes;
    private readonly int[] _waitCount;
    private readonly string?[] _waitingOn;
    private readonly bool[] _finished;
    private readonly string[] _lastCompleted;
    private readonly object _stateLock = new();
    private int _nextGroupId;
    private long _progress;

    public InProcessJob(int worldSize, TimeSpan waitTimeout)
    {
        WorldSize = worldSize;
        WaitTimeout = waitTimeout;
        _lastCompleted = Enumerable.Repeat("nothing yet", worldSize).ToArray();
        _mailboxes = Enumerable.Range(0, worldSize).Select(_ => new Mailbox()).ToArray();
        _waitCount = new int[worldSize];
        _waitingOn = new string?[worldSize];
        _finished = new bool[worldSize];
    }

    public int WorldSize { get; }

    /// <summary>The watchdog's deadline for every blocking wait (<c>RANNC_TIMEOUT</c>).</summary>
    public TimeSpan WaitTimeout { get; set; }

    public CancellationTokenSource Cancellation { get; } = new();

    /// <summary>Why the job was stopped (the first failure or abort), once it has been.</summary>
    public string? StopReason { get; private set; }

    public Mailbox MailboxOf(int worldRank) => _mailboxes[worldRank];

    public int NewGroupId() => Interlocked.Increment(ref _nextGroupId);

    /// <summary>Counts completed operations; the deadlock watchdog looks for a job where it stops moving.</summary>
    public long Progress => Interlocked.Read(ref _progress);

    public void NoteProgress() => Interlocked.Increment(ref _progress);

    public void Stop(string reason)
    {
        lock (_stateLock) StopReason ??= reason;
        Cancellation.Cancel();
    }

    /// <summary>
    /// Blocks on <paramref name="completed"/> while recording, for deadlock reports, what this rank waits for. Fails
    /// when the deadline passes or a rank in <paramref name="awaited"/> (world ranks) finished without completing it.
    /// </summary>
    public void Wait(int worldRank, ManualResetEventSlim completed, Func<string> description, Func<int[]> awaited)
    {
        if (completed.IsSet)
        {
            _lastCompleted[worldRank] = description();
            return;
        }
        lock (_stateLock)
        {
            _waitCount[worldRank]++;
            _waitingOn[worldRank] = description();
        }
        try
        {
            var clock = System.Diagnostics.Stopwatch.StartNew();
            // Short slices: a rank that has left is noticed within 50 ms.
            while (!completed.Wait(TimeSpan.FromMilliseconds(50), Cancellation.Token))
            {
                int left = FirstFinished(awaited(), worldRank);
                // A finished rank's sends and arrivals happened before it was marked finished: look once more.
                if (left >= 0 && !completed.IsSet)
                {
                    throw new CommunicationException(
                        $"rank {left} left the program (its delegate returned) while rank {worldRank} waits for {description()}; " +
                        $"last completed: {_lastCompleted[worldRank]}");
                }
                if (clock.Elapsed > WaitTimeout && !completed.IsSet)
                {
                    string waitingOn = string.Join(", ", awaited().Where(r => r != worldRank));
                    throw new CommunicationException(
                        $"watchdog: rank {worldRank} waited {clock.Elapsed.TotalSeconds:0.#} s ({Watchdog.Variable}=" +
                        $"{WaitTimeout.TotalSeconds:0.#}) for {description()}, waiting on rank(s) {waitingOn}; " +
                        $"last completed: {_lastCompleted[worldRank]}");
                }
            }
            _lastCompleted[worldRank] = description();
        }
        catch (OperationCanceledException)
        {
            throw new JobAbortedException($"Rank {worldRank} stopped: {StopReason ?? "the job was cancelled"}");
        }
        finally
        {
            lock (_stateLock)
            {
                if (--_waitCount[worldRank] == 0) _waitingOn[worldRank] = null;
            }
        }
    }

    /// <summary>Records a completed operation of a rank that did not have to wait for it (the last to arrive at a collective).</summary>
    public void NoteCompleted(int worldRank, string description) => _lastCompleted[worldRank] = description;

    private int FirstFinished(int[] worldRanks, int self)
    {
        lock (_stateLock)
        {
            foreach (int r in worldRanks)
                if (r != self && _finished[r]) return r;
        }
        return -1;
    }

    public void MarkFinished(int worldRank)
    {
        lock (_stateLock) _finished[worldRank] = true;
    }

    /// <summary>
    /// If every rank is finished or blocked and at least one is blocked, returns a description of who waits for what;
    /// otherwise null. (Sends never block in-process, so such a state cannot change without outside help.)
    /// </summary>
    public string? DescribeStall()
    {
        lock (_stateLock)
        {
            bool anyWaiting = false;
            for (int r = 0; r < WorldSize; r++)
            {
                if (_finished[r]) continue;
                if (_waitCount[r] == 0) return null;
                anyWaiting = true;
            }
            if (!anyWaiting) return null;
            return string.Join("; ", Enumerable.Range(0, WorldSize).Select(r =>
                _finished[r] ? $"rank {r} has finished" : $"rank {r} waits for {_waitingOn[r]}"));
        }
    }
}

/// <summary>One rank's incoming point-to-point traffic: messages not yet received, receives not yet matched.</summary>
internal sealed class Mailbox
{
    private readonly object _lock = new();
    private readonly List<PendingMessage> _unmatched = [];
    private readonly List<PostedReceive> _posted = [];

    /// <summary>Delivers a message: straight into the earliest matching posted receive, or queued as a copy.</summary>
    public void Deliver(int groupId, int source, int tag, Tensor tensor)
    {
        PostedReceive? receive;
        lock (_lock)
        {
            int index = _posted.FindIndex(p => p.GroupId == groupId && p.Source == source && p.Tag == tag);
            if (index < 0)
            {
                _unmatched.Add(new PendingMessage(groupId, source, tag, tensor.dtype, tensor.shape,
                    TensorBuffers.Bytes(tensor).ToArray()));
                return;
            }
            receive = _posted[index];
            _posted.RemoveAt(index);
        }
        receive.Complete(tensor.dtype, tensor.shape, TensorBuffers.Bytes(tensor));
    }

    /// <summary>Posts a receive; completes it at once when a matching message is already queued.</summary>
    public void Post(PostedReceive receive)
    {
        PendingMessage? message;
        lock (_lock)
        {
            int index = _unmatched.FindIndex(m => m.GroupId == receive.GroupId && m.Source == receive.Source && m.Tag == receive.Tag);
            if (index < 0)
            {
                _posted.Add(receive);
                return;
            }
            message = _unmatched[index];
            _unmatched.RemoveAt(index);
        }
        receive.Complete(message.DType, message.Shape, message.Data);
    }

    private sealed record PendingMessage(int GroupId, int Source, int Tag, ScalarType DType, long[] Shape, byte[] Data);
}

/// <summary>A receive waiting for its message; completion copies the bytes or records a mismatch.</summary>
internal sealed class PostedReceive(int groupId, int source, int tag, Tensor into, InProcessRequest request)
{
    public int GroupId { get; } = groupId;
    public int Source { get; } = source;
    public int Tag { get; } = tag;

    public void Complete(ScalarType dtype, long[] shape, ReadOnlySpan<byte> data)
    {
        long elements = shape.Aggregate(1L, (a, b) => a * b);
        if (dtype != into.dtype || elements != into.numel())
        {
            request.Fail(new CommunicationException(
                $"Receive from rank {Source} (tag {Tag}) expected {TensorBuffers.Describe(into.dtype, into.numel())} " +
                $"but rank {Source} sent {TensorBuffers.Describe(dtype, elements)} (shape [{string.Join(", ", shape)}])."));
            return;
        }
        data.CopyTo(TensorBuffers.Bytes(into));
        request.Succeed();
    }
}

/// <summary>Completion handle of an in-process transfer.</summary>
internal sealed class InProcessRequest(InProcessJob job, int worldRank, int peerWorldRank, string description) : ICommRequest
{
    private readonly ManualResetEventSlim _done = new();
    private Exception? _failure;

    public bool IsCompleted => _done.IsSet;

    public void Succeed()
    {
        job.NoteProgress();
        _done.Set();
    }

    public void Fail(Exception failure)
    {
        _failure = failure;
        job.NoteProgress();
        _done.Set();
    }

    public void Wait()
    {
        job.Wait(worldRank, _done, () => description, () => [peerWorldRank]);
        if (_failure is not null) throw _failure;
    }
}

/// <summary>
/// The meeting point of a collective: every member contributes a value and gets everybody's, indexed by group rank.
/// Generations keep back-to-back collectives apart.
/// </summary>
internal sealed class Rendezvous(InProcessJob job, int[] worldRanks)
{
    private readonly int size = worldRanks.Length;
    private readonly object _lock = new();
    private object?[] _contributions = new object?[worldRanks.Length];
    private bool[] _arrivedRanks = new bool[worldRanks.Length]; // who has contributed to the current generation
    private int _arrived;
    private long _generation;
    private object?[]? _lastResult;
    private readonly ManualResetEventSlim[] _released = Enumerable.Range(0, 2).Select(_ => new ManualResetEventSlim()).ToArray();

    public object?[] Exchange(int groupRank, int worldRank, object? value, string operation)
    {
        string description = TrainingPosition.Describe($"{operation} (collective of world ranks {string.Join(",", worldRanks)})");
        ManualResetEventSlim released;
        long generation;
        lock (_lock)
        {
            generation = _generation;
            released = _released[generation % 2];
            _contributions[groupRank] = value;
            _arrivedRanks[groupRank] = true;
            if (++_arrived == size)
            {
                _lastResult = _contributions;
                _contributions = new object?[size];
                _arrivedRanks = new bool[size];
                _arrived = 0;
                _generation++;
                _released[_generation % 2].Reset(); // the next generation's event; nobody waits on it yet
                job.NoteProgress();
                job.NoteCompleted(worldRank, description);
                released.Set();
                return _lastResult;
            }
        }
        job.Wait(worldRank, released, () => description, () => Missing(generation));
        lock (_lock)
        {
            // Generation g's result stays readable until generation g+1 completes, which needs this rank to arrive.
            return _lastResult!;
        }
    }

    /// <summary>World ranks that have not yet arrived at <paramref name="generation"/> (none once it completed).</summary>
    private int[] Missing(long generation)
    {
        lock (_lock)
        {
            if (_generation != generation) return [];
            return Enumerable.Range(0, size).Where(r => !_arrivedRanks[r]).Select(r => worldRanks[r]).ToArray();
        }
    }
}

/// <summary>What the members of one in-process communicator share.</summary>
internal sealed class InProcessGroup(InProcessJob job, int id, int[] worldRanks)
{
    public InProcessJob Job { get; } = job;
    public int Id { get; } = id;
    public int[] WorldRanks { get; } = worldRanks;
    public Rendezvous Rendezvous { get; } = new(job, worldRanks);
}
