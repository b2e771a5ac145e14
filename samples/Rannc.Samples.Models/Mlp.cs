using Rannc;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace Rannc.Samples.Models;

/// <summary>
/// The tutorial multi-layer perceptron: <paramref name="hiddenLayers"/> Linear + ReLU layers and a classifier, returning
/// the cross-entropy loss of its logits against <c>labels</c>. Field names are TorchSharp's parameter names
/// (<c>hidden.0.weight</c>), so they are written the way TorchSharp users write them.
/// </summary>
[RaNNC]
public sealed partial class Mlp : Module<Tensor, Tensor, Tensor>
{
    private readonly ModuleList<Linear> hidden = new();
    private readonly Linear classifier;

    public Mlp(int inputSize, int hiddenSize, int hiddenLayers, int classes)
        : base(nameof(Mlp))
    {
        for (var i = 0; i < hiddenLayers; i++)
        {
            hidden.Add(Linear(i == 0 ? inputSize : hiddenSize, hiddenSize));
        }
        classifier = Linear(hiddenLayers == 0 ? inputSize : hiddenSize, classes);
        RegisterComponents();
    }

    /// <summary>Cross-entropy loss of the classifier's logits for <paramref name="input"/> against <paramref name="labels"/>.</summary>
    public override Tensor forward(Tensor input, Tensor labels)
    {
        var x = input;
        foreach (var layer in hidden)
        {
            x = functional.relu(layer.forward(x));
        }
        var logits = classifier.forward(x);
        return functional.cross_entropy(logits, labels);
    }
}
