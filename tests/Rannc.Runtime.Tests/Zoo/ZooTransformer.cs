using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace Rannc.Tests.Zoo;

/// <summary>
/// A sequence-first encoder-decoder Transformer as the PyTorch tutorial ports write it: tokens are <c>[seq, batch]</c>,
/// activations <c>[seq, batch, d]</c>, the decoder's causal mask is a <c>[tgt, tgt]</c> input that every sample shares.
/// The batch lies along dimension 1 of the tokens and labels (<c>[Batch(1)]</c>), the mask holds none (<c>[NotBatched]</c>).
/// </summary>
[RaNNC]
public sealed partial class ZooTransformer : Module<Tensor, Tensor, Tensor, Tensor, Tensor>
{
    private readonly Embedding srcEmbed;
    private readonly Embedding tgtEmbed;
    private readonly Embedding position;
    private readonly ModuleList<ZooEncoderLayer> encoder;
    private readonly LayerNorm encoderNorm;
    private readonly ModuleList<ZooDecoderLayer> decoder;
    private readonly LayerNorm decoderNorm;
    private readonly Linear generator;
    private readonly long vocabulary;

    public ZooTransformer(long vocabulary = 11, long model = 8, long heads = 2, long hidden = 16, int layers = 2, long maxLength = 16)
        : base(nameof(ZooTransformer))
    {
        this.vocabulary = vocabulary;
        srcEmbed = Embedding(vocabulary, model);
        tgtEmbed = Embedding(vocabulary, model);
        position = Embedding(maxLength, model);
        encoder = new ModuleList<ZooEncoderLayer>(Enumerable.Range(0, layers).Select(_ => new ZooEncoderLayer(model, heads, hidden)).ToArray());
        encoderNorm = LayerNorm(model);
        decoder = new ModuleList<ZooDecoderLayer>(Enumerable.Range(0, layers).Select(_ => new ZooDecoderLayer(model, heads, hidden)).ToArray());
        decoderNorm = LayerNorm(model);
        generator = Linear(model, vocabulary);
        RegisterComponents();
    }

    public override Tensor forward([Batch(1)] Tensor src, [Batch(1)] Tensor tgt, [NotBatched] Tensor tgtMask, [Batch(1)] Tensor labels)
    {
        // Positions [seq, 1, d] broadcast over the batch dimension.
        var memory = srcEmbed.forward(src) + position.forward(torch.arange(src.shape[0], ScalarType.Int64)).unsqueeze(1);
        foreach (var layer in encoder)
        {
            memory = layer.forward(memory);
        }
        memory = encoderNorm.forward(memory);
        var x = tgtEmbed.forward(tgt) + position.forward(torch.arange(tgt.shape[0], ScalarType.Int64)).unsqueeze(1);
        foreach (var layer in decoder)
        {
            x = layer.forward(x, memory, tgtMask);
        }
        var logits = generator.forward(decoderNorm.forward(x));
        return functional.cross_entropy(logits.reshape(-1, vocabulary), labels.reshape(-1));
    }
}

/// <summary>Post-norm encoder layer: self-attention and a feed-forward block, each with a residual.</summary>
[RaNNC]
public sealed partial class ZooEncoderLayer : Module<Tensor, Tensor>
{
    private readonly ZooSeqAttention selfAttention;
    private readonly LayerNorm norm1;
    private readonly Sequential feedForward;
    private readonly LayerNorm norm2;

    public ZooEncoderLayer(long model, long heads, long hidden)
        : base(nameof(ZooEncoderLayer))
    {
        selfAttention = new ZooSeqAttention(model, heads);
        norm1 = LayerNorm(model);
        feedForward = Sequential(Linear(model, hidden), ReLU(), Linear(hidden, model));
        norm2 = LayerNorm(model);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        x = norm1.forward(x + selfAttention.forward(x, x));
        return norm2.forward(x + feedForward.forward(x));
    }
}

