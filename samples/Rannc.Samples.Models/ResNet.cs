using Rannc;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace Rannc.Samples.Models;

/// <summary>Sizes of the ResNet.</summary>
/// <param name="BlocksPerStage">Bottleneck blocks in each stage (ResNet-50 is 3, 4, 6, 3); every stage after the first halves the resolution.</param>
/// <param name="BaseWidth">Width of the first stage's bottleneck (64 in ResNet-50); doubled per stage, and blocks output four times it.</param>
/// <param name="Classes">Number of classes.</param>
/// <param name="InputChannels">Channels of the input images.</param>
public sealed record ResNetConfig(IReadOnlyList<int> BlocksPerStage, int BaseWidth = 64, int Classes = 1000, int InputChannels = 3);

/// <summary>
/// A bottleneck block: 1×1 reduce, 3×3 (with the stage's stride), 1×1 expand, each followed by batch norm, plus a
/// shortcut that is projected when the shape changes.
/// </summary>
[RaNNC]
public sealed partial class Bottleneck : Module<Tensor, Tensor>
{
    public const int Expansion = 4;

    private readonly Conv2d reduce;
    private readonly BatchNorm2d reduceNorm;
    private readonly Conv2d spatial;
    private readonly BatchNorm2d spatialNorm;
    private readonly Conv2d expand;
    private readonly BatchNorm2d expandNorm;
    private readonly Sequential? projection;

    public Bottleneck(int inputChannels, int width, int stride)
        : base(nameof(Bottleneck))
    {
        var outputChannels = width * Expansion;
        reduce = Conv2d(inputChannels, width, kernel_size: 1, bias: false);
        reduceNorm = BatchNorm2d(width);
        spatial = Conv2d(width, width, kernel_size: 3, stride: stride, padding: 1, bias: false);
        spatialNorm = BatchNorm2d(width);
        expand = Conv2d(width, outputChannels, kernel_size: 1, bias: false);
        expandNorm = BatchNorm2d(outputChannels);
        if (stride != 1 || inputChannels != outputChannels)
        {
            projection = Sequential(
                Conv2d(inputChannels, outputChannels, kernel_size: 1, stride: stride, bias: false),
                BatchNorm2d(outputChannels));
        }
        RegisterComponents();
    }

    public override Tensor forward(Tensor input)
    {
        var shortcut = input;
        if (projection is not null)
        {
            shortcut = projection.forward(input);
        }
        var x = functional.relu(reduceNorm.forward(reduce.forward(input)));
        x = functional.relu(spatialNorm.forward(spatial.forward(x)));
        x = expandNorm.forward(expand.forward(x));
        return functional.relu(x + shortcut);
    }
}

/// <summary>
/// A ResNet of bottleneck blocks for small images (a 3×3 stem without max pooling), with global average pooling, a
/// linear classifier, and the cross-entropy loss of its logits against <c>labels</c>.
/// </summary>
[RaNNC]
public sealed partial class ResNet : Module<Tensor, Tensor, Tensor>
{
    private readonly Conv2d stem;
    private readonly BatchNorm2d stemNorm;
    private readonly ModuleList<Bottleneck> blocks = new();
    private readonly AdaptiveAvgPool2d pool;
    private readonly Linear classifier;

    public ResNet(ResNetConfig config)
        : base(nameof(ResNet))
    {
        stem = Conv2d(config.InputChannels, config.BaseWidth, kernel_size: 3, padding: 1, bias: false);
        stemNorm = BatchNorm2d(config.BaseWidth);
        var channels = config.BaseWidth;
        for (var stage = 0; stage < config.BlocksPerStage.Count; stage++)
        {
            var width = config.BaseWidth << stage;
            for (var block = 0; block < config.BlocksPerStage[stage]; block++)
            {
                var stride = stage > 0 && block == 0 ? 2 : 1;
                blocks.Add(new Bottleneck(channels, width, stride));
                channels = width * Bottleneck.Expansion;
            }
        }
        pool = AdaptiveAvgPool2d(1);
        classifier = Linear(channels, config.Classes);
        RegisterComponents();
    }

    public override Tensor forward(Tensor images, Tensor labels)
    {
        var x = functional.relu(stemNorm.forward(stem.forward(images)));
        foreach (var block in blocks)
        {
            x = block.forward(x);
        }
        var features = pool.forward(x).flatten(1);
        return functional.cross_entropy(classifier.forward(features), labels);
    }
}
