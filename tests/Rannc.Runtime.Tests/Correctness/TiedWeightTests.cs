using TorchSharp;
using Rannc.Samples.Models;
using static TorchSharp.torch;

namespace Rannc.Tests.Correctness;

/// <summary>
/// Tied embeddings, the two ways GPT-style code writes them: the head reads <c>wte.weight</c>, or
/// <c>head.weight = wte.weight</c>. The tied weight's gradient is the sum over both uses (plain TorchSharp's), also
/// when the embedding and the head sit in different stages.
/// </summary>
public sealed class TiedWeightTests
{
    private const int Vocabulary = 13;
    private const int Sequence = 5;
    private const int Batch = 4;

    public static TheoryData<string, string, string, OptimizerKind> Cases()
    {
        var data = new TheoryData<string, string, string, OptimizerKind>();
        foreach (string model in new[] { "reads", "assigns" })
        {
            foreach (OptimizerKind optimizer in new[] { OptimizerKind.Sgd, OptimizerKind.Adam })
            {
                data.Add(model, "1", "gpipe", optimizer);
                data.Add(model, "1,1", "1f1b", optimizer);
                data.Add(model, "2,2", "gpipe", optimizer);
                data.Add(model, "1,1,1,1", optimizer == OptimizerKind.Sgd ? "1f1b" : "gpipe", optimizer);
            }
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void TiedEmbedding_TrainsLikePlainTorchSharp(string model, string plan, string schedule, OptimizerKind optimizer)
    {
        Func<nn.Module> create = model == "reads"
            ? () => new GptReadsEmbedding(Vocabulary, 8, 2, 2, Sequence)
            : () => new GptLanguageModel(Vocabulary, 8, 2, 2, Sequence);
        Tensor[][] batches = Batches(3);
        var reference = Equivalence.Reference(create, 7, batches, optimizer);
        var ranks = Equivalence.Rannc(create, _ => 7, batches, optimizer, ParsePlan(plan), schedule, microBatches: 2);
        Equivalence.AssertEqual(reference, ranks);
    }

    /// <summary>
    /// With an optimizer factory the optimizer gets this rank's parameters at the first forward(): for <c>head.weight = wte.weight</c>
    /// it gets both wrappers of the tied weight, as plain TorchSharp's optimizer over <c>parameters()</c> does (it steps the tie twice).
    /// </summary>
    [Theory]
    [InlineData("1", OptimizerKind.Sgd)]
    [InlineData("1,1", OptimizerKind.Sgd)]
    [InlineData("1,1", OptimizerKind.Adam)]
    [InlineData("2,2", OptimizerKind.Adam)]
    public void TiedEmbeddingAssigned_WithAnOptimizerFactory_TrainsLikePlainTorchSharp(string plan, OptimizerKind optimizer)
    {
        Func<nn.Module> create = () => new GptLanguageModel(Vocabulary, 8, 2, 2, Sequence);
        Tensor[][] batches = Batches(3);
        var reference = Equivalence.Reference(create, 7, batches, optimizer);
        var ranks = Equivalence.Rannc(create, _ => 7, batches, optimizer, ParsePlan(plan), "1f1b", microBatches: 2, optimizerFactory: true);
        Equivalence.AssertEqual(reference, ranks);
    }

    internal static Tensor[][] Batches(int steps) => Enumerable.Range(0, steps).Select(step =>
    {
        using var generator = new Generator((ulong)(500 + step));
        Tensor ids = torch.randint(0, Vocabulary, [Batch, Sequence], ScalarType.Int64, generator: generator);
        Tensor targets = torch.randint(0, Vocabulary, [Batch, Sequence], ScalarType.Int64, generator: generator);
        return new[] { ids, targets };
    }).ToArray();

    private static List<int> ParsePlan(string plan) => plan.Split(',').Select(int.Parse).ToList();
}
