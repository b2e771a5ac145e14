using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace Rannc.Tests.Zoo;

/// <summary>A net with complex values in the middle (as a complex rotary embedding makes them): pairs of features squared as complex numbers.</summary>
[RaNNC]
public sealed partial class ZooComplexNet : Module<Tensor, Tensor, Tensor>
{
    private readonly Linear fc1;
    private readonly Linear fc2;

    public ZooComplexNet()
        : base(nameof(ZooComplexNet))
    {
        fc1 = Linear(5, 6);
        fc2 = Linear(6, 3);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x, Tensor labels)
    {
        var h = fc1.forward(x);
        var c = torch.view_as_complex(h.reshape(h.shape[0], -1, 2));
        var r = torch.view_as_real(c * c).flatten(1);
        return functional.cross_entropy(fc2.forward(r), labels);
    }
}
