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
