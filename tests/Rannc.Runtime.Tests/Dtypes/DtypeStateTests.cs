using Rannc.Communication;
using Rannc.Execution;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Tests.Dtypes;

/// <summary>
/// State of every dtype through a partitioned run (<see cref="DtypeStateNet"/>): rank 0's initial state reaches every
/// rank, <see cref="RanncModule.StateDict"/> gathers it from the owning stages, and checkpoints round-trip it bit for bit
/// into a different plan and into a plain TorchSharp model.
/// </summary>
public sealed class DtypeStateTests
{
    private const int Batch = 8;
    private const ulong Seed = 11;
    private const double Tolerance = 1e-9;
    private static readonly string[] TrainedNames = ["weight1", "phase", "weight2"];
    private static readonly InProcessOptions Launch = new(Timeout: TimeSpan.FromMinutes(3));

    [Fact]
    public void StateDict_OfEveryDtype_EqualsPlainTrainingOnEveryRank()
    {
        Dictionary<string, Tensor> reference = TrainPlain(steps: 2);
        Dictionary<string, Tensor>[] states = InProcessLauncher.Run(2, comm =>
        {
            using Trainer trainer = new(comm, (2, 1));
            trainer.Steps(2);
            return trainer.Rannc.StateDict();
        }, Launch);
        AssertStateHoldsEveryDtype(reference);
        foreach (Dictionary<string, Tensor> state in states)
        {
            Assert.Equal(reference.Keys.Order(), state.Keys.Order());
            foreach ((string name, Tensor expected) in reference)
            {
                Tensor actual = state[name];
                Assert.Equal(expected.dtype, actual.dtype);
                Assert.Equal(expected.shape, actual.shape);
                if (TrainedNames.Contains(name))
                {
                    // Trained: equal to plain training to rounding.
                    double scale = Math.Max(1e-12, expected.abs().max().item<double>());
                    double difference = (actual - expected).abs().max().item<double>();
                    Assert.True(difference <= Tolerance * scale, $"{name} ({expected.dtype}) differs by {difference:e3}");
                }
                else
                {
                    // Buffers never change: rank 0's bytes, whatever this rank started with.
                    AssertSameBytes(expected, actual, name);
                }
            }
        }
    }

    [Fact]
    public void Checkpoint_OfEveryDtype_RoundTripsBitForBitIntoAnotherPlanAndAPlainModel()
    {
        string directory = Directory.CreateTempSubdirectory("rannc-dtype-checkpoint-").FullName;
        try
        {
            Dictionary<string, Tensor>[] saved = InProcessLauncher.Run(2, comm =>
            {
                using Trainer trainer = new(comm, (2, 1));
                trainer.Steps(2);
                trainer.Rannc.SaveCheckpoint(directory);
                return trainer.Rannc.StateDict();
            }, Launch);
            AssertStateHoldsEveryDtype(saved[0]);

            // Another plan and world size; every rank starts from different values, so only the checkpoint can make them equal.
            Dictionary<string, Tensor>[] loaded = InProcessLauncher.Run(3, comm =>
            {
                using Trainer trainer = new(comm, (1, 3));
                trainer.Steps(1);
                trainer.Rannc.LoadCheckpoint(directory);
                return trainer.Rannc.StateDict();
            }, Launch);
            foreach (Dictionary<string, Tensor> state in loaded)
            {
                Assert.Equal(saved[0].Keys.Order(), state.Keys.Order());
                foreach ((string name, Tensor expected) in saved[0]) AssertSameBytes(expected, state[name], name);
            }

            // One plain TorchSharp file, loaded by a plain model.
            string modelBin = Path.Combine(directory, "model.bin");
            RanncModule.ConsolidateCheckpoint(directory, new DtypeStateNet(Seed + 100), modelBin);
            var plain = new DtypeStateNet(Seed + 200);
            plain.load(modelBin);
            var plainState = plain.state_dict();
            foreach ((string name, Tensor expected) in saved[0]) AssertSameBytes(expected, plainState[name], name);
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    private static void AssertStateHoldsEveryDtype(Dictionary<string, Tensor> state)
    {
        ScalarType[] every =
        [
            ScalarType.Float64, ScalarType.ComplexFloat64, ScalarType.Float16, ScalarType.BFloat16, ScalarType.Float32, ScalarType.ComplexFloat32,
            ScalarType.Bool, ScalarType.Byte, ScalarType.Int8, ScalarType.Int16, ScalarType.Int32, ScalarType.Int64,
        ];
        Assert.Equal(every.Order(), state.Values.Select(t => t.dtype).Distinct().Order());
    }

    private static void AssertSameBytes(Tensor expected, Tensor actual, string name)
    {
        Assert.Equal(expected.dtype, actual.dtype);
        Assert.Equal(expected.shape, actual.shape);
        using Tensor e = expected.detach().contiguous();
        using Tensor a = actual.detach().contiguous();
        Assert.True(TensorBuffers.Bytes(e).SequenceEqual(TensorBuffers.Bytes(a)), $"{name} ({expected.dtype}) is not bit-identical");
    }

    private static Tensor[] BatchOf(int step)
    {
        using var generator = new Generator((ulong)(500 + step));
        return [torch.randn([Batch, DtypeStateNet.Inputs], ScalarType.Float64, generator: generator),
            torch.randint(0, DtypeStateNet.Classes, [Batch], ScalarType.Int64, generator: generator)];
    }

    private static Dictionary<string, Tensor> TrainPlain(int steps)
    {
        var model = new DtypeStateNet(Seed);
        var optimizer = torch.optim.SGD(model.parameters(), learningRate: 0.1);
        for (int step = 0; step < steps; step++)
        {
            optimizer.zero_grad();
            Tensor[] batch = BatchOf(step);
            model.forward(batch[0], batch[1]).backward();
            optimizer.step();
        }
        return model.state_dict().ToDictionary(p => p.Key, p => p.Value.detach().clone());
    }

    /// <summary>One rank's model (rank 0's from the seed, the others' from other seeds) under a forced plan shape.</summary>
    private sealed class Trainer : IDisposable
    {
        private readonly DtypeStateNet _model;

        public Trainer(ICommunicator comm, (int Stages, int Replicas) shape)
        {
            _model = new DtypeStateNet(comm.Rank == 0 ? Seed : Seed + 1000 + (ulong)comm.Rank);
            Rannc = new RanncModule(_model, torch.optim.SGD(_model.parameters(), learningRate: 0.1), comm,
                new RanncOptions { ForcedShape = shape, PlanCacheDirectory = "", ProfileRepeats = 1, Log = _ => { } });
        }

        public RanncModule Rannc { get; }

        public void Steps(int count)
        {
            for (int step = 0; step < count; step++)
            {
                Rannc.Optimizer.zero_grad();
                Tensor[] batch = BatchOf(step);
                Rannc.forward(batch[0], batch[1]).backward();
                Rannc.Optimizer.step();
            }
        }

        public void Dispose() => Rannc.Dispose();
    }
}
