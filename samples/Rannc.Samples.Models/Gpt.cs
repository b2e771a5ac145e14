using Rannc;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace Rannc.Samples.Models;

/// <summary>One pre-norm decoder block of a small GPT: causal self-attention and an MLP, each with a residual.</summary>
[RaNNC]
public sealed partial class GptBlock : Module<Tensor, Tensor>
{
    private readonly int heads;
    private readonly LayerNorm norm1;
    private readonly Linear qkv;
    private readonly Linear projection;
    private readonly LayerNorm norm2;
    private readonly Linear up;
    private readonly Linear down;

    public GptBlock(int width, int heads) : base(nameof(GptBlock))
    {
        this.heads = heads;
        norm1 = LayerNorm(width);
        qkv = Linear(width, 3 * width);
        projection = Linear(width, width);
        norm2 = LayerNorm(width);
        up = Linear(width, 2 * width);
        down = Linear(2 * width, width);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        var batch = x.shape[0];
        var sequence = x.shape[1];
        var width = x.shape[2];
        var h = qkv.forward(norm1.forward(x));
        var q = h.narrow(2, 0, width).view(batch, sequence, heads, width / heads).transpose(1, 2);
        var k = h.narrow(2, width, width).view(batch, sequence, heads, width / heads).transpose(1, 2);
        var v = h.narrow(2, 2 * width, width).view(batch, sequence, heads, width / heads).transpose(1, 2);
        var scores = torch.matmul(q, k.transpose(-1, -2)) / Math.Sqrt(width / heads);
        var causal = torch.ones(sequence, sequence, dtype: ScalarType.Bool, device: x.device).triu(1);
        var attended = torch.matmul(functional.softmax(scores.masked_fill(causal, double.NegativeInfinity), -1), v);
        x = x + projection.forward(attended.transpose(1, 2).contiguous().view(batch, sequence, width));
        return x + down.forward(functional.gelu(up.forward(norm2.forward(x))));
    }
}

/// <summary>
/// A GPT-style causal language model whose output head shares the token embedding's weight (<c>head.weight = wte.weight</c>,
/// as GPT-2 does). <c>forward(ids, targets)</c> returns the mean next-token cross-entropy.
/// </summary>
[RaNNC]
public sealed partial class GptLanguageModel : Module<Tensor, Tensor, Tensor>
{
    private readonly Embedding wte;
    private readonly Embedding wpe;
    private readonly ModuleList<GptBlock> blocks = new();
    private readonly LayerNorm norm;
    private readonly Linear head;

    public GptLanguageModel(int vocabulary, int width, int layers, int heads, int maxSequence) : base(nameof(GptLanguageModel))
    {
        wte = Embedding(vocabulary, width);
        wpe = Embedding(maxSequence, width);
        for (var i = 0; i < layers; i++) blocks.Add(new GptBlock(width, heads));
        norm = LayerNorm(width);
        head = Linear(width, vocabulary, hasBias: false);
        head.weight = wte.weight!;
        RegisterComponents();
    }

    public override Tensor forward(Tensor ids, Tensor targets)
    {
        var positions = torch.arange(ids.shape[1], dtype: ScalarType.Int64, device: ids.device);
        var x = wte.forward(ids) + wpe.forward(positions);
        foreach (var block in blocks) x = block.forward(x);
        var logits = head.forward(norm.forward(x));
        return functional.cross_entropy(logits.view(-1, logits.shape[2]), targets.view(-1));
    }
}
