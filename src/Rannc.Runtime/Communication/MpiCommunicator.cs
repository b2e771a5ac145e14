using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;
using MpiNative = MPI.Unsafe;

namespace Rannc.Communication;

/// <summary>
/// A communicator over MPI (MPI.NET's raw calls on an MPICH-ABI library). Tensor data moves straight from and
/// into the tensors' native storage. Every point-to-point message is preceded by a 16-byte header (dtype, element
/// count) on a companion tag, so a receive into a tensor of the wrong size or dtype fails with a clear message
/// instead of corrupting memory. Messages are split into chunks of at most 1 GiB (MPI counts are 32-bit).
/// </summary>
public sealed class MpiCommunicator : ICommunicator
{
    /// <summary>Bytes per MPI call: well below 2^31-1 so counts fit an int.</summary>
    internal const int ChunkBytes = 1 << 30;

    private readonly int _comm;
    private readonly bool _isWorld;
    private readonly int[] _worldRanks; // the watchdog names and tracks peers by world rank
    private readonly MpiDeadline _deadline;
    private bool _disposed;

    private MpiCommunicator(int comm, bool isWorld, MpiDeadline deadline)
    {
        _comm = comm;
        _isWorld = isWorld;
        _deadline = deadline;
        MpiEnvironment.Check(MpiNative.MPI_Comm_rank(comm, out int rank), "MPI_Comm_rank");
        MpiEnvironment.Check(MpiNative.MPI_Comm_size(comm, out int size), "MPI_Comm_size");
        Rank = rank;
        Size = size;
        _worldRanks = new int[size];
        if (isWorld)
        {
            for (int r = 0; r < size; r++) _worldRanks[r] = r;
        }
        else
        {
            // Every member calls this right after the split, so this small blocking gather cannot hang.
            MpiEnvironment.Check(MpiNative.MPI_Comm_rank(MpiNative.MPI_COMM_WORLD, out int worldRank), "MPI_Comm_rank");
            unsafe
            {
                fixed (int* all = _worldRanks)
                {
                    MpiEnvironment.Check(MpiNative.MPI_Allgather((IntPtr)(&worldRank), 1, MpiNative.MPI_INT, (IntPtr)all, 1,
                        MpiNative.MPI_INT, comm), "MPI_Allgather");
                }
            }
        }
    }

    /// <summary>
    /// Initialises MPI (thread level MULTIPLE) and returns the world communicator; rank and size come from the
    /// launcher. A program started without a launcher is a single rank. Disposing it finalises MPI.
    /// </summary>
    public static MpiCommunicator InitializeWorld()
    {
        MpiEnvironment.Initialize();
        var deadline = new MpiDeadline(Watchdog.TimeoutFromEnvironment());
        // Environment.Exit inside the delegate skips RankLauncher's notice; the others should still hear of it.
        AppDomain.CurrentDomain.ProcessExit += (_, _) => MpiWatchdog.AnnounceLeaving(deadline.Timeout);
        return new MpiCommunicator(MpiNative.MPI_COMM_WORLD, isWorld: true, deadline);
    }

    public int Rank { get; }

    public int Size { get; }

    public TimeSpan WaitTimeout
    {
        get => _deadline.Timeout;
        set => _deadline.Timeout = Watchdog.CheckTimeout(value);
    }

    public void Send(Tensor tensor, int destination, int tag) => StartSend(tensor, destination, tag).Wait();

    public void Receive(Tensor into, int source, int tag) => StartReceive(into, source, tag).Wait();

    public ICommRequest StartSend(Tensor tensor, int destination, int tag)
    {
        TensorBuffers.CheckPointToPoint(tensor, destination, Size, tag, "Send");
        var request = new MpiRequest(this, tensor, destination, $"Send to rank {_worldRanks[destination]} tag {tag}");
        MessageHeader.Write(request.Header, tensor.dtype, tensor.numel());
        request.Add(Isend(request.Header, MessageHeader.Bytes, destination, HeaderTag(tag)));
        foreach ((IntPtr address, int count) in Chunks(tensor))
            request.Add(Isend(address, count, destination, DataTag(tag)));
        return request;
    }

