using Rannc.Communication;
using Rannc.Execution;
using Rannc.Samples;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Tests.Training;

/// <summary>Whole-model state across a partitioned run: gathering, checkpoints across plans, global gradient clipping.</summary>
public sealed class StateTests
{
    private const int Batch = 8;
    private static readonly SampleTask Task = SampleTasks.Mlp(inputSize: 6, hiddenSize: 10, hiddenLayers: 4, classes: 3);
    private static readonly InProcessOptions Launch = new(Timeout: TimeSpan.FromMinutes(3));

    [Fact]
    public void StateDict_AfterTraining_EqualsReferenceParametersOnEveryRank()
    {
        var reference = new Reference(3);
        Dictionary<string, Tensor>[] states = InProcessLauncher.Run(3, comm =>
        {
            using Trainer trainer = new(comm, (3, 1));
            trainer.Steps(0, 3);
            return trainer.Rannc.StateDict();
        }, Launch);
        foreach (Dictionary<string, Tensor> state in states) Close.AssertSameTensors(reference.State(), state);
    }

    [Fact]
    public void ParametersOfOtherStages_HoldNoMemoryOnARank()
    {
        var held = InProcessLauncher.Run(2, comm =>
        {
            using Trainer trainer = new(comm, (2, 1));
            trainer.Steps(0, 1);
            var ownNodes = trainer.Rannc.Plan!.Stages[trainer.Rannc.Plan.RoleOf(comm.Rank)!.Value.Stage].NodeIds;
            var own = ownNodes.SelectMany(n => trainer.Rannc.Graph!.Nodes[n].Parameters).ToHashSet();
            return trainer.Model.named_parameters().Select(p => (p.name, Own: own.Contains(p.name), Elements: p.parameter.numel())).ToList();
        }, Launch);
        Assert.Contains(held, parameters => parameters.Any(p => !p.Own));
        foreach (var parameters in held)
        {
            Assert.All(parameters, p => Assert.True(p.Own ? p.Elements > 0 : p.Elements == 0, $"{p.name}: own={p.Own}, {p.Elements} elements"));
        }
    }

    [Fact]
    public void SavedCheckpoint_LoadsIntoAPlainModel_WithTheSameOutputs() => WithTemporaryDirectory(directory =>
    {
        var reference = new Reference(2);
        InProcessLauncher.Run(2, comm =>
        {
            using Trainer trainer = new(comm, (2, 1));
            trainer.Steps(0, 2);
            trainer.Rannc.SaveCheckpoint(directory);
        }, Launch);
        // Consolidation writes one plain TorchSharp file from the per-rank files.
        string modelBin = Path.Combine(directory, "model.bin");
        RanncModule.ConsolidateCheckpoint(directory, SeededModels.Create(Task.CreateModel, 5), modelBin);
        nn.Module plain = CreateSeeded();
        plain.load(modelBin);
        Tensor[] batch = BatchOf(7);
        using var noGrad = torch.no_grad();
        Close.AssertClose(SampleTask.Forward(reference.Model, batch).item<double>(), SampleTask.Forward(plain, batch).item<double>(), "output");
    });

    [Theory]
    [InlineData(2, 1, 1, 3)]
    [InlineData(2, 2, 4, 1)]
    [InlineData(2, 2, 1, 4)]
    [InlineData(2, 2, 1, 1)]
    public void Checkpoint_LoadedIntoADifferentPlanAndWorldSize_ContinuesLikeAnUninterruptedRun(int savedStages, int savedReplicas, int stages, int replicas) => WithTemporaryDirectory(directory =>
    {
        var reference = new Reference(4);
        InProcessLauncher.Run(savedStages * savedReplicas, comm =>
        {
            using Trainer trainer = new(comm, (savedStages, savedReplicas));
            trainer.Steps(0, 2);
            trainer.Rannc.SaveCheckpoint(directory);
        }, Launch);
        // Each rank wrote only what it owns.
        string folder = Directory.GetDirectories(directory, "checkpoint-*").Single();
        Assert.Equal(savedStages * savedReplicas, Directory.GetFiles(folder, "rank-*.bin").Length);
        var results = InProcessLauncher.Run(stages * replicas, comm =>
        {
            using Trainer trainer = new(comm, (stages, replicas));
            trainer.Rannc.LoadCheckpoint(directory);
            double[] losses = trainer.Steps(2, 4);
            return (losses, trainer.Rannc.StateDict());
        }, Launch);
        foreach ((double[] losses, Dictionary<string, Tensor> state) in results)
        {
            Close.AssertClose(reference.Losses[2], losses[0], "loss of step 3");
            Close.AssertClose(reference.Losses[3], losses[1], "loss of step 4");
            Close.AssertSameTensors(reference.State(), state);
        }
    });

