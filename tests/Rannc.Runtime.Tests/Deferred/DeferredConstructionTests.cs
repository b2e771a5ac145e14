using Rannc.Capture;
using Rannc.Communication;
using Rannc.Deferred;
using Rannc.Execution;
using Rannc.Samples;
using Rannc.Samples.Models;
using Rannc.Tests.Correctness;
using Rannc.Tests.Zoo;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Rannc.Tests.Deferred;

/// <summary>
/// Deferred construction (issue #13): <c>new RanncModule(createModel, createOptimizer, ...)</c> builds the model whole on
/// rank 0 only (the others on the meta device), each rank gets storage for its own stage's parameters only, and training
/// equals plain TorchSharp built with the same seed (float64, 1e-9, SGD and Adam).
/// </summary>
public sealed class DeferredConstructionTests
{
    private const int Steps = 3;
    private const int Batch = 8;
    private const long Seed = 1234;
    private static readonly SampleTask Mlp = SampleTasks.Mlp(inputSize: 6, hiddenSize: 10, hiddenLayers: 4, classes: 3);
    private static readonly SampleTask Bert = SampleTasks.Bert(
        new BertConfig(VocabularySize: 40, HiddenSize: 16, Layers: 2, Heads: 2, IntermediateSize: 24, MaxPositions: 8, DropoutProbability: 0),
        sequenceLength: 6, maskedPerSequence: 2);

    [Theory]
    [InlineData("1,1", OptimizerKind.Sgd)]
    [InlineData("1,1", OptimizerKind.Adam)]
    [InlineData("1,1,1,1", OptimizerKind.Sgd)]
    [InlineData("1,1,1,1", OptimizerKind.Adam)]
    public void Mlp_MatchesPlainTorchSharp(string plan, OptimizerKind optimizer) => AssertMatchesPlain(Mlp, plan, optimizer);

    [Theory]
    [InlineData("1,1", OptimizerKind.Sgd)]
    [InlineData("1,1", OptimizerKind.Adam)]
    [InlineData("2,2", OptimizerKind.Sgd)]
    [InlineData("2,2", OptimizerKind.Adam)]
    public void Bert_MatchesPlainTorchSharp(string plan, OptimizerKind optimizer) => AssertMatchesPlain(Bert, plan, optimizer);

    /// <summary>A torchvision-style ResNet: convolutions, batch norm (its running statistics are buffers), in-place ReLU.</summary>
    [Theory]
    [InlineData("1,1", "sgd")]
    [InlineData("1,1", "adam")]
    [InlineData("2,2", "sgd")]
    [InlineData("2,2", "adam")]
    public void ZooResNet_MatchesPlainTorchSharp(string plan, string optimizer) =>
        ZooHarness.AssertMatchesReference(ZooCatalog.ResNet, new ZooPlan(RanncOptions.ParsePlan(plan)!), "1f1b", optimizer, deferred: true);

    /// <summary>
    /// A tied embedding whose head reads <c>wte.weight</c> in forward(), with its users in different stages: every holding
    /// stage gets rank 0's one tensor, and the copies train as plain TorchSharp's one weight.
    /// </summary>
    [Theory]
    [InlineData("1,1,1,1", OptimizerKind.Sgd)]
    [InlineData("1,1,1,1", OptimizerKind.Adam)]
    [InlineData("2,2", OptimizerKind.Sgd)]
    [InlineData("2,2", OptimizerKind.Adam)]
    public void TiedEmbeddingReadInForward_MatchesPlainTorchSharp(string plan, OptimizerKind optimizer)
    {
        Func<nn.Module> create = () => new GptReadsEmbedding(13, 8, 2, 2, 5);
        Tensor[][] batches = TiedWeightTests.Batches(3);
        var reference = Equivalence.Reference(create, 7, batches, optimizer);
        var ranks = Equivalence.Rannc(create, rank => 7 + rank, batches, optimizer, RanncOptions.ParsePlan(plan)!, "1f1b", microBatches: 2, deferred: true);
        Equivalence.AssertEqual(reference, ranks);
    }

