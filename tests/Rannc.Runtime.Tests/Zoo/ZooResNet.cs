using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace Rannc.Tests.Zoo;

/// <summary>
/// torchvision's BasicBlock as people port it: one ReLU module built in place and called twice, a downsample held
/// as an abstract <c>Module&lt;Tensor, Tensor&gt;</c> that is a <c>Sequential</c> at run time, and the residual added
/// with <c>+=</c>.
/// </summary>
[RaNNC]
public sealed partial class ZooBasicBlock : Module<Tensor, Tensor>
{
    private readonly Conv2d conv1;
    private readonly BatchNorm2d bn1;
    private readonly ReLU relu;
    private readonly Conv2d conv2;
    private readonly BatchNorm2d bn2;
    private readonly Module<Tensor, Tensor>? downsample;

    public ZooBasicBlock(long inplanes, long planes, long stride, Module<Tensor, Tensor>? downsample)
        : base(nameof(ZooBasicBlock))
    {
        conv1 = Conv2d(inplanes, planes, kernel_size: 3, stride: stride, padding: 1, bias: false);
        bn1 = BatchNorm2d(planes);
        relu = ReLU(inplace: true);
        conv2 = Conv2d(planes, planes, kernel_size: 3, padding: 1, bias: false);
        bn2 = BatchNorm2d(planes);
        this.downsample = downsample;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        var identity = x;

        var y = conv1.forward(x);
        y = bn1.forward(y);
        y = relu.forward(y);

        y = conv2.forward(y);
        y = bn2.forward(y);

        if (downsample is not null)
        {
            identity = downsample.forward(x);
        }

        y += identity;
        y = relu.forward(y);
        return y;
    }
}

/// <summary>A torchvision-style ResNet for small images: stem, <c>Sequential</c> stages made by a helper, pooling, classifier, loss.</summary>
[RaNNC]
public sealed partial class ZooResNet : Module<Tensor, Tensor, Tensor>
{
    private long inplanes;
    private readonly Conv2d conv1;
    private readonly BatchNorm2d bn1;
    private readonly ReLU relu;
    private readonly MaxPool2d maxpool;
    private readonly Sequential layer1;
    private readonly Sequential layer2;
    private readonly AdaptiveAvgPool2d avgpool;
    private readonly Linear fc;

    public ZooResNet(int[] layers, long width = 4, long numClasses = 5)
        : base(nameof(ZooResNet))
    {
        inplanes = width;
        conv1 = Conv2d(3, width, kernel_size: 3, stride: 1, padding: 1, bias: false);
        bn1 = BatchNorm2d(width);
        relu = ReLU(inplace: true);
        maxpool = MaxPool2d(kernel_size: 3, stride: 2, padding: 1);
        layer1 = MakeLayer(width, layers[0], stride: 1);
        layer2 = MakeLayer(width * 2, layers[1], stride: 2);
        avgpool = AdaptiveAvgPool2d(1);
        fc = Linear(width * 2, numClasses);
        RegisterComponents();
    }

    private Sequential MakeLayer(long planes, int blocks, long stride)
    {
        Module<Tensor, Tensor>? downsample = null;
        if (stride != 1 || inplanes != planes)
        {
            downsample = Sequential(
                Conv2d(inplanes, planes, kernel_size: 1, stride: stride, bias: false),
                BatchNorm2d(planes));
        }
        var modules = new List<Module<Tensor, Tensor>> { new ZooBasicBlock(inplanes, planes, stride, downsample) };
        inplanes = planes;
        for (var i = 1; i < blocks; i++)
        {
            modules.Add(new ZooBasicBlock(inplanes, planes, 1, null));
        }
        return Sequential(modules);
    }

    public override Tensor forward(Tensor x, Tensor labels)
    {
        x = conv1.forward(x);
        x = bn1.forward(x);
        x = relu.forward(x);
        x = maxpool.forward(x);

        x = layer1.forward(x);
        x = layer2.forward(x);

        x = avgpool.forward(x);
        x = torch.flatten(x, 1);
        x = fc.forward(x);
        return functional.cross_entropy(x, labels);
    }
}