    [Fact]
    public void ClipGradNorm_OverAllRanks_EqualsClippingTheWholeModel()
    {
        var reference = new Reference(3, clip: 0.05);
        var results = InProcessLauncher.Run(4, comm =>
        {
            using Trainer trainer = new(comm, (2, 2), clip: 0.05);
            return (trainer.Steps(0, 3), trainer.Rannc.StateDict());
        }, Launch);
        foreach ((double[] losses, Dictionary<string, Tensor> state) in results)
        {
            for (int s = 0; s < 3; s++) Close.AssertClose(reference.Losses[s], losses[s], $"loss of step {s}");
            Close.AssertSameTensors(reference.State(), state);
        }
        Assert.True(reference.ClippedSteps > 0, "the clipping threshold never bit; the test would not show anything");
    }

    private static void WithTemporaryDirectory(Action<string> test)
    {
        string directory = Directory.CreateTempSubdirectory("rannc-checkpoint-").FullName;
        try
        {
            test(directory);
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    private static Tensor[] BatchOf(int step) => Task.CreateBatch(Batch, step).Select(t => t.is_floating_point() ? t.to_type(ScalarType.Float64) : t).ToArray();

    private static nn.Module CreateSeeded() => SeededModels.Create(Task.CreateModel, 99);

    /// <summary>Plain single-process training of the same model on the same batches.</summary>
    private sealed class Reference
    {
        public Reference(int steps, double? clip = null)
        {
            Model = CreateSeeded();
            var optimizer = torch.optim.Adam(Model.parameters(), lr: 0.01);
            for (int step = 0; step < steps; step++)
            {
                optimizer.zero_grad();
                Tensor loss = SampleTask.Forward(Model, BatchOf(step));
                loss.backward();
                if (clip is double max && nn.utils.clip_grad_norm_(Model.parameters(), max) > max) ClippedSteps++;
                optimizer.step();
                Losses.Add(loss.item<double>());
            }
        }

        public nn.Module Model { get; }

        public List<double> Losses { get; } = [];

        public int ClippedSteps { get; }

        public Dictionary<string, Tensor> State() => Model.state_dict().ToDictionary(p => p.Key, p => p.Value.detach().clone());
    }

    /// <summary>One rank's model, optimizer and Rannc module with a forced plan.</summary>
    private sealed class Trainer : IDisposable
    {
        private readonly nn.Module _model = CreateSeeded();
        private readonly double? _clip;

        public Trainer(ICommunicator comm, (int Stages, int Replicas) shape, double? clip = null)
        {
            _clip = clip;
            var optimizer = torch.optim.Adam(_model.parameters(), lr: 0.01);
            Rannc = new RanncModule(_model, optimizer, comm, new RanncOptions { ForcedShape = shape, PlanCacheDirectory = "", ProfileRepeats = 1, Log = _ => { } });
        }

        public RanncModule Rannc { get; }

        public nn.Module Model => _model;

        public double[] Steps(int first, int end)
        {
            var losses = new List<double>();
            for (int step = first; step < end; step++)
            {
                Rannc.Optimizer.zero_grad();
                Tensor loss = Rannc.forward(BatchOf(step));
                loss.backward();
                if (_clip is double max) Rannc.ClipGradNorm(max);
                Rannc.Optimizer.step();
                losses.Add(loss.item<double>());
            }
            return losses.ToArray();
        }

        public void Dispose() => Rannc.Dispose();
    }
}
