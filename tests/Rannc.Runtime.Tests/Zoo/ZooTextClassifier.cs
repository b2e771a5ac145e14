using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace Rannc.Tests.Zoo;

/// <summary>
/// A text classifier as the TorchText tutorial ports write it: a ragged batch of token ids, flat, with one start offset
/// per sample (<c>[OffsetsOf("tokens")]</c>), averaged by an <c>EmbeddingBag</c>, then a <c>Sequential</c> classifier.
/// </summary>
[RaNNC]
public sealed partial class ZooTextClassifier : Module<Tensor, Tensor, Tensor, Tensor>
{
    private readonly EmbeddingBag embedding;
    private readonly Sequential classifier;

    public ZooTextClassifier(long vocabulary = 23, long embed = 8, long hidden = 12, long classes = 4)
        : base(nameof(ZooTextClassifier))
    {
        embedding = EmbeddingBag(vocabulary, embed, mode: EmbeddingBagMode.Mean);
        classifier = Sequential(
            Linear(embed, hidden), ReLU(), Linear(hidden, hidden), Tanh(), Linear(hidden, hidden), ReLU(), Linear(hidden, classes));
        RegisterComponents();
    }

    public override Tensor forward(Tensor tokens, [OffsetsOf("tokens")] Tensor offsets, Tensor labels)
    {
        var features = embedding.forward(tokens, offsets, null);
        return functional.cross_entropy(classifier.forward(features), labels);
    }
}
