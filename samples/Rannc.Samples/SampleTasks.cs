using Rannc.Samples.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Samples;

/// <summary>A sample model with the synthetic data it trains on.</summary>
/// <param name="Name">mlp, bert or resnet.</param>
/// <param name="CreateModel">Builds the model (call under a fixed seed).</param>
/// <param name="CreateBatch">forward()'s arguments for one step: (batch size, step) → tensors, deterministic.</param>
public sealed record SampleTask(string Name, Func<nn.Module> CreateModel, Func<int, int, Tensor[]> CreateBatch)
{
    /// <summary>The model's forward() on the whole batch, without Rannc (the reference).</summary>
    public static Tensor Forward(nn.Module model, Tensor[] batch) => model switch
    {
        nn.Module<Tensor, Tensor, Tensor> twoInputs when batch.Length == 2 => twoInputs.forward(batch[0], batch[1]),
        nn.Module<Tensor, Tensor> oneInput when batch.Length == 1 => oneInput.forward(batch[0]),
        _ => throw new NotSupportedException($"{model.GetType().Name} with {batch.Length} input(s)"),
    };
}

/// <summary>The sample models at configurable sizes, with synthetic data that keeps micro-batching exact.</summary>
public static class SampleTasks
{
    /// <summary>The tutorial MLP: random inputs, random class labels.</summary>
    public static SampleTask Mlp(int inputSize = 64, int hiddenSize = 256, int hiddenLayers = 8, int classes = 10) => new(
        "mlp",
        () => new Mlp(inputSize, hiddenSize, hiddenLayers, classes),
        (batch, step) =>
        {
            using var generator = new Generator((ulong)(1000 + step));
            return [torch.randn([batch, inputSize], generator: generator), torch.randint(0, classes, [batch], ScalarType.Int64, generator: generator)];
        });

    /// <summary>
    /// The BERT-style masked language model on random token ids. Every sequence has exactly
    /// <paramref name="maskedPerSequence"/> predicted positions, so the loss (a mean over predicted positions) is also
    /// a mean over samples and splitting the batch into micro-batches does not change it.
    /// </summary>
    public static SampleTask Bert(BertConfig config, int sequenceLength, int maskedPerSequence) => new(
        "bert",
        () => new BertForMaskedLM(config),
        (batch, step) =>
        {
            using var generator = new Generator((ulong)(2000 + step));
            Tensor ids = torch.randint(0, config.VocabularySize, [batch, sequenceLength], ScalarType.Int64, generator: generator);
            Tensor labels = torch.full([batch, sequenceLength], -100L, ScalarType.Int64);
            Tensor scores = torch.rand([batch, sequenceLength], generator: generator);
            Tensor masked = scores.argsort(dim: 1).narrow(1, 0, maskedPerSequence);
            labels.scatter_(1, masked, ids.gather(1, masked));
            return [ids, labels];
        });

    /// <summary>The ResNet with bottleneck blocks and batch norm on random 16×16 images.</summary>
    public static SampleTask ResNet(int blocks, int baseWidth, int classes = 10, int imageSize = 16) => new(
        "resnet",
        () => new ResNet(new ResNetConfig(SplitBlocks(blocks), BaseWidth: baseWidth, Classes: classes)),
        (batch, step) =>
        {
            using var generator = new Generator((ulong)(3000 + step));
            return [torch.randn([batch, 3, imageSize, imageSize], generator: generator), torch.randint(0, classes, [batch], ScalarType.Int64, generator: generator)];
        });

    /// <summary>Spreads <paramref name="blocks"/> bottleneck blocks over up to three resolution stages.</summary>
    private static int[] SplitBlocks(int blocks) =>
        Enumerable.Range(0, Math.Min(3, blocks)).Select(s => blocks / Math.Min(3, blocks) + (s < blocks % Math.Min(3, blocks) ? 1 : 0)).ToArray();

    /// <summary>Default sizes of the BERT sample, scaled by <paramref name="layers"/> and <paramref name="hidden"/>.</summary>
    public static BertConfig BertConfig(int layers, int hidden, double dropout = 0) =>
        new(VocabularySize: 1000, HiddenSize: hidden, Layers: layers, Heads: Math.Max(1, hidden / 32), IntermediateSize: 4 * hidden,
            MaxPositions: 128, DropoutProbability: dropout);
}
