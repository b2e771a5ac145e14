using Rannc.Samples;
using Rannc.Samples.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Tests.Correctness;

/// <summary>
/// BERT masked-LM with real masking (about 15 % of tokens, a different number per sequence, and sequences with none):
/// cross_entropy's mean over the unmasked tokens is assembled exactly from the slices, never NaN.
/// </summary>
public sealed class LossCombinationTests
{
    private const int Batch = 8;
    private const int Sequence = 8;
    private static readonly BertConfig Config = new(VocabularySize: 40, HiddenSize: 16, Layers: 2, Heads: 2, IntermediateSize: 24, MaxPositions: 8, DropoutProbability: 0);

    [Theory]
    [InlineData("2,2", "1f1b", OptimizerKind.Sgd)]
    [InlineData("2,2", "gpipe", OptimizerKind.Adam)]
    [InlineData("1,1,1,1", "1f1b", OptimizerKind.Adam)]
    [InlineData("1,1,1,1", "gpipe", OptimizerKind.Sgd)]
    public void MaskedLanguageModel_WithRandomMasking_EqualsPlainTorchSharp(string plan, string schedule, OptimizerKind optimizer)
    {
        Tensor[][] batches = Enumerable.Range(0, 3).Select(RandomlyMasked).ToArray();
        var reference = Equivalence.Reference(() => new BertForMaskedLM(Config), 11, batches, optimizer);
        Assert.All(reference.Losses, l => Assert.False(double.IsNaN(l)));
        // 4 micro-batches of 2 samples: the first slice has no masked token at all.
        var ranks = Equivalence.Rannc(() => new BertForMaskedLM(Config), _ => 11, batches, optimizer,
            plan.Split(',').Select(int.Parse).ToList(), schedule, microBatches: 4);
        Equivalence.AssertEqual(reference, ranks);
    }

    /// <summary>Each token is masked with probability 0.15, except in the first two sequences, which have none.</summary>
    private static Tensor[] RandomlyMasked(int step)
    {
        using var generator = new Generator((ulong)(4000 + step));
        Tensor ids = torch.randint(0, Config.VocabularySize, [Batch, Sequence], ScalarType.Int64, generator: generator);
        Tensor masked = torch.rand([Batch, Sequence], generator: generator).lt(0.15);
        masked[0] = torch.zeros(Sequence, ScalarType.Bool);
        masked[1] = torch.zeros(Sequence, ScalarType.Bool);
        masked[2, 3] = torch.tensor(true); // at least one masked token in the batch
        Tensor labels = torch.where(masked, ids, torch.full_like(ids, -100L));
        return [ids, labels];
    }
}

/// <summary>A classifier whose loss has class weights, an ignore index and label smoothing, as real code writes it.</summary>
[RaNNC]
public sealed partial class WeightedClassifier : TorchSharp.torch.nn.Module<Tensor, Tensor, Tensor>
{
    private readonly TorchSharp.Modules.Linear hidden;
    private readonly TorchSharp.Modules.Linear output;
    private readonly Tensor classWeights;

    public WeightedClassifier() : base(nameof(WeightedClassifier))
    {
        hidden = TorchSharp.torch.nn.Linear(6, 10);
        output = TorchSharp.torch.nn.Linear(10, 4);
        classWeights = torch.tensor(new[] { 1.0, 2.5, 0.5, 4.0 });
        register_buffer("classWeights", classWeights);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x, Tensor labels)
    {
        var logits = output.forward(TorchSharp.torch.nn.functional.relu(hidden.forward(x)));
        return TorchSharp.torch.nn.functional.cross_entropy(logits, labels, weight: classWeights, ignore_index: 3, label_smoothing: 0.1);
    }
}

public sealed class WeightedLossTests
{
    [Theory]
    [InlineData("2,1", "1f1b", OptimizerKind.Sgd)]
    [InlineData("1,2", "gpipe", OptimizerKind.Adam)]
    public void ClassWeightedLoss_WithIgnoreIndex_EqualsPlainTorchSharp(string plan, string schedule, OptimizerKind optimizer)
    {
        Tensor[][] batches = Enumerable.Range(0, 3).Select(step =>
        {
            using var generator = new Generator((ulong)(60 + step));
            return new[] { torch.randn([8, 6], ScalarType.Float64, generator: generator), torch.randint(0, 4, [8], ScalarType.Int64, generator: generator) };
        }).ToArray();
        var reference = Equivalence.Reference(() => new WeightedClassifier(), 3, batches, optimizer);
        var ranks = Equivalence.Rannc(() => new WeightedClassifier(), _ => 3, batches, optimizer, plan.Split(',').Select(int.Parse).ToList(), schedule, microBatches: 2);
        Equivalence.AssertEqual(reference, ranks);
    }
}
