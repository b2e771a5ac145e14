using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace Rannc.Tests.Zoo;

/// <summary>
/// A VGG/AlexNet-like net as TorchSharp ports write it: <c>features</c> and <c>classifier</c> are <c>Sequential</c>s
/// built from a configuration, held in fields typed as the abstract <c>Module&lt;Tensor, Tensor&gt;</c>.
/// </summary>
[RaNNC]
public sealed partial class ZooVgg : Module<Tensor, Tensor, Tensor>
{
    private readonly Module<Tensor, Tensor> features;
    private readonly Module<Tensor, Tensor> avgpool;
    private readonly Module<Tensor, Tensor> classifier;

    /// <param name="configuration">Output channels per convolution; 0 is a max pooling.</param>
    public ZooVgg(long[] configuration, long numClasses = 5, long hidden = 16)
        : base(nameof(ZooVgg))
    {
        var layers = new List<Module<Tensor, Tensor>>();
        long channels = 3;
        foreach (var v in configuration)
        {
            if (v == 0)
            {
                layers.Add(MaxPool2d(kernel_size: 2, stride: 2));
            }
            else
            {
                layers.Add(Conv2d(channels, v, kernel_size: 3, padding: 1));
                layers.Add(ReLU(inplace: true));
                channels = v;
            }
        }
        features = Sequential(layers);
        avgpool = AdaptiveAvgPool2d(2);
        classifier = Sequential(
            Linear(channels * 2 * 2, hidden),
            ReLU(inplace: true),
            Dropout(0.0), // VGG's dropout, switched off: in-process ranks share one random generator
            Linear(hidden, numClasses));
        RegisterComponents();
    }

    public override Tensor forward(Tensor x, Tensor labels)
    {
        x = features.forward(x);
        x = avgpool.forward(x);
        x = torch.flatten(x, 1);
        x = classifier.forward(x);
        return functional.cross_entropy(x, labels);
    }
}