    /// <summary>
    /// <c>head.weight = wte.weight</c> (the sample's GPT): TorchSharp's <c>Embedding.weight</c> hands out a new wrapper of the
    /// one tensor per read, so plain TorchSharp's <c>parameters()</c> lists the tied weight twice and its optimizer steps it
    /// twice (SGD: two steps; Adam: two moment states). The other ranks rebuild that second wrapper, and the optimizer made by
    /// the factory gets both, as plain code's does. The embedding and the head in different stages ("1,1", "1,1,1,1", "2,2")
    /// and in one stage ("2", "4").
    /// </summary>
    [Theory]
    [InlineData("1,1", OptimizerKind.Sgd)]
    [InlineData("1,1", OptimizerKind.Adam)]
    [InlineData("2", OptimizerKind.Sgd)]
    [InlineData("2", OptimizerKind.Adam)]
    [InlineData("1,1,1,1", OptimizerKind.Sgd)]
    [InlineData("1,1,1,1", OptimizerKind.Adam)]
    [InlineData("2,2", OptimizerKind.Sgd)]
    [InlineData("2,2", OptimizerKind.Adam)]
    [InlineData("4", OptimizerKind.Sgd)]
    [InlineData("4", OptimizerKind.Adam)]
    public void TiedEmbeddingAssignedToTheHead_MatchesPlainTorchSharp(string plan, OptimizerKind optimizer)
    {
        Func<nn.Module> create = () => new GptLanguageModel(13, 8, 2, 2, 5);
        Tensor[][] batches = TiedWeightTests.Batches(3);
        var reference = Equivalence.Reference(create, 7, batches, optimizer);
        // The batch has 4 samples: a stage of 4 replicas runs one micro-batch.
        var ranks = Equivalence.Rannc(create, rank => 7 + rank, batches, optimizer, RanncOptions.ParsePlan(plan)!, "1f1b",
            microBatches: plan == "4" ? 1 : 2, deferred: true, check: (rannc, rank) =>
            {
                var stages = rannc.Plan!.Stages.Select(s => s.NodeIds.SelectMany(n => rannc.Graph!.Nodes[n].Parameters).ToHashSet()).ToList();
                // The plan puts the embedding and the head where the case says (the graph reads the tie as wte.weight in both).
                int holders = stages.Count(s => s.Contains("wte.weight"));
                Assert.Equal(plan.Contains(',') ? 2 : 1, holders);
                var named = rannc.Model.named_parameters().ToDictionary(p => p.name, p => p.parameter);
                Assert.False(ReferenceEquals(named["wte.weight"], named["head.weight"]));
                if (named["wte.weight"].numel() > 0)
                {
                    // One tensor under two names, on every holder: one storage, one gradient.
                    Assert.Equal(TensorIdentity.Of(named["wte.weight"]), TensorIdentity.Of(named["head.weight"]));
                    Assert.Equal(2, rannc.Optimizer.parameters().Count(p => TensorIdentity.Of(p) == TensorIdentity.Of(named["wte.weight"])));
                }
            });
        Equivalence.AssertEqual(reference, ranks);
    }

    /// <summary>
    /// Deployment runs inside the first forward(), which training loops often wrap in a per-step dispose scope (the sample
    /// does): the tensors the other ranks materialise there must outlive it.
    /// </summary>
    [Fact]
    public void TrainingInPerStepDisposeScopes_KeepsTheMaterialisedTensors()
    {
        Tensor[][] batches = Enumerable.Range(0, Steps).Select(step => BatchOf(Bert, step)).ToArray();
        Equivalence.Run reference = Equivalence.Reference(Bert.CreateModel, Seed, batches, OptimizerKind.Adam);
        double[][] losses = InProcessLauncher.Run(2, comm =>
        {
            using var rannc = new RanncModule(() => SeededModels.Create(Bert.CreateModel, Seed),
                parameters => Equivalence.CreateOptimizer(parameters, OptimizerKind.Adam), comm, Options("2"));
            var perStep = new double[Steps];
            for (int step = 0; step < Steps; step++)
            {
                using var scope = torch.NewDisposeScope();
                rannc.Optimizer.zero_grad();
                Tensor loss = rannc.forward(batches[step]);
                loss.backward();
                rannc.Optimizer.step();
                perStep[step] = loss.item<double>();
            }
            return perStep;
        }, new InProcessOptions(Timeout: TimeSpan.FromMinutes(2)));
        foreach (double[] rank in losses)
        {
            for (int step = 0; step < Steps; step++) Equivalence.AssertClose(reference.Losses[step], rank[step], $"loss of step {step}");
        }
    }

