using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace Rannc.Tests.Zoo;

/// <summary>
/// A LLaMA-style decoder as the TorchSharp ports write it: RMSNorm over <c>[-1L]</c>, rotary embeddings, blocks whose
/// forward() takes four arguments (<c>x, startPos, freqs, mask</c>), and a causal mask made only when
/// <c>seqLen &gt; 1</c>. The rotary table is real (cos and sin in the last dimension), as many ports write it; the complex
/// form (<c>polar</c>, <c>view_as_complex</c>) is <see cref="ZooRotaryNet"/>.
/// </summary>
[RaNNC]
public sealed partial class ZooLlama : Module<Tensor, Tensor, Tensor>
{
    private readonly Embedding embedding;
    private readonly ModuleList<ZooLlamaBlock> layers = new();
    private readonly ZooRmsNorm norm;
    private readonly Linear output;
    private readonly Tensor freqs;
    private readonly long vocabulary;
    private readonly long startPos;

    public ZooLlama(long vocabulary = 13, long dim = 8, long heads = 2, int layerCount = 2, long maxLength = 8, long startPos = 0)
        : base(nameof(ZooLlama))
    {
        this.vocabulary = vocabulary;
        this.startPos = startPos;
        embedding = Embedding(vocabulary, dim);
        for (var i = 0; i < layerCount; i++) layers.Add(new ZooLlamaBlock(dim, heads));
        norm = new ZooRmsNorm(dim);
        output = Linear(dim, vocabulary, hasBias: false);
        freqs = ZooRotary.Frequencies(dim / heads, maxLength);
        RegisterComponents();
    }

    public override Tensor forward(Tensor tokens, Tensor labels)
    {
        var seqLen = tokens.shape[1];
        var h = embedding.forward(tokens);
        Tensor? mask = null;
        if (seqLen > 1)
        {
            mask = torch.full([seqLen, seqLen], double.NegativeInfinity, dtype: h.dtype).triu(1);
        }
        foreach (var layer in layers)
        {
            h = layer.forward(h, startPos, freqs, mask);
        }
        var logits = output.forward(norm.forward(h));
        return functional.cross_entropy(logits.reshape(-1, vocabulary), labels.reshape(-1));
    }
}

/// <summary>RMSNorm as LLaMA ports write it.</summary>
[RaNNC]
public sealed partial class ZooRmsNorm : Module<Tensor, Tensor>
{
    private readonly Parameter weight;
    private readonly double eps;

    public ZooRmsNorm(long dim, double eps = 1e-5)
        : base(nameof(ZooRmsNorm))
    {
        weight = Parameter(torch.ones(dim));
        this.eps = eps;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => x * torch.rsqrt(x.pow(2).mean([-1L], keepdim: true) + eps) * weight;
}

/// <summary>A decoder block: attention with rotary positions and an optional mask, then a SwiGLU feed-forward.</summary>
[RaNNC]
public sealed partial class ZooLlamaBlock : Module<Tensor, long, Tensor, Tensor?, Tensor>
{
    private readonly long heads;
    private readonly long headDim;
    private readonly Linear wq, wk, wv, wo, w1, w2, w3;
    private readonly ZooRmsNorm attentionNorm, ffnNorm;

    public ZooLlamaBlock(long dim, long heads)
        : base(nameof(ZooLlamaBlock))
    {
        this.heads = heads;
        headDim = dim / heads;
        wq = Linear(dim, dim, hasBias: false);
        wk = Linear(dim, dim, hasBias: false);
        wv = Linear(dim, dim, hasBias: false);
        wo = Linear(dim, dim, hasBias: false);
        w1 = Linear(dim, 2 * dim, hasBias: false);
        w2 = Linear(2 * dim, dim, hasBias: false);
        w3 = Linear(dim, 2 * dim, hasBias: false);
        attentionNorm = new ZooRmsNorm(dim);
        ffnNorm = new ZooRmsNorm(dim);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x, long startPos, Tensor freqs, Tensor? mask)
    {
        var h = x + Attention(attentionNorm.forward(x), startPos, freqs, mask);
        var n = ffnNorm.forward(h);
        return h + w2.forward(functional.silu(w1.forward(n)) * w3.forward(n));
    }

    private Tensor Attention(Tensor x, long startPos, Tensor freqs, Tensor? mask)
    {
        var batch = x.shape[0];
        var seqLen = x.shape[1];
        var positions = freqs.narrow(0, startPos, seqLen);
        var q = ZooRotary.Apply(wq.forward(x).view(batch, seqLen, heads, headDim), positions);
        var k = ZooRotary.Apply(wk.forward(x).view(batch, seqLen, heads, headDim), positions);
        var v = wv.forward(x).view(batch, seqLen, heads, headDim);
        var scores = torch.matmul(q.transpose(1, 2), k.transpose(1, 2).transpose(2, 3)) / Math.Sqrt(headDim);
        if (mask is not null)
        {
            scores = scores + mask;
        }
        var attention = functional.softmax(scores, dim: -1);
        var output = torch.matmul(attention, v.transpose(1, 2)).transpose(1, 2).contiguous().view(batch, seqLen, -1);
        return wo.forward(output);
    }
}

/// <summary>Rotary position embedding with a real table: <c>[length, headDim / 2, 2]</c> holding cos and sin.</summary>
public static class ZooRotary
{
    public static Tensor Frequencies(long headDim, long length, double theta = 10000.0)
    {
        var inverse = 1.0 / torch.pow(theta, torch.arange(0, headDim, 2, dtype: ScalarType.Float64) / headDim);
        var angles = torch.outer(torch.arange(length, dtype: ScalarType.Float64), inverse);
        return torch.stack([angles.cos(), angles.sin()], -1);
    }

    /// <summary>Rotates each pair of features of <paramref name="x"/> ([batch, seq, heads, headDim]) by its position's angle.</summary>
    public static Tensor Apply(Tensor x, Tensor freqs)
    {
        var pairs = x.reshape(x.shape[0], x.shape[1], x.shape[2], -1, 2);
        var even = pairs.select(-1, 0);
        var odd = pairs.select(-1, 1);
        var cos = freqs.select(-1, 0).view(1, freqs.shape[0], 1, freqs.shape[1]);
        var sin = freqs.select(-1, 1).view(1, freqs.shape[0], 1, freqs.shape[1]);
        return torch.stack([even * cos - odd * sin, even * sin + odd * cos], -1).flatten(3);
    }
}
