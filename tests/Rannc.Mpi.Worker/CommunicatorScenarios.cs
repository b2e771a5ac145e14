using Rannc.Communication;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Mpi.Worker;

/// <summary>
/// The communicator contract as scenarios that every rank runs. The same code runs on in-process ranks (unit tests)
/// and on MPI processes (this program under mpiexec), so both implementations meet one definition of correct.
/// A scenario throws <see cref="ScenarioFailedException"/> when the communicator misbehaves.
/// </summary>
public static class CommunicatorScenarios
{
    /// <summary>Scenarios that must succeed on any even number of ranks ≥ 2.</summary>
    public static readonly IReadOnlyDictionary<string, Action<ICommunicator>> Passing = new Dictionary<string, Action<ICommunicator>>
    {
        ["ping-pong-all-dtypes"] = PingPongAllDtypes,
        ["ping-pong-64mb"] = PingPongLarge,
        ["stage-values-all-dtypes"] = StageValuesAllDtypes,
        ["all-reduce"] = AllReduceMatchesLocalResult,
        ["broadcast"] = BroadcastFromLastRank,
        ["split-2x2"] = SplitIntoPairs,
        ["non-blocking-both-directions"] = NonBlockingBothDirections,
        ["two-threads-sending"] = TwoThreadsOfOneRankSending,
        ["all-gather-objects"] = AllGatherObjects,
    };

    /// <summary>Scenarios that must make the job fail with the given text in its error output.</summary>
    public static readonly IReadOnlyDictionary<string, (Action<ICommunicator> Run, string ExpectedError)> Failing =
        new Dictionary<string, (Action<ICommunicator>, string)>
        {
            ["receive-size-mismatch"] = (ReceiveSizeMismatch, "expected Float32 with 12 element(s) but rank 0 sent Float32 with 10 element(s)"),
            ["receive-dtype-mismatch"] = (ReceiveDtypeMismatch, "expected Float64 with 4 element(s) but rank 0 sent Int64 with 4 element(s)"),
            ["failing-rank"] = (FailingRank, "deliberate failure on rank 1"),
        };

    public static readonly IReadOnlyList<ScalarType> DTypes =
        [ScalarType.Float32, ScalarType.Float64, ScalarType.BFloat16, ScalarType.Float16, ScalarType.ComplexFloat32, ScalarType.ComplexFloat64,
            ScalarType.Int64, ScalarType.Int32, ScalarType.Int16, ScalarType.Int8, ScalarType.Byte, ScalarType.Bool];

    public static readonly IReadOnlyList<long[]> Shapes = [[], [1], [7], [3, 5, 17], [2, 0, 3], [1023, 3]];

    /// <summary>A deterministic random tensor; any rank can recreate any other rank's with the same seed.</summary>
    public static Tensor RandomTensor(ScalarType dtype, long[] shape, long seed)
    {
        using var generator = new Generator((ulong)seed);
        return dtype switch
        {
            ScalarType.Bool => torch.rand(shape, generator: generator) > 0.5,
            ScalarType.Int64 => torch.randint(-1_000_000_000_000L, 1_000_000_000_000L, shape, ScalarType.Int64, generator: generator),
            // Every bit pattern of the element: the full range of each integer type.
            ScalarType.Int32 => torch.randint(int.MinValue, int.MaxValue, shape, ScalarType.Int32, generator: generator),
            ScalarType.Int16 => torch.randint(short.MinValue, short.MaxValue + 1, shape, ScalarType.Int16, generator: generator),
            ScalarType.Int8 => torch.randint(sbyte.MinValue, sbyte.MaxValue + 1, shape, ScalarType.Int8, generator: generator),
            ScalarType.Byte => torch.randint(0, 256, shape, ScalarType.Byte, generator: generator),
            // randn of a complex dtype draws both parts.
            _ => torch.randn(shape, dtype, generator: generator),
        };
    }