    [Fact]
    public void OtherRanks_NeverAllocateOtherStagesParameters_AndRankZeroFreesThem()
    {
        var results = InProcessLauncher.Run(4, comm =>
        {
            using var rannc = new RanncModule(
                () => SeededModels.Create(Mlp.CreateModel, Seed), parameters => torch.optim.Adam(parameters, lr: 0.01), comm, Options("1,1,1,1"));
            // Before the first forward: rank 0 holds the whole model on the CPU, every other rank only shapes.
            var devicesBefore = rannc.Model.parameters().Select(p => p.device_type).Distinct().ToList();
            rannc.Optimizer.zero_grad();
            rannc.forward(BatchOf(Mlp, 0)).backward();
            rannc.Optimizer.step();
            int stage = rannc.Plan!.RoleOf(comm.Rank)!.Value.Stage;
            var own = rannc.Plan.Stages[stage].NodeIds.SelectMany(n => rannc.Graph!.Nodes[n].Parameters).ToHashSet();
            var after = rannc.Model.named_parameters()
                .Select(p => (p.name, Own: own.Contains(p.name), Elements: p.parameter.numel(), p.parameter.device_type)).ToList();
            long optimizerElements = rannc.Optimizer.parameters().Sum(p => p.numel());
            return (devicesBefore, after, optimizerElements, ownElements: after.Where(p => p.Own).Sum(p => p.Elements));
        }, new InProcessOptions(Timeout: TimeSpan.FromMinutes(2)));

        Assert.Equal([DeviceType.CPU], results[0].devicesBefore);
        for (int rank = 1; rank < results.Length; rank++) Assert.Equal([DeviceType.META], results[rank].devicesBefore);
        long wholeModel = SeededModels.Create(Mlp.CreateModel, Seed).parameters().Sum(p => p.numel());
        Assert.Equal(wholeModel, results.Sum(r => r.ownElements));
        foreach (var (_, after, optimizerElements, ownElements) in results)
        {
            Assert.Contains(after, p => !p.Own);
            foreach (var p in after)
            {
                Assert.Equal(DeviceType.CPU, p.device_type);
                Assert.True(p.Own ? p.Elements > 0 : p.Elements == 0, $"{p.name} (own: {p.Own}) holds {p.Elements} elements");
            }
            Assert.Equal(ownElements, optimizerElements);
        }
    }

