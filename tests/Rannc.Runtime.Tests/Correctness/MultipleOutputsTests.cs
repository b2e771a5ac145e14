using Rannc.Communication;
using Rannc.Execution;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace Rannc.Tests.Correctness;

/// <summary>A classifier that returns its loss and its logits, as training loops that print accuracy are written.</summary>
[RaNNC]
public sealed partial class ClassifierWithLogits : Module<Tensor, Tensor, (Tensor Loss, Tensor Logits)>
{
    private readonly Sequential body;
    private readonly Linear head;

    public ClassifierWithLogits() : base(nameof(ClassifierWithLogits))
    {
        body = Sequential(Linear(6, 16), ReLU(), Linear(16, 16), Tanh(), Linear(16, 16), ReLU());
        head = Linear(16, 3);
        RegisterComponents();
    }

    public override (Tensor Loss, Tensor Logits) forward(Tensor features, Tensor labels)
    {
        Tensor logits = head.forward(body.forward(features));
        return (functional.cross_entropy(logits, labels), logits);
    }
}

/// <summary>A classifier that returns its loss and the mean logit: a second output without the batch in it.</summary>
[RaNNC]
public sealed partial class ClassifierWithMeanLogit : Module<Tensor, Tensor, (Tensor Loss, Tensor MeanLogit)>
{
    private readonly Linear first;
    private readonly Linear second;

    public ClassifierWithMeanLogit() : base(nameof(ClassifierWithMeanLogit))
    {
        first = Linear(6, 16);
        second = Linear(16, 3);
        RegisterComponents();
    }

    public override (Tensor Loss, Tensor MeanLogit) forward(Tensor features, Tensor labels)
    {
        Tensor logits = second.forward(functional.relu(first.forward(features)));
        return (functional.cross_entropy(logits, labels), logits.mean());
    }
}

/// <summary>
/// A model that returns the loss and more (the logits): <see cref="RanncModule.ForwardOutputs"/> returns every output,
/// the loss with its gradient as <c>forward</c> returns it and the others whole on every rank; training equals plain
/// TorchSharp (SGD and Adam) and the logits equal plain TorchSharp's.
/// </summary>
public sealed class MultipleOutputsTests
{
    private const int Batch = 8;
    private const int Steps = 3;

    [Theory]
    [InlineData(OptimizerKind.Sgd, "1,1")]
    [InlineData(OptimizerKind.Adam, "1,1")]
    [InlineData(OptimizerKind.Sgd, "2,1")]
    [InlineData(OptimizerKind.Sgd, "1,1,1")]
    public void LossAndLogits_TrainLikePlainTorchSharp_AndLogitsAreWholeOnEveryRank(OptimizerKind kind, string plan)
    {
        var replicas = plan.Split(',').Select(int.Parse).ToList();
        Tensor[][] batches = Enumerable.Range(0, Steps).Select(Batch0f).ToArray();

        nn.Module<Tensor, Tensor, (Tensor Loss, Tensor Logits)> plain = Seeded();
        optim.Optimizer plainOptimizer = Create(plain, kind);
        var expectedLosses = new double[Steps];
        var expectedLogits = new Tensor[Steps];
        for (int step = 0; step < Steps; step++)
        {
            plainOptimizer.zero_grad();
            (Tensor loss, Tensor logits) = plain.forward(batches[step][0], batches[step][1]);
            expectedLogits[step] = logits.detach().clone();
            loss.backward();
            plainOptimizer.step();
            expectedLosses[step] = loss.item<double>();
        }

        var options = new RanncOptions { ForcedReplicas = replicas, MicroBatches = 2, PlanCacheDirectory = "", ProfileRepeats = 1, Log = _ => { } };
        var results = InProcessLauncher.Run(replicas.Sum(), comm =>
        {
            var model = Seeded();
            optim.Optimizer optimizer = Create(model, kind);
            using var rannc = new RanncModule(model, optimizer, comm, options);
            var losses = new double[Steps];
            var logits = new Tensor[Steps];
            for (int step = 0; step < Steps; step++)
            {
                optimizer.zero_grad();
                Tensor[] outputs = rannc.ForwardOutputs(batches[step][0], batches[step][1]);
                Assert.Equal(2, outputs.Length);
                Assert.False(outputs[1].requires_grad);
                outputs[0].backward();
                optimizer.step();
                losses[step] = outputs[0].item<double>();
                logits[step] = outputs[1];
            }
            return (losses, logits, State: rannc.StateDict(), Stages: rannc.Plan!.Stages.Count);
        }, new InProcessOptions(Timeout: TimeSpan.FromMinutes(2)));

        var expectedState = plain.state_dict();
        foreach (var (losses, logits, state, stages) in results)
        {
            Assert.Equal(replicas.Count, stages);
            for (int step = 0; step < Steps; step++)
            {
                Equivalence.AssertClose(expectedLosses[step], losses[step], $"loss of step {step}");
                Assert.Equal(expectedLogits[step].shape, logits[step].shape);
                double difference = (logits[step] - expectedLogits[step]).abs().max().item<double>();
                Assert.True(difference <= 1e-9 * Math.Max(1, expectedLogits[step].abs().max().item<double>()), $"logits of step {step} differ by {difference:e3}");
            }
            foreach ((string name, Tensor value) in expectedState)
            {
                double difference = (state[name] - value).abs().max().item<double>();
                Assert.True(difference <= 1e-9 * Math.Max(1e-12, value.abs().max().item<double>()), $"{name} differs by {difference:e3}");
            }
        }
    }

