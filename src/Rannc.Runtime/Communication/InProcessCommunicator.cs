using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Communication;

/// <summary>
/// A communicator whose ranks are threads of one process (see <see cref="InProcessLauncher"/>). Sends are buffered
/// and never block; receives match by (communicator, source, tag) in posting order, like MPI. Size and dtype
/// mismatches, bad ranks and deadlocks raise clear errors on the rank that sees them, which stops the whole job.
/// </summary>
public sealed class InProcessCommunicator : ICommunicator
{
    private readonly InProcessGroup _group;
    private readonly int _worldRank;

    internal InProcessCommunicator(InProcessGroup group, int rank)
    {
        _group = group;
        Rank = rank;
        _worldRank = group.WorldRanks[rank];
    }

    public int Rank { get; }

    public int Size => _group.WorldRanks.Length;

    public TimeSpan WaitTimeout
    {
        get => Job.WaitTimeout;
        set => Job.WaitTimeout = Watchdog.CheckTimeout(value);
    }

    internal InProcessJob Job => _group.Job;

    public void Send(Tensor tensor, int destination, int tag) => StartSend(tensor, destination, tag).Wait();

    public void Receive(Tensor into, int source, int tag) => StartReceive(into, source, tag).Wait();

    public ICommRequest StartSend(Tensor tensor, int destination, int tag)
    {
        TensorBuffers.CheckPointToPoint(tensor, destination, Size, tag, "Send");
        ThrowIfStopped();
        Job.MailboxOf(_group.WorldRanks[destination]).Deliver(_group.Id, Rank, tag, tensor);
        var request = new InProcessRequest(Job, _worldRank, _group.WorldRanks[destination],
            TrainingPosition.Describe($"Send to rank {_group.WorldRanks[destination]} tag {tag}"));
        request.Succeed(); // buffered: the data has been copied or delivered
        return request;
    }

    public ICommRequest StartReceive(Tensor into, int source, int tag)
    {
        TensorBuffers.CheckPointToPoint(into, source, Size, tag, "Receive");
        ThrowIfStopped();
        var request = new InProcessRequest(Job, _worldRank, _group.WorldRanks[source],
            TrainingPosition.Describe($"Receive from rank {_group.WorldRanks[source]} tag {tag} ({TensorBuffers.ByteCount(into)} bytes, group {_group.Id})"));
        Job.MailboxOf(_worldRank).Post(new PostedReceive(_group.Id, source, tag, into, request));
        return request;
    }

    public void AllReduce(Tensor tensor, ReduceOp op) => AllReduce([tensor], op);

    public void AllReduce(IReadOnlyList<Tensor> tensors, ReduceOp op)
    {
        TensorBuffers.CheckReducible(tensors, op);
        object?[] all = Exchange(tensors, "AllReduce");
        var lists = all.Cast<IReadOnlyList<Tensor>>().ToArray();
        CheckSameTensors(lists, "AllReduce");

        var results = new Tensor[tensors.Count];
        using (torch.no_grad())
        {
            for (int i = 0; i < tensors.Count; i++)
            {
                // Every rank reduces in rank order, so all ranks get bit-identical results. Half types are
                // accumulated in float32, as the MPI implementation does.
                ScalarType accumulate = TensorBuffers.ReductionType(tensors[i].dtype);
                Tensor acc = lists[0][i].to(accumulate, copy: true);
                for (int r = 1; r < lists.Length; r++)
                {
                    using Tensor other = lists[r][i].to(accumulate);
                    if (op == ReduceOp.Max) acc = ReplaceWith(acc, torch.maximum(acc, other));
                    else acc.add_(other);
                }
                if (op == ReduceOp.Average) acc.div_(Size);
                results[i] = acc;
            }
        }
        Exchange(null, "AllReduce"); // nobody overwrites its tensor while others still read it
        using (torch.no_grad())
        {
            for (int i = 0; i < tensors.Count; i++)
            {
                tensors[i].copy_(results[i]);
                results[i].Dispose();
            }
        }
    }

    public void Broadcast(Tensor tensor, int root)
    {
        TensorBuffers.CheckTransferable(tensor, "Broadcast");
        TensorBuffers.CheckPeer(root, Size, nameof(root));
        object?[] all = Exchange(tensor, "Broadcast");
        var lists = all.Cast<Tensor>().Select(t => (IReadOnlyList<Tensor>)[t]).ToArray();
        CheckSameTensors(lists, "Broadcast");
        if (Rank != root) TensorBuffers.Bytes((Tensor)all[root]!).CopyTo(TensorBuffers.Bytes(tensor));
        Exchange(null, "Broadcast");
    }

    public void Barrier() => Exchange(null, "Barrier");

    public T[] AllGather<T>(T value)
    {
        // JSON both ways, as between processes: a type that cannot travel fails here too, not only under MPI.
        string json = JsonSerializer.Serialize(value);
        return Exchange(json, "AllGather").Select(j => JsonSerializer.Deserialize<T>((string)j!)!).ToArray();
    }

    public ICommunicator Split(int color, int key)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(color);
        var requests = Exchange((color, key), "Split").Cast<(int Color, int Key)>().ToArray();
        int[] members = Enumerable.Range(0, Size)
            .Where(r => requests[r].Color == color)
            .OrderBy(r => requests[r].Key).ThenBy(r => r)
            .ToArray();
        // The first member creates the shared group state; a second exchange hands it to the others.
        InProcessGroup? created = members[0] == Rank
            ? new InProcessGroup(Job, Job.NewGroupId(), members.Select(r => _group.WorldRanks[r]).ToArray())
            : null;
        object?[] groups = Exchange(created, "Split");
        var group = (InProcessGroup)groups[members[0]]!;
        return new InProcessCommunicator(group, Array.IndexOf(members, Rank));
    }

    [System.Diagnostics.CodeAnalysis.DoesNotReturn]
    public void Abort(string message)
    {
        string reason = $"rank {_worldRank} aborted the job: {message}";
        Job.Stop(reason);
        throw new JobAbortedException(reason, isOrigin: true);
    }

    public void Dispose()
    {
        // Nothing to release: the group's state lives as long as its members reference it.
    }

    private object?[] Exchange(object? value, string operation)
    {
        ThrowIfStopped();
        return _group.Rendezvous.Exchange(Rank, _worldRank, value, operation);
    }

    private void ThrowIfStopped()
    {
        if (Job.Cancellation.IsCancellationRequested)
            throw new JobAbortedException($"Rank {_worldRank} stopped: {Job.StopReason ?? "the job was cancelled"}");
    }

    private static Tensor ReplaceWith(Tensor old, Tensor replacement)
    {
        old.Dispose();
        return replacement;
    }

    private void CheckSameTensors(IReadOnlyList<Tensor>[] lists, string operation)
    {
        for (int r = 1; r < lists.Length; r++)
        {
            if (lists[r].Count != lists[0].Count)
                throw new CommunicationException($"{operation}: rank 0 passed {lists[0].Count} tensor(s) but rank {r} passed {lists[r].Count}.");
            for (int i = 0; i < lists[0].Count; i++)
            {
                Tensor a = lists[0][i], b = lists[r][i];
                if (a.dtype != b.dtype || a.numel() != b.numel())
                {
                    throw new CommunicationException(
                        $"{operation}: tensor {i} is {TensorBuffers.Describe(a.dtype, a.numel())} on rank 0 " +
                        $"but {TensorBuffers.Describe(b.dtype, b.numel())} on rank {r}.");
                }
            }
        }
    }
}