    [Fact]
    public void Checkpoint_LoadsOnlyTheOwnedPart_AfterTheFirstForward()
    {
        string folder = Directory.CreateTempSubdirectory("rannc-deferred-").FullName;
        try
        {
            var results = InProcessLauncher.Run(2, comm =>
            {
                RanncModule Create() => new(
                    () => SeededModels.Create(Mlp.CreateModel, Seed), parameters => torch.optim.Adam(parameters, lr: 0.01), comm, Options("1,1"));
                using (RanncModule trained = Create())
                {
                    for (int step = 0; step < 2; step++)
                    {
                        trained.Optimizer.zero_grad();
                        trained.forward(BatchOf(Mlp, step)).backward();
                        trained.Optimizer.step();
                    }
                    trained.SaveCheckpoint(folder);
                }
                using RanncModule restarted = Create();
                string early = Assert.Throws<InvalidOperationException>(() => restarted.LoadCheckpoint(folder)).Message;
                restarted.Optimizer.zero_grad();
                double fresh = restarted.forward(BatchOf(Mlp, 2)).item<double>();
                restarted.LoadCheckpoint(folder);
                double loaded = restarted.forward(BatchOf(Mlp, 2)).item<double>();
                int stage = restarted.Plan!.RoleOf(comm.Rank)!.Value.Stage;
                var own = restarted.Plan.Stages[stage].NodeIds.SelectMany(n => restarted.Graph!.Nodes[n].Parameters).ToHashSet();
                // Loading gave storage to this rank's own parameters only.
                var storageNotOwned = restarted.Model.named_parameters().Where(p => (p.parameter.numel() > 0) != own.Contains(p.name)).Select(p => p.name).ToList();
                return (early, fresh, loaded, storageNotOwned, State: restarted.StateDict());
            }, new InProcessOptions(Timeout: TimeSpan.FromMinutes(2)));

            // Plain TorchSharp: two Adam steps from the same seed, then the loss of the third batch.
            nn.Module plain = SeededModels.Create(Mlp.CreateModel, Seed);
            var adam = torch.optim.Adam(plain.parameters(), lr: 0.01);
            TrainingLoop.Run(plain, adam, step => SampleTask.Forward(plain, BatchOf(Mlp, step)), 2);
            double expected = SampleTask.Forward(plain, BatchOf(Mlp, 2)).item<double>();
            foreach (var (early, fresh, loaded, storageNotOwned, state) in results)
            {
                Assert.Contains("load the checkpoint after it", early);
                Assert.NotEqual(expected, fresh);
                Equivalence.AssertClose(expected, loaded, "loss after loading the checkpoint");
                Assert.Empty(storageNotOwned);
                foreach ((string name, Parameter parameter) in plain.named_parameters())
                    Assert.True((state[name] - parameter).abs().max().item<double>() <= 1e-12, $"{name} differs after loading");
            }
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    /// <summary>
    /// What the design rests on, probed in TorchSharp 0.107: the default device is one setting for the whole process (so
    /// construction on meta takes a lock), and TorchSharp's layers built on meta take new CPU tensors through
    /// <see cref="ModuleTensors"/> and then compute exactly as the same layers built on the CPU.
    /// </summary>
    [Fact]
    public void MetaLayers_WithTheirTensorsReplaced_ComputeLikeCpuLayers()
    {
        Func<nn.Module<Tensor, Tensor>>[] layers =
        [
            () => nn.Linear(5, 4), () => nn.LayerNorm(5), () => nn.Conv2d(5, 3, 3), () => nn.BatchNorm2d(5),
        ];
        foreach (var create in layers)
        {
            var cpu = (nn.Module<Tensor, Tensor>)SeededModels.Create(create, Seed);
            var meta = (nn.Module<Tensor, Tensor>)DeferredConstruction.Build(() => create().to(ScalarType.Float64), onMeta: true, rank: 1);
            Assert.All(meta.parameters(), p => Assert.Equal(DeviceType.META, p.device_type));
            var values = cpu.state_dict();
            var nameOf = meta.state_dict().ToDictionary(e => e.Value, e => e.Key, (IEqualityComparer<Tensor>)ReferenceEqualityComparer.Instance);
            ModuleTensors.Replace(meta, old => old is Parameter p
                ? new Parameter(values[nameOf[old]].detach().clone(), p.requires_grad)
                : values[nameOf[old]].detach().clone());
            Tensor input = create() is Conv2d or BatchNorm2d ? torch.randn([2, 5, 6, 6], ScalarType.Float64) : torch.randn([3, 5], ScalarType.Float64);
            Tensor expected = cpu.forward(input), actual = meta.forward(input);
            Assert.True(expected.eq(actual).all().item<bool>(), $"{cpu.GetType().Name}: the replaced layer computes differently");
            actual.sum().backward();
            Assert.All(meta.parameters(), p => Assert.NotNull(p.grad));
        }

        Tensor embeddingIndices = torch.tensor(new long[] { 1, 3, 3 });
        var cpuEmbedding = (Embedding)SeededModels.Create(() => nn.Embedding(7, 4), Seed);
        var metaEmbedding = (Embedding)DeferredConstruction.Build(() => nn.Embedding(7, 4).to(ScalarType.Float64), onMeta: true, rank: 1);
        ModuleTensors.Replace(metaEmbedding, old => new Parameter(cpuEmbedding.weight!.detach().clone()));
        Assert.True(cpuEmbedding.forward(embeddingIndices).eq(metaEmbedding.forward(embeddingIndices)).all().item<bool>(), "Embedding computes differently");

        Device? seenByAnotherThread = null;
        lock (typeof(DeferredConstruction))
        {
            torch.set_default_device(torch.META);
            var thread = new Thread(() => seenByAnotherThread = torch.get_default_device());
            thread.Start();
            thread.Join();
            torch.set_default_device(torch.CPU);
        }
        Assert.Equal(DeviceType.META, seenByAnotherThread!.type);
    }

    private static void AssertMatchesPlain(SampleTask task, string plan, OptimizerKind optimizer)
    {
        Tensor[][] batches = Enumerable.Range(0, Steps).Select(step => BatchOf(task, step)).ToArray();
        Equivalence.Run reference = Equivalence.Reference(task.CreateModel, Seed, batches, optimizer);
        // Every rank's factory seeds differently: only rank 0's construction may matter.
        Equivalence.Run[] ranks = Equivalence.Rannc(task.CreateModel, rank => Seed + 17 * rank, batches, optimizer, RanncOptions.ParsePlan(plan)!, "1f1b",
            deferred: true);
        Equivalence.AssertEqual(reference, ranks);
    }

    private static Tensor[] BatchOf(SampleTask task, int step) =>
        task.CreateBatch(Batch, step).Select(t => t.is_floating_point() ? t.to_type(ScalarType.Float64) : t).ToArray();

    private static RanncOptions Options(string plan) =>
        new() { ForcedReplicas = RanncOptions.ParsePlan(plan), PlanCacheDirectory = "", ProfileRepeats = 1, Log = _ => { } };
}
