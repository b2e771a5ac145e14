using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace Rannc.Tests.Zoo;

/// <summary>
/// MobileNetV2's inverted residual: its layers are collected in a list and wrapped in a <c>Sequential</c>; the
/// residual is taken only when the shape is kept (a configuration branch).
/// Kernel sizes, strides and paddings are tuples, as torchvision-style ports write them.
/// </summary>
[RaNNC]
public sealed partial class ZooInvertedResidual : Module<Tensor, Tensor>
{
    private readonly bool useResConnect;
    private readonly Sequential conv;

    public ZooInvertedResidual(long inp, long oup, long stride, long expandRatio)
        : base(nameof(ZooInvertedResidual))
    {
        var hidden = inp * expandRatio;
        useResConnect = stride == 1 && inp == oup;
        var layers = new List<Module<Tensor, Tensor>>();
        if (expandRatio != 1)
        {
            layers.Add(Conv2d(inp, hidden, kernel_size: (1, 1), bias: false));
            layers.Add(BatchNorm2d(hidden));
            layers.Add(ReLU6(inplace: true));
        }
        layers.Add(Conv2d(hidden, hidden, kernel_size: (3, 3), stride: (stride, stride), padding: (1, 1), groups: hidden, bias: false));
        layers.Add(BatchNorm2d(hidden));
        layers.Add(ReLU6(inplace: true));
        layers.Add(Conv2d(hidden, oup, kernel_size: (1, 1), bias: false));
        layers.Add(BatchNorm2d(oup));
        conv = Sequential(layers);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        if (useResConnect)
        {
            return x + conv.forward(x);
        }
        return conv.forward(x);
    }
}

/// <summary>A small MobileNetV2: <c>features</c> is one <c>Sequential</c> of the stem and the inverted residual blocks.</summary>
[RaNNC]
public sealed partial class ZooMobileNet : Module<Tensor, Tensor, Tensor>
{
    private readonly Sequential features;
    private readonly Sequential classifier;

    public ZooMobileNet(long numClasses = 5)
        : base(nameof(ZooMobileNet))
    {
        // t (expansion), c (channels), n (repeats), s (stride), as in the paper's table, scaled down.
        long[][] settings = [[1, 4, 1, 1], [2, 6, 2, 2], [2, 8, 1, 1]];
        long input = 4;
        var layers = new List<Module<Tensor, Tensor>>
        {
            Conv2d(3, input, kernel_size: (3, 3), stride: (1, 1), padding: (1, 1), bias: false),
            BatchNorm2d(input),
            ReLU6(inplace: true),
        };
        foreach (var setting in settings)
        {
            for (var i = 0; i < setting[2]; i++)
            {
                layers.Add(new ZooInvertedResidual(input, setting[1], i == 0 ? setting[3] : 1, setting[0]));
                input = setting[1];
            }
        }
        features = Sequential(layers);
        classifier = Sequential(Dropout(0.0), Linear(input, numClasses));
        RegisterComponents();
    }

    public override Tensor forward(Tensor x, Tensor labels)
    {
        x = features.forward(x);
        x = functional.adaptive_avg_pool2d(x, (1, 1));
        x = torch.flatten(x, 1);
        x = classifier.forward(x);
        return functional.cross_entropy(x, labels);
    }
}
