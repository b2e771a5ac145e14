using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace Rannc.Tests.Zoo;

/// <summary>
/// Attention written as TorchSharp code is: q, k, v from one projection by <c>chunk</c> (a <c>Tensor[]</c>), a rotary
/// embedding by complex multiplication (<c>polar</c>, <c>view_as_complex</c>) with learned frequencies, and a mask of
/// visible tokens carried as bool, uint8, int8, int16 and int32 and as a float16 weight; the embedded tokens also go on
/// as a float16 copy and as a bfloat16 copy that carries gradients. Every one of these values can sit on a stage boundary.
/// </summary>
[RaNNC]
public sealed partial class ZooRotaryNet : Module<Tensor, Tensor, Tensor>
{
    public const int Tokens = 4;
    public const int Features = 3;
    public const int Width = 8;

    private readonly Linear embed;
    private readonly Linear qkv;
    private readonly Linear output;
    private readonly Linear head;
    private readonly Parameter frequencies;

    public ZooRotaryNet(int classes)
        : base(nameof(ZooRotaryNet))
    {
        embed = Linear(Features, Width);
        qkv = Linear(Width, 3 * Width);
        output = Linear(Width, Width);
        head = Linear(Width, classes);
        frequencies = Parameter(torch.linspace(0.1, 1.0, Width / 2));
        RegisterComponents();
    }

    public override Tensor forward(Tensor x, Tensor labels)
    {
        var tokens = x.reshape(-1, Tokens, Features);
        var h = embed.forward(tokens);
        // A token whose features sum below -1 is hidden; the mask travels in several integer types.
        var visible = tokens.sum(-1) > -1.0;
        var visibleBytes = visible.to(ScalarType.Byte);
        var visibleInt8 = visible.to(ScalarType.Int8);
        var visibleInt16 = visible.to(ScalarType.Int16);
        var visibleInt32 = visible.to(ScalarType.Int32);
        var queryWeight = visible.to(ScalarType.Float16);
        // float16 carries no gradient here: Rannc weighs each slice's loss before dividing by the total (see
        // LossCombination), so float16 gradients would be scaled by powers of two, and those below float16's normal
        // range (6e-5) round differently from plain training. bfloat16 has float32's range and carries one exactly.
        var hHalf = h.detach().to(ScalarType.Float16);
        var hBrain = h.to(ScalarType.BFloat16);
        var angles = torch.outer(torch.arange(Tokens, ScalarType.Float64), frequencies);
        var rotation = torch.polar(torch.ones_like(angles), angles);
        var parts = qkv.forward(h).chunk(3, -1);
        var q = torch.view_as_complex(parts[0].reshape(-1, Tokens, Width / 2, 2)) * rotation;
        var k = torch.view_as_complex(parts[1].reshape(-1, Tokens, Width / 2, 2)) * rotation;
        var qReal = torch.view_as_real(q).flatten(2);
        var kReal = torch.view_as_real(k).flatten(2);
        var scores = torch.matmul(qReal, kReal.transpose(-1, -2)) / Math.Sqrt(Width);
        var count = visibleBytes.to(ScalarType.Int64) + visibleInt8.to(ScalarType.Int64) + visibleInt16.to(ScalarType.Int64) + visibleInt32.to(ScalarType.Int64);
        var hidden = count.eq(4).logical_and(visible).logical_not().unsqueeze(1);
        var weights = functional.softmax(scores.masked_fill(hidden, -1e9), -1) * queryWeight.to(ScalarType.Float64).unsqueeze(-1);
        var attended = output.forward(torch.matmul(weights, parts[2])) + hHalf.to(ScalarType.Float64) + hBrain.to(ScalarType.Float64);
        var logits = head.forward(attended).mean([1L]);
        return functional.cross_entropy(logits, labels);
    }
}
