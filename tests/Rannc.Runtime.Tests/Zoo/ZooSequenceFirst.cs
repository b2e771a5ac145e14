using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace Rannc.Tests.Zoo;

/// <summary>
/// A sequence-first <c>[seq, batch, features]</c> classifier with no batch declaration on its parameters, as a model
/// one cannot annotate: <see cref="Execution.RanncOptions.InputBatching"/> says where its batch is.
/// </summary>
[RaNNC]
public sealed partial class ZooSequenceFirst : Module<Tensor, Tensor, Tensor>
{
    private readonly Sequential encoder;
    private readonly Linear head;

    public ZooSequenceFirst(long features = 5, long hidden = 12, long classes = 3)
        : base(nameof(ZooSequenceFirst))
    {
        encoder = Sequential(Linear(features, hidden), Tanh(), Linear(hidden, hidden), ReLU());
        head = Linear(hidden, classes);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x, Tensor labels)
    {
        // Pooled over the sequence (dimension 0): slicing x along dimension 0 would be wrong.
        var pooled = encoder.forward(x).mean([0L]);
        return functional.cross_entropy(head.forward(pooled), labels);
    }
}
