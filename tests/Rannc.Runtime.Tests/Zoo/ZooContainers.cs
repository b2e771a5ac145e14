using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace Rannc.Tests.Zoo;

/// <summary>A small captured block, to be held in every kind of container.</summary>
[RaNNC]
public sealed partial class ZooUnit : Module<Tensor, Tensor>
{
    private readonly Linear linear;

    public ZooUnit(long width)
        : base(nameof(ZooUnit))
    {
        linear = Linear(width, width);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => functional.tanh(linear.forward(x));
}

/// <summary>A module that is not [RaNNC]: it stays one opaque node.</summary>
public sealed class ZooOpaqueHead : Module<Tensor, Tensor>
{
    private readonly Linear first;
    private readonly Linear second;

    public ZooOpaqueHead(long width, long classes)
        : base(nameof(ZooOpaqueHead))
    {
        first = Linear(width, width);
        second = Linear(width, classes);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => second.forward(functional.relu(first.forward(x)));
}

/// <summary>
/// [RaNNC] blocks held in a field typed as the abstract <c>Module&lt;Tensor, Tensor&gt;</c>, a <c>ModuleList</c>, a
/// <c>ModuleDict</c>, an array and a <c>List</c>, and a <c>Sequential</c> nested in a <c>Sequential</c>.
/// </summary>
[RaNNC]
public sealed partial class ZooContainers : Module<Tensor, Tensor, Tensor>
{
    private readonly Module<Tensor, Tensor> single;
    private readonly ModuleList<Module<Tensor, Tensor>> list;
    private readonly ModuleDict<Module<Tensor, Tensor>> dict;
    private readonly ZooUnit[] array;
    private readonly List<ZooUnit> plainList;
    private readonly Sequential nested;
    private readonly Module<Tensor, Tensor> head;

    public ZooContainers(long width = 6, long classes = 3)
        : base(nameof(ZooContainers))
    {
        single = new ZooUnit(width);
        list = new ModuleList<Module<Tensor, Tensor>>(new ZooUnit(width), new ZooUnit(width));
        dict = new ModuleDict<Module<Tensor, Tensor>>();
        dict.Add("gate", new ZooUnit(width));
        array = [new ZooUnit(width), new ZooUnit(width)];
        plainList = [new ZooUnit(width)];
        nested = Sequential(new ZooUnit(width), Sequential(Linear(width, width), ReLU()), new ZooUnit(width));
        head = new ZooOpaqueHead(width, classes);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x, Tensor labels)
    {
        x = single.forward(x);
        foreach (var module in list)
        {
            x = module.forward(x);
        }
        x = dict["gate"].forward(x);
        foreach (var unit in array)
        {
            x = unit.forward(x);
        }
        // foreach, not plainList[i]: the generator does not yet treat an indexer of a List<T> as a module (generator side).
        foreach (var unit in plainList)
        {
            x = unit.forward(x);
        }
        x = nested.forward(x);
        return functional.cross_entropy(head.forward(x), labels);
    }
}

/// <summary>
/// In-place operations as real code writes them: an in-place ReLU module on the graph input, RANNC0004's
/// <c>fc.forward(x).relu_()</c>, chained <c>mul_</c>/<c>add_</c>, and <c>+=</c> on tensors.
/// </summary>
[RaNNC]
public sealed partial class ZooInPlaceNet : Module<Tensor, Tensor, Tensor>
{
    private readonly ReLU act;
    private readonly Linear fc1;
    private readonly Linear fc2;
    private readonly Linear fc3;
    private readonly Linear fc4;

    public ZooInPlaceNet(long inputs = 5, long width = 8, long classes = 3)
        : base(nameof(ZooInPlaceNet))
    {
        act = ReLU(inplace: true);
        fc1 = Linear(inputs, width);
        fc2 = Linear(width, width);
        fc3 = Linear(width, width);
        fc4 = Linear(width, classes);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x, Tensor labels)
    {
        x = act.forward(x);
        var h = fc1.forward(x).relu_();
        h = fc2.forward(h);
        h = h.mul_(0.5).add_(1.0);
        var g = fc3.forward(h);
        g += h;
        g = act.forward(g);
        return functional.cross_entropy(fc4.forward(g), labels);
    }
}

/// <summary>
/// An in-place ReLU module on a value that is read again later: after the call the value holds the ReLU's result
/// (as in plain TorchSharp), also in a later stage that receives it through the stage that wrote into it.
/// </summary>
[RaNNC]
public sealed partial class ZooAliasNet : Module<Tensor, Tensor, Tensor>
{
    private readonly Linear fc1;
    private readonly ReLU act;
    private readonly Linear fc2;
    private readonly Linear fc3;

    public ZooAliasNet(long inputs = 5, long width = 8, long classes = 3)
        : base(nameof(ZooAliasNet))
    {
        fc1 = Linear(inputs, width);
        act = ReLU(inplace: true);
        fc2 = Linear(width, width);
        fc3 = Linear(width, classes);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x, Tensor labels)
    {
        var y = fc1.forward(x);
        var z = act.forward(y);
        var w = fc2.forward(z);
        return functional.cross_entropy(fc3.forward(w + y), labels);
    }
}

/// <summary>A captured model whose head is a plain (not [RaNNC]) module: one opaque node holding most parameters.</summary>
[RaNNC]
public sealed partial class ZooOpaqueNet : Module<Tensor, Tensor, Tensor>
{
    private readonly Linear fc;
    private readonly Module<Tensor, Tensor> head;

    public ZooOpaqueNet()
        : base(nameof(ZooOpaqueNet))
    {
        fc = Linear(5, 6);
        head = new ZooOpaqueHead(6, 3);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x, Tensor labels) => functional.cross_entropy(head.forward(fc.forward(x)), labels);
}
