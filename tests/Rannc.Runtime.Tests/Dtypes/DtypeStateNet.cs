using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace Rannc.Tests.Dtypes;

/// <summary>
/// A model whose state holds every dtype: float64 and complex128 parameters, and float16, bfloat16, float32, complex64,
/// bool, uint8, int8, int16, int32 and int64 buffers, all read by forward(). Its tensors come from its own generator
/// (no global seed, no conversion afterwards), and the integer buffers span their types' whole range.
/// </summary>
[RaNNC]
public sealed partial class DtypeStateNet : Module<Tensor, Tensor, Tensor>
{
    public const int Inputs = 4;
    public const int Classes = 3;

    private readonly Parameter weight1;
    private readonly Parameter phase;
    private readonly Parameter weight2;
    private readonly Tensor scaleHalf;
    private readonly Tensor offsetBrain;
    private readonly Tensor bias32;
    private readonly Tensor phase64;
    private readonly Tensor keep;
    private readonly Tensor bytes;
    private readonly Tensor int8s;
    private readonly Tensor int16s;
    private readonly Tensor int32s;
    private readonly Tensor int64s;

    public DtypeStateNet(ulong seed)
        : base(nameof(DtypeStateNet))
    {
        using var generator = new Generator(seed);
        weight1 = Parameter(torch.randn([Inputs, Inputs], ScalarType.Float64, generator: generator));
        phase = Parameter(torch.randn([Inputs / 2], ScalarType.ComplexFloat64, generator: generator));
        weight2 = Parameter(torch.randn([Inputs, Classes], ScalarType.Float64, generator: generator));
        scaleHalf = torch.randn([Inputs], ScalarType.Float16, generator: generator);
        offsetBrain = torch.randn([Inputs], ScalarType.BFloat16, generator: generator);
        bias32 = torch.randn([Inputs], ScalarType.Float32, generator: generator);
        phase64 = torch.randn([Inputs / 2], ScalarType.ComplexFloat32, generator: generator);
        keep = torch.rand([Inputs], generator: generator) > 0.3;
        bytes = torch.randint(0, 256, [5], ScalarType.Byte, generator: generator);
        int8s = torch.randint(sbyte.MinValue, sbyte.MaxValue + 1, [5], ScalarType.Int8, generator: generator);
        int16s = torch.randint(short.MinValue, short.MaxValue + 1, [5], ScalarType.Int16, generator: generator);
        int32s = torch.randint(int.MinValue, int.MaxValue, [5], ScalarType.Int32, generator: generator);
        int64s = torch.randint(long.MinValue / 2, long.MaxValue / 2, [5], ScalarType.Int64, generator: generator);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x, Tensor labels)
    {
        var h = torch.matmul(x, weight1);
        var turned = torch.view_as_complex(h.reshape(-1, Inputs / 2, 2)) * phase * phase64.to(ScalarType.ComplexFloat64);
        var features = torch.view_as_real(turned).flatten(1) * scaleHalf.to(ScalarType.Float64) + offsetBrain.to(ScalarType.Float64) + bias32.to(ScalarType.Float64);
        var masked = features * keep.to(ScalarType.Float64);
        // The integer buffers shift every logit alike (cross entropy does not change), so their values only need to be read.
        var shift = (bytes.to(ScalarType.Float64).sum() + int8s.to(ScalarType.Float64).sum() + int16s.to(ScalarType.Float64).sum()
            + int32s.to(ScalarType.Float64).sum() + int64s.to(ScalarType.Float64).sign().sum()) * 1e-9;
        var logits = torch.matmul(masked, weight2) + shift;
        return functional.cross_entropy(logits, labels);
    }
}