    /// <summary>Small integers, exactly representable in every dtype, so sums are exact in any order.</summary>
    public static Tensor SmallIntegerTensor(ScalarType dtype, long[] shape, long seed)
    {
        using var generator = new Generator((ulong)seed);
        if (dtype == ScalarType.Bool) return torch.rand(shape, generator: generator) > 0.7;
        if (dtype == ScalarType.Byte) return torch.randint(0, 9, shape, ScalarType.Int64, generator: generator).to(dtype);
        if (TensorBuffers.IsComplex(dtype))
        {
            // Both parts non-zero, so a reduction that dropped or swapped one would show.
            using Tensor real = torch.randint(-8, 9, shape, ScalarType.Float64, generator: generator);
            using Tensor imaginary = torch.randint(-8, 9, shape, ScalarType.Float64, generator: generator);
            return torch.complex(real, imaginary).to(dtype);
        }
        return torch.randint(-8, 9, shape, ScalarType.Int64, generator: generator).to(dtype);
    }

    private static void PingPongAllDtypes(ICommunicator comm)
    {
        int partner = comm.Rank ^ 1;
        int tag = 0;
        foreach (ScalarType dtype in DTypes)
        {
            foreach (long[] shape in Shapes)
            {
                PingPong(comm, partner, dtype, shape, seed: 1000 + tag, tag);
                tag++;
            }
        }
    }

    /// <summary>
    /// What crosses a stage boundary (<see cref="Rannc.Execution.ValueTransfer"/>): a tensor of every dtype (some
    /// non-contiguous views), arrays of tensors of mixed dtypes (the result of <c>chunk</c>, and an empty one), shapes
    /// and numbers, each arriving bit-identical with its dtype and shape, in the order sent on one tag.
    /// </summary>
    private static void StageValuesAllDtypes(ICommunicator comm)
    {
        int partner = comm.Rank ^ 1;
        List<object> Values()
        {
            var values = new List<object>();
            int seed = 2000;
            foreach (ScalarType dtype in DTypes)
            {
                values.Add(RandomTensor(dtype, [3, 5], seed++));
                values.Add(RandomTensor(dtype, [4, 6], seed++).transpose(0, 1)); // a view: sent as its values, contiguous
            }
            values.Add(RandomTensor(ScalarType.Float64, [2, 9], seed++).chunk(3, -1));
            values.Add(DTypes.Select(dtype => RandomTensor(dtype, [2, 3], 3000 + (int)dtype)).ToArray());
            values.Add(Array.Empty<Tensor>());
            values.Add(new long[] { 4, -1, 7 });
            values.Add(42L);
            values.Add(2.5);
            values.Add(true);
            return values;
        }

        const int tag = 7;
        List<object> expected = Values();
        if (comm.Rank % 2 == 0)
        {
            var requests = expected.SelectMany(v => Rannc.Execution.ValueTransfer.StartSend(comm, v, partner, tag)).ToList();
            CommRequests.WaitAll(requests);
            return;
        }
        for (int i = 0; i < expected.Count; i++)
        {
            object received = Rannc.Execution.ValueTransfer.Receive(comm, partner, tag);
            RequireSameValue(expected[i], received, $"value {i}");
        }
    }

    private static void RequireSameValue(object expected, object actual, string what)
    {
        switch (expected)
        {
            case Tensor e:
                Require(actual is Tensor, $"{what}: a {actual.GetType().Name} arrived instead of a tensor");
                var a = (Tensor)actual;
                Require(a.dtype == e.dtype, $"{what}: dtype {a.dtype} arrived, {e.dtype} was sent");
                Require(a.shape.SequenceEqual(e.shape), $"{what} ({e.dtype}): shape [{string.Join(",", a.shape)}] arrived, [{string.Join(",", e.shape)}] was sent");
                using (Tensor contiguous = e.contiguous())
                    Require(TensorBuffers.Bytes(contiguous).SequenceEqual(TensorBuffers.Bytes(a)), $"{what} ({e.dtype}): bytes differ");
                break;
            case Tensor[] e:
                Require(actual is Tensor[] array && array.Length == e.Length, $"{what}: an array of {e.Length} tensors was sent, {actual.GetType().Name} arrived");
                for (int i = 0; i < e.Length; i++) RequireSameValue(e[i], ((Tensor[])actual)[i], $"{what}[{i}]");
                break;
            case long[] e:
                Require(actual is long[] shape && shape.SequenceEqual(e), $"{what}: the shape differs");
                break;
            default:
                Require(Equals(expected, actual), $"{what}: {actual} arrived, {expected} was sent");
                break;
        }
    }