    public ICommRequest StartReceive(Tensor into, int source, int tag)
    {
        TensorBuffers.CheckPointToPoint(into, source, Size, tag, "Receive");
        var request = new MpiRequest(this, into, source, $"Receive from rank {_worldRanks[source]} tag {tag}");
        request.Add(Irecv(request.Header, MessageHeader.Bytes, source, HeaderTag(tag)));
        foreach ((IntPtr address, int count) in Chunks(into))
            request.Add(Irecv(address, count, source, DataTag(tag)));
        request.ExpectHeader(source, tag);
        return request;
    }

    public void AllReduce(Tensor tensor, ReduceOp op) => AllReduce([tensor], op);

    public void AllReduce(IReadOnlyList<Tensor> tensors, ReduceOp op)
    {
        TensorBuffers.CheckReducible(tensors, op);
        CheckSameEverywhere(Signature(tensors), "AllReduce", "the tensors' count, dtypes or sizes differ between ranks");
        using var noGrad = torch.no_grad();
        foreach (Tensor tensor in tensors)
        {
            ScalarType accumulate = TensorBuffers.ReductionType(tensor.dtype);
            if (TensorBuffers.IsComplex(tensor.dtype))
            {
                // A complex sum is the sum of the real and imaginary parts: reduce the same memory as float pairs.
                using Tensor parts = torch.view_as_real(tensor);
                ReduceInPlace(parts, op);
            }
            else if (accumulate != tensor.dtype)
            {
                // MPI has no 16-bit float sum: reduce a float32 copy, as the in-process implementation does.
                using Tensor wide = tensor.to(accumulate);
                ReduceInPlace(wide, op);
                tensor.copy_(wide);
            }
            else
            {
                ReduceInPlace(tensor, op);
            }
        }
    }

    private void ReduceInPlace(Tensor tensor, ReduceOp op)
    {
        int dataType = ElementType(tensor.dtype);
        int mpiOp = op == ReduceOp.Max ? MpiNative.MPI_MAX : MpiNative.MPI_SUM;
        foreach ((IntPtr address, int count) in Chunks(tensor))
        {
            int request;
            unsafe
            {
                MpiEnvironment.Check(MpiCollectives.Iallreduce(MpiEnvironment.InPlace, address, count / (int)tensor.ElementSize,
                    dataType, mpiOp, _comm, &request), "MPI_Iallreduce");
            }
            WaitCollective(request, $"AllReduce of {TensorBuffers.Describe(tensor.dtype, tensor.numel())}", (long)count * Size);
        }
        if (op == ReduceOp.Average) tensor.div_(Size);
    }

    public void Broadcast(Tensor tensor, int root)
    {
        TensorBuffers.CheckTransferable(tensor, "Broadcast");
        TensorBuffers.CheckPeer(root, Size, nameof(root));
        // Everyone compares its tensor with the root's before any data moves.
        long[] rootShape = [(long)tensor.dtype, tensor.numel()];
        BroadcastBytes(MemoryMarshal.AsBytes(rootShape.AsSpan()), root);
        if (rootShape[0] != (long)tensor.dtype || rootShape[1] != tensor.numel())
        {
            throw new CommunicationException(
                $"Broadcast: rank {root} sends {TensorBuffers.Describe((ScalarType)rootShape[0], rootShape[1])} " +
                $"but rank {Rank} expects {TensorBuffers.Describe(tensor.dtype, tensor.numel())}.");
        }
        foreach ((IntPtr address, int count) in Chunks(tensor))
            IbcastAndWait(address, count, root, $"Broadcast of {TensorBuffers.Describe(tensor.dtype, tensor.numel())} from rank {_worldRanks[root]}");
    }

    public void Barrier() => BarrierNamed("Barrier");

