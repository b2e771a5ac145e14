using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace Rannc.Tests.Zoo;

/// <summary>
/// A small U-Net: double convolutions as <c>Sequential</c>s, max-pooled on the way down, transposed convolutions on
/// the way up, each joined with the encoder's skip by <c>torch.cat</c>; per-pixel cross-entropy against a mask.
/// </summary>
[RaNNC]
public sealed partial class ZooUNet : Module<Tensor, Tensor, Tensor>
{
    private readonly Sequential inc;
    private readonly Sequential down1;
    private readonly Sequential down2;
    private readonly ConvTranspose2d up1;
    private readonly Sequential conv1;
    private readonly ConvTranspose2d up2;
    private readonly Sequential conv2;
    private readonly Conv2d outc;

    public ZooUNet(long channels = 3, long classes = 3, long width = 4)
        : base(nameof(ZooUNet))
    {
        inc = DoubleConv(channels, width);
        down1 = Sequential(MaxPool2d(kernel_size: 2), DoubleConv(width, width * 2));
        down2 = Sequential(MaxPool2d(kernel_size: 2), DoubleConv(width * 2, width * 4));
        up1 = ConvTranspose2d(width * 4, width * 2, kernel_size: 2, stride: 2);
        conv1 = DoubleConv(width * 4, width * 2);
        up2 = ConvTranspose2d(width * 2, width, kernel_size: 2, stride: 2);
        conv2 = DoubleConv(width * 2, width);
        outc = Conv2d(width, classes, kernel_size: 1);
        RegisterComponents();
    }

    private static Sequential DoubleConv(long input, long output) => Sequential(
        Conv2d(input, output, kernel_size: 3, padding: 1, bias: false),
        BatchNorm2d(output),
        ReLU(inplace: true),
        Conv2d(output, output, kernel_size: 3, padding: 1, bias: false),
        BatchNorm2d(output),
        ReLU(inplace: true));

    public override Tensor forward(Tensor x, Tensor mask)
    {
        var x1 = inc.forward(x);
        var x2 = down1.forward(x1);
        var x3 = down2.forward(x2);
        var u = up1.forward(x3);
        u = conv1.forward(torch.cat(new[] { u, x2 }, 1));
        u = up2.forward(u);
        u = conv2.forward(torch.cat(new[] { u, x1 }, 1));
        return functional.cross_entropy(outc.forward(u), mask);
    }
}