    private static void PingPongLarge(ICommunicator comm) =>
        PingPong(comm, comm.Rank ^ 1, ScalarType.Float32, [16 * 1024 * 1024], seed: 7, tag: 1);

    /// <summary>The even rank of each pair sends, the odd one echoes, the even one checks every byte.</summary>
    private static void PingPong(ICommunicator comm, int partner, ScalarType dtype, long[] shape, long seed, int tag)
    {
        string what = $"{dtype}[{string.Join(",", shape)}]";
        if (comm.Rank % 2 == 0)
        {
            using Tensor original = RandomTensor(dtype, shape, seed);
            using Tensor echoed = torch.empty(shape, dtype);
            comm.Send(original, partner, tag);
            comm.Receive(echoed, partner, tag);
            Require(echoed.shape.SequenceEqual(shape), $"{what}: shape changed");
            Require(TensorBuffers.Bytes(original).SequenceEqual(TensorBuffers.Bytes(echoed)), $"{what}: bytes differ after a ping-pong");
        }
        else
        {
            using Tensor received = torch.empty(shape, dtype);
            comm.Receive(received, partner, tag);
            using Tensor expected = RandomTensor(dtype, shape, seed);
            Require(TensorBuffers.Bytes(received).SequenceEqual(TensorBuffers.Bytes(expected)), $"{what}: bytes differ on arrival");
            comm.Send(received, partner, tag);
        }
    }

    private static void AllReduceMatchesLocalResult(ICommunicator comm)
    {
        long[] shape = [5, 33];
        int seed = 0;
        foreach (ReduceOp op in Enum.GetValues<ReduceOp>())
        {
            foreach (ScalarType dtype in DTypes)
            {
                bool defined = !(dtype == ScalarType.Bool && op != ReduceOp.Max) && !(TensorBuffers.IsInteger(dtype) && op == ReduceOp.Average)
                    && !(TensorBuffers.IsComplex(dtype) && op == ReduceOp.Max);
                if (!defined) continue;
                seed++;
                using Tensor mine = SmallIntegerTensor(dtype, shape, seed * 100 + comm.Rank);
                using Tensor expected = ExpectedReduction(dtype, shape, op, comm.Size, r => seed * 100 + r);
                comm.AllReduce(mine, op);
                Require(mine.dtype == dtype, $"AllReduce {op} changed the dtype");
                Require(mine.eq(expected).all().item<bool>(), $"AllReduce {op} of {dtype} differs from the local result");
            }
        }

        // Many tensors in one call (a stage's gradients), of different sizes and dtypes.
        var tensors = new[] { SmallIntegerTensor(ScalarType.Float64, [3], 900 + comm.Rank), SmallIntegerTensor(ScalarType.Float32, [2, 2], 950 + comm.Rank) };
        comm.AllReduce(tensors, ReduceOp.Sum);
        using Tensor expected0 = ExpectedReduction(ScalarType.Float64, [3], ReduceOp.Sum, comm.Size, r => 900 + r);
        using Tensor expected1 = ExpectedReduction(ScalarType.Float32, [2, 2], ReduceOp.Sum, comm.Size, r => 950 + r);
        Require(tensors[0].eq(expected0).all().item<bool>() && tensors[1].eq(expected1).all().item<bool>(), "AllReduce of a tensor list differs");
        foreach (Tensor t in tensors) t.Dispose();
    }