    private void BarrierNamed(string what)
    {
        int request;
        unsafe
        {
            MpiEnvironment.Check(MpiCollectives.Ibarrier(_comm, &request), "MPI_Ibarrier");
        }
        WaitCollective(request, what);
    }

    private void IbcastAndWait(IntPtr address, int bytes, int root, string what)
    {
        int request;
        unsafe
        {
            MpiEnvironment.Check(MpiCollectives.Ibcast(address, bytes, MpiNative.MPI_BYTE, root, _comm, &request), "MPI_Ibcast");
        }
        WaitCollective(request, what, (long)bytes * Size);
    }

    /// <summary>Waits for one collective request under the watchdog; every member of this group is awaited.</summary>
    private void WaitCollective(int request, string what, long bytes = 0)
    {
        string description = TrainingPosition.Describe($"{what} (collective of world ranks {string.Join(",", _worldRanks)})");
        MpiWatchdog.WaitAll([request], () => description, _worldRanks, bytes, _deadline.Timeout);
    }

    public T[] AllGather<T>(T value)
    {
        byte[] mine = JsonSerializer.SerializeToUtf8Bytes(value);
        var lengths = new int[Size];
        unsafe
        {
            int myLength = mine.Length;
            fixed (int* lengthsPtr = lengths)
            {
                int request;
                MpiEnvironment.Check(MpiCollectives.Iallgather((IntPtr)(&myLength), 1, MpiNative.MPI_INT, (IntPtr)lengthsPtr, 1,
                    MpiNative.MPI_INT, _comm, &request), "MPI_Iallgather");
                WaitCollective(request, "AllGather (lengths)");
            }
            var offsets = new int[Size];
            for (int r = 1; r < Size; r++) offsets[r] = offsets[r - 1] + lengths[r - 1];
            var all = new byte[offsets[^1] + lengths[^1]];
            fixed (byte* minePtr = mine)
            fixed (byte* allPtr = all)
            fixed (int* lengthsPtr = lengths)
            fixed (int* offsetsPtr = offsets)
            {
                int request;
                MpiEnvironment.Check(MpiCollectives.Iallgatherv((IntPtr)minePtr, mine.Length, MpiNative.MPI_BYTE, (IntPtr)allPtr,
                    lengthsPtr, offsetsPtr, MpiNative.MPI_BYTE, _comm, &request), "MPI_Iallgatherv");
                WaitCollective(request, $"AllGather of {all.Length} bytes", all.Length);
            }
            return Enumerable.Range(0, Size)
                .Select(r => JsonSerializer.Deserialize<T>(all.AsSpan(offsets[r], lengths[r]))!)
                .ToArray();
        }
    }

