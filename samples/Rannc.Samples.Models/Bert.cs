using Rannc;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace Rannc.Samples.Models;

/// <summary>Sizes of the BERT-style encoder.</summary>
/// <param name="VocabularySize">Number of token ids.</param>
/// <param name="HiddenSize">Width of every layer; a multiple of <paramref name="Heads"/>.</param>
/// <param name="Layers">Number of transformer layers.</param>
/// <param name="Heads">Attention heads per layer.</param>
/// <param name="IntermediateSize">Width of the feed-forward part.</param>
/// <param name="MaxPositions">Longest sequence.</param>
/// <param name="DropoutProbability">Dropout after embeddings, attention probabilities and each sublayer.</param>
public sealed record BertConfig(
    int VocabularySize, int HiddenSize, int Layers, int Heads, int IntermediateSize, int MaxPositions, double DropoutProbability = 0.1)
{
    public int HeadSize => HiddenSize / Heads;
}

/// <summary>Token and position embeddings, followed by layer norm and dropout.</summary>
[RaNNC]
public sealed partial class BertEmbeddings : Module<Tensor, Tensor>
{
    private readonly Embedding words;
    private readonly Embedding positions;
    private readonly LayerNorm norm;
    private readonly Dropout dropout;

    public BertEmbeddings(BertConfig config)
        : base(nameof(BertEmbeddings))
    {
        words = Embedding(config.VocabularySize, config.HiddenSize);
        positions = Embedding(config.MaxPositions, config.HiddenSize);
        norm = LayerNorm(config.HiddenSize, eps: 1e-12);
        dropout = Dropout(config.DropoutProbability);
        RegisterComponents();
    }

    public override Tensor forward(Tensor ids)
    {
        var sequenceLength = ids.shape[1];
        var positionIds = torch.arange(sequenceLength, dtype: ScalarType.Int64, device: ids.device);
        var embedded = words.forward(ids) + positions.forward(positionIds);
        return dropout.forward(norm.forward(embedded));
    }
}

/// <summary>Multi-head self-attention written out with matmul and softmax, with its residual connection and layer norm.</summary>
[RaNNC]
public sealed partial class BertAttention : Module<Tensor, Tensor>
{
    private readonly int heads;
    private readonly int headSize;
    private readonly Linear query;
    private readonly Linear key;
    private readonly Linear value;
    private readonly Linear output;
    private readonly LayerNorm norm;
    private readonly Dropout dropout;

    public BertAttention(BertConfig config)
        : base(nameof(BertAttention))
    {
        if (config.HiddenSize % config.Heads != 0)
        {
            throw new ArgumentException($"HiddenSize {config.HiddenSize} is not a multiple of Heads {config.Heads}.", nameof(config));
        }
        heads = config.Heads;
        headSize = config.HeadSize;
        query = Linear(config.HiddenSize, config.HiddenSize);
        key = Linear(config.HiddenSize, config.HiddenSize);
        value = Linear(config.HiddenSize, config.HiddenSize);
        output = Linear(config.HiddenSize, config.HiddenSize);
        norm = LayerNorm(config.HiddenSize, eps: 1e-12);
        dropout = Dropout(config.DropoutProbability);
        RegisterComponents();
    }

    public override Tensor forward(Tensor hidden)
    {
        var batch = hidden.shape[0];
        var sequence = hidden.shape[1];
        var q = SplitHeads(query.forward(hidden), batch, sequence);
        var k = SplitHeads(key.forward(hidden), batch, sequence);
        var v = SplitHeads(value.forward(hidden), batch, sequence);
        var scores = torch.matmul(q, k.transpose(-1, -2)) / Math.Sqrt(headSize);
        var probabilities = dropout.forward(functional.softmax(scores, -1));
        var context = torch.matmul(probabilities, v).transpose(1, 2).contiguous().view(batch, sequence, heads * headSize);
        return norm.forward(hidden + dropout.forward(output.forward(context)));
    }

    // [batch, sequence, hidden] -> [batch, heads, sequence, headSize]
    private Tensor SplitHeads(Tensor x, long batch, long sequence) => x.view(batch, sequence, heads, headSize).transpose(1, 2);
}

/// <summary>The position-wise feed-forward part: Linear, GELU, Linear, residual connection and layer norm.</summary>
[RaNNC]
public sealed partial class BertFeedForward : Module<Tensor, Tensor>
{
    private readonly Linear intermediate;
    private readonly Linear output;
    private readonly LayerNorm norm;
    private readonly Dropout dropout;

    public BertFeedForward(BertConfig config)
        : base(nameof(BertFeedForward))
    {
        intermediate = Linear(config.HiddenSize, config.IntermediateSize);
        output = Linear(config.IntermediateSize, config.HiddenSize);
        norm = LayerNorm(config.HiddenSize, eps: 1e-12);
        dropout = Dropout(config.DropoutProbability);
        RegisterComponents();
    }

    public override Tensor forward(Tensor hidden)
    {
        var expanded = functional.gelu(intermediate.forward(hidden));
        return norm.forward(hidden + dropout.forward(output.forward(expanded)));
    }
}

/// <summary>One transformer layer: attention, then feed-forward.</summary>
[RaNNC]
public sealed partial class BertLayer : Module<Tensor, Tensor>
{
    private readonly BertAttention attention;
    private readonly BertFeedForward feedForward;

    public BertLayer(BertConfig config)
        : base(nameof(BertLayer))
    {
        attention = new BertAttention(config);
        feedForward = new BertFeedForward(config);
        RegisterComponents();
    }

    public override Tensor forward(Tensor hidden) => feedForward.forward(attention.forward(hidden));
}

/// <summary>The stack of transformer layers.</summary>
[RaNNC]
public sealed partial class BertEncoder : Module<Tensor, Tensor>
{
    private readonly ModuleList<BertLayer> layers = new();

    public BertEncoder(BertConfig config)
        : base(nameof(BertEncoder))
    {
        for (var i = 0; i < config.Layers; i++)
        {
            layers.Add(new BertLayer(config));
        }
        RegisterComponents();
    }

    public override Tensor forward(Tensor hidden)
    {
        foreach (var layer in layers)
        {
            hidden = layer.forward(hidden);
        }
        return hidden;
    }
}

/// <summary>
/// A BERT-style encoder with a masked-language-model head. <c>forward(ids, labels)</c> returns the mean cross-entropy
/// over the positions whose label is not -100 (the usual "not masked" marker).
/// </summary>
[RaNNC]
public sealed partial class BertForMaskedLM : Module<Tensor, Tensor, Tensor>
{
    private readonly int vocabularySize;
    private readonly BertEmbeddings embeddings;
    private readonly BertEncoder encoder;
    private readonly Linear transform;
    private readonly LayerNorm transformNorm;
    private readonly Linear decoder;

    public BertForMaskedLM(BertConfig config)
        : base(nameof(BertForMaskedLM))
    {
        vocabularySize = config.VocabularySize;
        embeddings = new BertEmbeddings(config);
        encoder = new BertEncoder(config);
        transform = Linear(config.HiddenSize, config.HiddenSize);
        transformNorm = LayerNorm(config.HiddenSize, eps: 1e-12);
        decoder = Linear(config.HiddenSize, config.VocabularySize);
        RegisterComponents();
    }

    public override Tensor forward(Tensor ids, Tensor labels)
    {
        var hidden = encoder.forward(embeddings.forward(ids));
        var transformed = transformNorm.forward(functional.gelu(transform.forward(hidden)));
        var logits = decoder.forward(transformed);
        return functional.cross_entropy(logits.view(-1, vocabularySize), labels.view(-1), ignore_index: -100);
    }
}
