using Rannc.Samples.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Generators.Tests.EndToEnd;

/// <summary>A sample model at one size, with a batch of inputs for it, all in float64.</summary>
public sealed class SampleCase
{
    private readonly Func<nn.Module> _createModel;
    private readonly Func<torch.Generator, object[]> _createInputs;

    private SampleCase(string name, Func<nn.Module> createModel, Func<torch.Generator, object[]> createInputs)
    {
        Name = name;
        _createModel = createModel;
        _createInputs = createInputs;
    }

    public string Name { get; }

    public static IReadOnlyList<SampleCase> All { get; } =
    [
        Mlp("mlp-small", inputSize: 6, hiddenSize: 8, hiddenLayers: 3, classes: 3, batch: 4),
        Mlp("mlp-deeper", inputSize: 10, hiddenSize: 12, hiddenLayers: 4, classes: 5, batch: 3),
        Bert("bert-small", new BertConfig(VocabularySize: 17, HiddenSize: 8, Layers: 1, Heads: 2, IntermediateSize: 16, MaxPositions: 8, DropoutProbability: 0), batch: 2, sequence: 5),
        Bert("bert-deeper", new BertConfig(VocabularySize: 23, HiddenSize: 12, Layers: 3, Heads: 3, IntermediateSize: 20, MaxPositions: 10, DropoutProbability: 0), batch: 3, sequence: 6),
        ResNet("resnet-small", new ResNetConfig(BlocksPerStage: [1, 1], BaseWidth: 4, Classes: 5, InputChannels: 3), batch: 3, imageSize: 8),
        ResNet("resnet-deeper", new ResNetConfig(BlocksPerStage: [2, 1, 2], BaseWidth: 4, Classes: 6, InputChannels: 2), batch: 2, imageSize: 12),
    ];

    public static IEnumerable<object[]> Names => All.Select(c => new object[] { c.Name });

    public static SampleCase Get(string name) => All.Single(c => c.Name == name);

    /// <summary>A fresh float64 model with parameters from <paramref name="seed"/>.</summary>
    public nn.Module CreateModel(int seed)
    {
        torch.manual_seed(seed);
        var model = _createModel();
        model.to(ScalarType.Float64);
        return model;
    }

    public object[] CreateInputs(int seed)
    {
        var generator = new torch.Generator((ulong)seed);
        return _createInputs(generator);
    }

    public override string ToString() => Name;

    private static SampleCase Mlp(string name, int inputSize, int hiddenSize, int hiddenLayers, int classes, int batch) => new(
        name,
        () => new Mlp(inputSize, hiddenSize, hiddenLayers, classes),
        generator =>
        [
            torch.randn([batch, inputSize], dtype: ScalarType.Float64, generator: generator),
            torch.randint(classes, [batch], dtype: ScalarType.Int64, generator: generator),
        ]);

    private static SampleCase Bert(string name, BertConfig config, int batch, int sequence) => new(
        name,
        () => new BertForMaskedLM(config),
        generator =>
        {
            var ids = torch.randint(config.VocabularySize, [batch, sequence], dtype: ScalarType.Int64, generator: generator);
            // predict about half of the positions; the rest are marked -100 and ignored by the loss
            var masked = torch.rand([batch, sequence], generator: generator) < 0.5;
            var labels = torch.where(masked, torch.randint(config.VocabularySize, [batch, sequence], dtype: ScalarType.Int64, generator: generator), torch.full([batch, sequence], -100L));
            labels[0, 0] = torch.tensor(1L); // at least one position counts
            return [ids, labels];
        });

    private static SampleCase ResNet(string name, ResNetConfig config, int batch, int imageSize) => new(
        name,
        () => new ResNet(config),
        generator =>
        [
            torch.randn([batch, config.InputChannels, imageSize, imageSize], dtype: ScalarType.Float64, generator: generator),
            torch.randint(config.Classes, [batch], dtype: ScalarType.Int64, generator: generator),
        ]);
}