    private static Tensor ExpectedReduction(ScalarType dtype, long[] shape, ReduceOp op, int size, Func<int, long> seedOf)
    {
        ScalarType wide = dtype is ScalarType.Float16 or ScalarType.BFloat16 ? ScalarType.Float32 : dtype;
        Tensor acc = SmallIntegerTensor(dtype, shape, seedOf(0)).to(wide);
        for (int r = 1; r < size; r++)
        {
            using Tensor other = SmallIntegerTensor(dtype, shape, seedOf(r)).to(wide);
            acc = op == ReduceOp.Max ? torch.maximum(acc, other) : acc + other;
        }
        if (op == ReduceOp.Average) acc = acc / size;
        return acc.to(dtype);
    }

    private static void BroadcastFromLastRank(ICommunicator comm)
    {
        int root = comm.Size - 1;
        int seed = 0;
        foreach (ScalarType dtype in DTypes)
        {
            using Tensor expected = RandomTensor(dtype, [4, 9], 300 + seed);
            using Tensor tensor = comm.Rank == root ? expected.clone() : torch.zeros([4, 9], dtype);
            comm.Broadcast(tensor, root);
            Require(TensorBuffers.Bytes(tensor).SequenceEqual(TensorBuffers.Bytes(expected)), $"Broadcast of {dtype} differs");
            seed++;
        }
    }

    /// <summary>Pairs {0,1}, {2,3}, …: group ranks follow the key (reversed here), collectives stay inside a pair.</summary>
    private static void SplitIntoPairs(ICommunicator comm)
    {
        using ICommunicator pair = comm.Split(color: comm.Rank / 2, key: -comm.Rank);
        Require(pair.Size == 2, $"pair size {pair.Size}");
        int expectedRank = comm.Rank % 2 == 0 ? 1 : 0; // key = -rank puts the higher world rank first
        Require(pair.Rank == expectedRank, $"world rank {comm.Rank} got pair rank {pair.Rank}, expected {expectedRank}");

        using Tensor value = torch.tensor(new double[] { comm.Rank });
        pair.AllReduce(value, ReduceOp.Sum);
        int first = comm.Rank / 2 * 2;
        Require(value.item<double>() == first + first + 1, $"pair sum {value.item<double>()}");

        // Point-to-point inside the pair uses pair ranks; the same tag on the world communicator must not interfere.
        using Tensor mine = torch.full([3], comm.Rank, ScalarType.Int64);
        using Tensor theirs = torch.empty([3], ScalarType.Int64);
        ICommRequest receive = pair.StartReceive(theirs, 1 - pair.Rank, tag: 5);
        pair.Send(mine, 1 - pair.Rank, tag: 5);
        receive.Wait();
        Require(theirs[0].item<long>() == (comm.Rank ^ 1), "pair message came from the wrong rank");

        using ICommunicator everyone = comm.Split(color: 0, key: comm.Rank);
        Require(everyone.Size == comm.Size && everyone.Rank == comm.Rank, "a split with one color should keep the group");
        everyone.Barrier();
    }

    private static void NonBlockingBothDirections(ICommunicator comm)
    {
        int partner = comm.Rank ^ 1;
        for (int round = 0; round < 3; round++)
        {
            using Tensor outgoing = RandomTensor(ScalarType.Float32, [1024, 1024], 500 + comm.Rank * 10 + round);
            using Tensor incoming = torch.empty([1024, 1024], ScalarType.Float32);
            ICommRequest receive = comm.StartReceive(incoming, partner, tag: 9);
            ICommRequest send = comm.StartSend(outgoing, partner, tag: 9);
            CommRequests.WaitAll([send, receive]);
            Require(receive.IsCompleted && send.IsCompleted, "requests not completed after WaitAll");
            using Tensor expected = RandomTensor(ScalarType.Float32, [1024, 1024], 500 + partner * 10 + round);
            Require(TensorBuffers.Bytes(incoming).SequenceEqual(TensorBuffers.Bytes(expected)), $"round {round}: wrong bytes");
        }
    }

