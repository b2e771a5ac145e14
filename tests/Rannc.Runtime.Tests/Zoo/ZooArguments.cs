using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace Rannc.Tests.Zoo;

/// <summary>forward() with a number (how many features to read) and an optional tensor that may be null.</summary>
[RaNNC]
public sealed partial class ZooArgumentsNet : Module<Tensor, long, Tensor?, Tensor, Tensor>
{
    private readonly Linear fc1;
    private readonly Linear fc2;
    private readonly Linear fc3;

    public ZooArgumentsNet()
        : base(nameof(ZooArgumentsNet))
    {
        fc1 = Linear(4, 10);
        fc2 = Linear(10, 10);
        fc3 = Linear(10, 3);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x, long start, [NotBatched] Tensor? scale, Tensor labels)
    {
        var h = functional.relu(fc1.forward(x.narrow(1, start, 4)));
        if (scale is not null)
        {
            h = h * scale;
        }
        h = torch.tanh(fc2.forward(h));
        return functional.cross_entropy(fc3.forward(h), labels);
    }
}