    public ICommunicator Split(int color, int key)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(color);
        // MPI_Comm_split has no non-blocking form: a barrier under the watchdog first, so the split itself cannot hang.
        BarrierNamed($"Split (color {color})");
        MpiEnvironment.Check(MpiNative.MPI_Comm_split(_comm, color, key, out int newComm), "MPI_Comm_split");
        return new MpiCommunicator(newComm, isWorld: false, _deadline);
    }

    /// <summary>
    /// The lowest rank of this group on this rank's host. MPICH answers MPI_Comm_split_type(MPI_COMM_TYPE_SHARED) from
    /// where the launcher placed each rank, so ranks that hydra started on different hosts differ even when the hosts
    /// share a name. Every rank must call it.
    /// </summary>
    public int FirstRankOnThisHost()
    {
        // Like MPI_Comm_split, the split has no non-blocking form: a barrier under the watchdog first.
        BarrierNamed("host discovery");
        int local;
        unsafe
        {
            MpiEnvironment.Check(MpiCollectives.CommSplitType(_comm, MpiCollectives.CommTypeShared, Rank, MpiCollectives.InfoNull, &local),
                "MPI_Comm_split_type");
        }
        try
        {
            int mine = Rank;
            int first;
            unsafe
            {
                MpiEnvironment.Check(MpiNative.MPI_Allreduce((IntPtr)(&mine), (IntPtr)(&first), 1, MpiNative.MPI_INT, MpiNative.MPI_MIN, local),
                    "MPI_Allreduce");
            }
            return first;
        }
        finally
        {
            MpiNative.MPI_Comm_free(ref local);
        }
    }

    [System.Diagnostics.CodeAnalysis.DoesNotReturn]
    public void Abort(string message) => AbortJob(message);

    /// <summary>Prints why and ends every rank of the job with exit code 1 (MPI_Abort).</summary>
    [System.Diagnostics.CodeAnalysis.DoesNotReturn]
    internal static void AbortJob(string message)
    {
        MpiNative.MPI_Comm_rank(MpiNative.MPI_COMM_WORLD, out int worldRank);
        Console.Out.Flush();
        Console.Error.WriteLine($"Rannc: rank {worldRank} aborts the job: {message}");
        Console.Error.Flush();
        // The launcher forwards output asynchronously and stops forwarding when it kills the job: give it a moment
        // so the reason for the abort reaches the user.
        Thread.Sleep(500);
        MpiNative.MPI_Abort(MpiNative.MPI_COMM_WORLD, 1);
        Environment.Exit(1); // MPI_Abort does not return; this line is for the compiler and for broken MPI libraries
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        if (_isWorld)
        {
            MpiEnvironment.FinalizeMpi(_deadline.Timeout);
        }
        else
        {
            int comm = _comm;
            MpiNative.MPI_Comm_free(ref comm);
        }
    }

    private static int HeaderTag(int tag) => 2 * tag;

    private static int DataTag(int tag) => 2 * tag + 1;

    private int Isend(IntPtr buffer, int bytes, int destination, int tag)
    {
        MpiEnvironment.Check(MpiNative.MPI_Isend(buffer, bytes, MpiNative.MPI_BYTE, destination, tag, _comm, out int request), "MPI_Isend");
        return request;
    }

    private int Irecv(IntPtr buffer, int bytes, int source, int tag)
    {
        MpiEnvironment.Check(MpiNative.MPI_Irecv(buffer, bytes, MpiNative.MPI_BYTE, source, tag, _comm, out int request), "MPI_Irecv");
        return request;
    }

    /// <summary>The tensor's storage as (address, bytes) pieces of at most <see cref="ChunkBytes"/>; none for an empty tensor.</summary>
    private static IEnumerable<(IntPtr Address, int Bytes)> Chunks(Tensor tensor)
    {
        IntPtr start = TensorBuffers.Address(tensor);
        long total = TensorBuffers.ByteCount(tensor);
        for (long offset = 0; offset < total; offset += ChunkBytes)
            yield return (start + (nint)offset, (int)Math.Min(ChunkBytes, total - offset));
    }

    private static int ElementType(ScalarType dtype) => dtype switch
    {
        ScalarType.Float32 => MpiNative.MPI_FLOAT,
        ScalarType.Float64 => MpiNative.MPI_DOUBLE,
        ScalarType.Int64 => MpiEnvironment.Int64Type,
        ScalarType.Int32 => MpiNative.MPI_INT,
        ScalarType.Int16 => MpiNative.MPI_SHORT,
        ScalarType.Int8 => MpiNative.MPI_SIGNED_CHAR,
        ScalarType.Byte => MpiNative.MPI_UNSIGNED_CHAR,
        ScalarType.Bool => MpiNative.MPI_UNSIGNED_CHAR, // stored as one byte, 0 or 1: Max is logical or
        _ => throw new ArgumentException($"AllReduce does not support {dtype} directly."),
    };

    private static long Signature(IReadOnlyList<Tensor> tensors)
    {
        long signature = tensors.Count;
        foreach (Tensor t in tensors) signature = unchecked(signature * 1_000_003 + t.numel() * 31 + (long)t.dtype);
        return signature;
    }

    /// <summary>Throws on every rank when <paramref name="value"/> differs between ranks (one small all-reduce).</summary>
    private void CheckSameEverywhere(long value, string operation, string problem)
    {
        long[] minMax = [value, -value];
        unsafe
        {
            fixed (long* p = minMax)
            {
                int request;
                MpiEnvironment.Check(MpiCollectives.Iallreduce(MpiEnvironment.InPlace, (IntPtr)p, 2, MpiEnvironment.Int64Type,
                    MpiNative.MPI_MAX, _comm, &request), "MPI_Iallreduce");
                WaitCollective(request, $"{operation} (checking that all ranks pass the same tensors)");
            }
        }
        if (minMax[0] != value || -minMax[1] != value) throw new CommunicationException($"{operation}: {problem}.");
    }

    private void BroadcastBytes(Span<byte> bytes, int root)
    {
        unsafe
        {
            fixed (byte* p = bytes)
                IbcastAndWait((IntPtr)p, bytes.Length, root, $"Broadcast of the tensor's dtype and size from rank {_worldRanks[root]}");
        }
    }

    /// <summary>(dtype, element count) sent ahead of every point-to-point message.</summary>
    internal static class MessageHeader
    {
        public const int Bytes = 16;

        public static unsafe void Write(IntPtr header, ScalarType dtype, long elements)
        {
            var words = (long*)header;
            words[0] = (long)dtype;
            words[1] = elements;
        }

        public static unsafe (ScalarType DType, long Elements) Read(IntPtr header)
        {
            var words = (long*)header;
            return ((ScalarType)words[0], words[1]);
        }
    }

    /// <summary>The MPI requests of one transfer (header and data chunks), the tensor they use, and the header memory.</summary>
    private sealed class MpiRequest : ICommRequest
    {
        private readonly List<int> _requests = [];
        private readonly MpiCommunicator _owner;
        private readonly Tensor _tensor; // referenced until completion so its storage stays alive
        private readonly string _description;
        private readonly int _peerWorldRank;
        private (int Source, int Tag)? _expectHeaderFrom;
        private bool _completed;

        public MpiRequest(MpiCommunicator owner, Tensor tensor, int peer, string description)
        {
            _owner = owner;
            _tensor = tensor;
            _peerWorldRank = owner._worldRanks[peer];
            _description = TrainingPosition.Describe(
                $"{description} ({TensorBuffers.ByteCount(tensor)} bytes, {(owner._isWorld ? "world" : "sub-group")} communicator)");
            Header = Marshal.AllocHGlobal(MessageHeader.Bytes);
        }

        public IntPtr Header { get; }

        public bool IsCompleted
        {
            get
            {
                if (_completed) return true;
                // MPI_Test would free completed requests; peek instead and leave them to Wait.
                return _requests.All(MpiEnvironment.RequestIsComplete);
            }
        }

        public void Add(int request) => _requests.Add(request);

        public void ExpectHeader(int source, int tag) => _expectHeaderFrom = (source, tag);

        public void Wait()
        {
            if (_completed) return;
            try
            {
                MpiWatchdog.WaitAll(_requests, () => _description, [_peerWorldRank], TensorBuffers.ByteCount(_tensor), _owner.WaitTimeout,
                    _expectHeaderFrom is { } from ? () => CheckHeader(from.Source, from.Tag) : null);
            }
            finally
            {
                _completed = true;
                Marshal.FreeHGlobal(Header);
                GC.KeepAlive(_tensor);
                GC.KeepAlive(_owner);
            }
        }

        private void CheckHeader(int source, int tag)
        {
            (ScalarType dtype, long elements) = MessageHeader.Read(Header);
            if (dtype != _tensor.dtype || elements != _tensor.numel())
            {
                throw new CommunicationException(
                    $"Receive from rank {source} (tag {tag}) expected {TensorBuffers.Describe(_tensor.dtype, _tensor.numel())} " +
                    $"but rank {source} sent {TensorBuffers.Describe(dtype, elements)}.");
            }
        }
    }
}