    /// <summary>Two threads of each rank exchange messages with the partner at the same time, on their own tags.</summary>
    private static void TwoThreadsOfOneRankSending(ICommunicator comm)
    {
        int partner = comm.Rank ^ 1;
        const int messages = 20;
        var failures = new Exception?[2];
        var threads = Enumerable.Range(0, 2).Select(thread => new Thread(() =>
        {
            try
            {
                int tag = 100 + thread;
                for (int i = 0; i < messages; i++)
                {
                    using Tensor outgoing = torch.full([256 * 1024], comm.Rank * 1000 + thread * 100 + i, ScalarType.Float64);
                    using Tensor incoming = torch.empty([256 * 1024], ScalarType.Float64);
                    ICommRequest receive = comm.StartReceive(incoming, partner, tag);
                    comm.Send(outgoing, partner, tag);
                    receive.Wait();
                    double expected = partner * 1000 + thread * 100 + i;
                    Require(incoming.min().item<double>() == expected && incoming.max().item<double>() == expected,
                        $"thread {thread} message {i}: wrong content");
                }
            }
            catch (Exception e)
            {
                failures[thread] = e;
            }
        })).ToArray();
        foreach (Thread t in threads) t.Start();
        foreach (Thread t in threads) t.Join();
        foreach (Exception? failure in failures)
        {
            if (failure is not null) throw new ScenarioFailedException($"a sending thread failed: {failure.Message}", failure);
        }
    }

    public sealed record RankStatus(int Rank, string Name, double Measured, int[] Stages);

    private static void AllGatherObjects(ICommunicator comm)
    {
        RankStatus[] all = comm.AllGather(new RankStatus(comm.Rank, $"rank-{comm.Rank}", comm.Rank * 0.5, [comm.Rank, 7]));
        Require(all.Length == comm.Size, "AllGather length");
        for (int r = 0; r < comm.Size; r++)
        {
            Require(all[r].Rank == r && all[r].Name == $"rank-{r}" && all[r].Measured == r * 0.5 && all[r].Stages.SequenceEqual([r, 7]),
                $"AllGather entry {r} is wrong");
        }
        double[] numbers = comm.AllGather(comm.Rank + 0.25);
        Require(numbers.SequenceEqual(Enumerable.Range(0, comm.Size).Select(r => r + 0.25)), "AllGather of numbers");
    }

    private static void ReceiveSizeMismatch(ICommunicator comm)
    {
        if (comm.Rank == 0) comm.Send(torch.zeros([10], ScalarType.Float32), 1, tag: 3);
        if (comm.Rank == 1) comm.Receive(torch.zeros([12], ScalarType.Float32), 0, tag: 3);
        comm.Barrier();
    }

    private static void ReceiveDtypeMismatch(ICommunicator comm)
    {
        if (comm.Rank == 0) comm.Send(torch.zeros([4], ScalarType.Int64), 1, tag: 3);
        if (comm.Rank == 1) comm.Receive(torch.zeros([4], ScalarType.Float64), 0, tag: 3);
        comm.Barrier();
    }

    private static void FailingRank(ICommunicator comm)
    {
        if (comm.Rank == 1) throw new InvalidOperationException("deliberate failure on rank 1");
        // Rank 0 (and any others) would wait forever for a message rank 1 never sends.
        using Tensor never = torch.empty([1]);
        comm.Receive(never, 1, tag: 4);
    }

    private static void Require(bool condition, string message)
    {
        if (!condition) throw new ScenarioFailedException(message);
    }
}

public sealed class ScenarioFailedException(string message, Exception? inner = null) : Exception(message, inner);
