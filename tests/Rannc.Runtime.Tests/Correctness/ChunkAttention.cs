using Rannc;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace Rannc.Tests.Correctness;

/// <summary>Self-attention written with <c>qkv.chunk(3, -1)</c>: a Tensor[] value that random plans may cut through.</summary>
[RaNNC]
public sealed partial class ChunkAttentionNet : Module<Tensor, Tensor, Tensor>
{
    private readonly Linear embed;
    private readonly Linear qkv;
    private readonly Linear output;
    private readonly Linear head;

    public ChunkAttentionNet() : base(nameof(ChunkAttentionNet))
    {
        embed = Linear(4, 8);
        qkv = Linear(8, 24);
        output = Linear(8, 8);
        head = Linear(8, 3);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x, Tensor labels)
    {
        var h = embed.forward(x);
        var parts = qkv.forward(h).chunk(3, -1);
        var scores = functional.softmax(torch.matmul(parts[0], parts[1].transpose(-1, -2)) / Math.Sqrt(8), -1);
        var attended = output.forward(torch.matmul(scores, parts[2])) + h;
        var logits = head.forward(attended).mean([1L]);
        return functional.cross_entropy(logits, labels);
    }
}