    [Fact]
    public void Forward_OfAModelWithSeveralOutputs_ReturnsTheLoss()
    {
        Tensor[] batch = Batch0f(0);
        var plain = Seeded();
        double expected = plain.forward(batch[0], batch[1]).Loss.item<double>();
        var losses = InProcessLauncher.Run(2, comm =>
        {
            var model = Seeded();
            using var rannc = new RanncModule(model, torch.optim.SGD(model.parameters(), 0.1), comm,
                new RanncOptions { ForcedReplicas = [1, 1], PlanCacheDirectory = "", ProfileRepeats = 1, Log = _ => { } });
            using (torch.no_grad()) return rannc.forward(batch).item<double>();
        }, new InProcessOptions(Timeout: TimeSpan.FromMinutes(2)));
        Assert.All(losses, l => Equivalence.AssertClose(expected, l, "loss"));
    }

    [Fact]
    public void SecondOutputWithoutTheBatch_IsRefusedNamingIt()
    {
        Tensor[] batch = Batch0f(0);
        var error = Assert.Throws<RankFailedException>(() => InProcessLauncher.Run(2, comm =>
        {
            var model = new ClassifierWithMeanLogit().to(ScalarType.Float64);
            using var rannc = new RanncModule(model, torch.optim.SGD(model.parameters(), 0.1), comm,
                new RanncOptions { ForcedReplicas = [1, 1], PlanCacheDirectory = "", ProfileRepeats = 1, Log = _ => { } });
            return rannc.ForwardOutputs(batch).Length;
        }, new InProcessOptions(Timeout: TimeSpan.FromMinutes(2))));
        Assert.Contains("Output 1 of forward()", error.ToString());
        Assert.Contains("a tensor that does not hold the batch", error.ToString());
    }

    private static nn.Module<Tensor, Tensor, (Tensor Loss, Tensor Logits)> Seeded()
    {
        lock (typeof(MultipleOutputsTests))
        {
            torch.manual_seed(31);
            return new ClassifierWithLogits().to(ScalarType.Float64);
        }
    }

    private static optim.Optimizer Create(nn.Module model, OptimizerKind kind) =>
        kind == OptimizerKind.Adam ? torch.optim.Adam(model.parameters(), lr: 0.01) : torch.optim.SGD(model.parameters(), 0.1);

    private static Tensor[] Batch0f(int step)
    {
        using var generator = new Generator((ulong)(900 + step));
        return [torch.randn([Batch, 6], ScalarType.Float64, generator: generator), torch.randint(0, 3, [Batch], ScalarType.Int64, generator: generator)];
    }
}
