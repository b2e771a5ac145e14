using Rannc;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;
using Rannc.Samples.Models;

namespace Rannc.Tests.Correctness;

/// <summary>A GPT-style language model whose output layer reads the token embedding's weight directly (weight tying by reading).</summary>
[RaNNC]
public sealed partial class GptReadsEmbedding : Module<Tensor, Tensor, Tensor>
{
    private readonly Embedding wte;
    private readonly Embedding wpe;
    private readonly ModuleList<GptBlock> blocks = new();
    private readonly LayerNorm norm;

    public GptReadsEmbedding(int vocabulary, int width, int layers, int heads, int maxSequence) : base(nameof(GptReadsEmbedding))
    {
        wte = Embedding(vocabulary, width);
        wpe = Embedding(maxSequence, width);
        for (var i = 0; i < layers; i++) blocks.Add(new GptBlock(width, heads));
        norm = LayerNorm(width);
        RegisterComponents();
    }

    public override Tensor forward(Tensor ids, Tensor targets)
    {
        var positions = torch.arange(ids.shape[1], dtype: ScalarType.Int64, device: ids.device);
        var x = wte.forward(ids) + wpe.forward(positions);
        foreach (var block in blocks) x = block.forward(x);
        var logits = norm.forward(x).matmul(wte.weight!.t());
        return functional.cross_entropy(logits.view(-1, logits.shape[2]), targets.view(-1));
    }
}