/// <summary>Post-norm decoder layer: masked self-attention, attention over the encoder's memory, feed-forward.</summary>
[RaNNC]
public sealed partial class ZooDecoderLayer : Module<Tensor, Tensor, Tensor, Tensor>
{
    private readonly ZooMaskedSeqAttention selfAttention;
    private readonly LayerNorm norm1;
    private readonly ZooSeqAttention crossAttention;
    private readonly LayerNorm norm2;
    private readonly Sequential feedForward;
    private readonly LayerNorm norm3;

    public ZooDecoderLayer(long model, long heads, long hidden)
        : base(nameof(ZooDecoderLayer))
    {
        selfAttention = new ZooMaskedSeqAttention(model, heads);
        norm1 = LayerNorm(model);
        crossAttention = new ZooSeqAttention(model, heads);
        norm2 = LayerNorm(model);
        feedForward = Sequential(Linear(model, hidden), ReLU(), Linear(hidden, model));
        norm3 = LayerNorm(model);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x, Tensor memory, Tensor mask)
    {
        x = norm1.forward(x + selfAttention.forward(x, mask));
        x = norm2.forward(x + crossAttention.forward(x, memory));
        return norm3.forward(x + feedForward.forward(x));
    }
}

/// <summary>Multi-head attention of <c>[seq, batch, d]</c> queries over <c>[seq, batch, d]</c> keys and values.</summary>
[RaNNC]
public sealed partial class ZooSeqAttention : Module<Tensor, Tensor, Tensor>
{
    private readonly Linear query;
    private readonly Linear key;
    private readonly Linear value;
    private readonly Linear output;
    private readonly long heads;

    public ZooSeqAttention(long model, long heads)
        : base(nameof(ZooSeqAttention))
    {
        this.heads = heads;
        query = Linear(model, model);
        key = Linear(model, model);
        value = Linear(model, model);
        output = Linear(model, model);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x, Tensor memory)
    {
        var scores = torch.bmm(SeqHeads.Split(query.forward(x), heads), SeqHeads.Split(key.forward(memory), heads).transpose(1, 2));
        var weights = functional.softmax(scores / Math.Sqrt(x.shape[2] / heads), -1);
        return output.forward(SeqHeads.Merge(torch.bmm(weights, SeqHeads.Split(value.forward(memory), heads)), x.shape[1]));
    }
}

/// <summary>Multi-head self-attention with an additive <c>[seq, seq]</c> mask shared by every sample.</summary>
[RaNNC]
public sealed partial class ZooMaskedSeqAttention : Module<Tensor, Tensor, Tensor>
{
    private readonly Linear query;
    private readonly Linear key;
    private readonly Linear value;
    private readonly Linear output;
    private readonly long heads;

    public ZooMaskedSeqAttention(long model, long heads)
        : base(nameof(ZooMaskedSeqAttention))
    {
        this.heads = heads;
        query = Linear(model, model);
        key = Linear(model, model);
        value = Linear(model, model);
        output = Linear(model, model);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x, Tensor mask)
    {
        var scores = torch.bmm(SeqHeads.Split(query.forward(x), heads), SeqHeads.Split(key.forward(x), heads).transpose(1, 2));
        var weights = functional.softmax(scores / Math.Sqrt(x.shape[2] / heads) + mask, -1);
        return output.forward(SeqHeads.Merge(torch.bmm(weights, SeqHeads.Split(value.forward(x), heads)), x.shape[1]));
    }
}

/// <summary>Moves attention heads between <c>[seq, batch, d]</c> and <c>[batch × heads, seq, d / heads]</c>.</summary>
public static class SeqHeads
{
    public static Tensor Split(Tensor x, long heads) =>
        x.reshape(x.shape[0], x.shape[1] * heads, x.shape[2] / heads).transpose(0, 1);

    public static Tensor Merge(Tensor x, long batch) =>
        x.transpose(0, 1).reshape(x.shape[1], batch, x.shape[0] / batch * x.shape[2]);
}
