using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Tests.Zoo;

/// <summary>The zoo's models at test sizes, with their data.</summary>
internal static class ZooCatalog
{
    public static readonly ZooModel ResNet = new("resnet", () => new ZooResNet([2, 1]), Images, Classes: 5, BatchNorm: true);

    public static readonly ZooModel Vgg = new("vgg", () => new ZooVgg([4, 0, 6, 6, 0]), Images, Classes: 5, BatchNorm: false);

    public static readonly ZooModel MobileNet = new("mobilenet", () => new ZooMobileNet(), Images, Classes: 5, BatchNorm: true);

    public static readonly ZooModel Containers = new("containers", () => new ZooContainers(), Vectors(6), Classes: 3, BatchNorm: false);

    public static readonly ZooModel InPlace = new("inplace", () => new ZooInPlaceNet(), Vectors(5), Classes: 3, BatchNorm: false);

    public static readonly ZooModel Alias = new("alias", () => new ZooAliasNet(), Vectors(5), Classes: 3, BatchNorm: false);

    public static readonly ZooModel UNet = new("unet", () => new ZooUNet(), Images, Classes: 3, BatchNorm: true, Target: Mask);

    /// <summary>Sequence-first: source tokens [6, batch], target tokens [5, batch], a [5, 5] causal mask, labels [5, batch].</summary>
    public static readonly ZooModel Transformer = new("transformer", () => new ZooTransformer(), Images, Classes: 11, BatchNorm: false,
        Arguments: ZooData.Translation, Forward: (m, b) => ((ZooTransformer)m).forward(b[0], b[1], b[2], b[3]));

    /// <summary>A ragged batch: flat token ids, one offset per sample, class labels.</summary>
    public static readonly ZooModel TextClassifier = new("text", () => new ZooTextClassifier(), Images, Classes: 4, BatchNorm: false,
        Arguments: (batch, step) => ZooData.Bags(batch, step, classes: 4), Forward: (m, b) => ((ZooTextClassifier)m).forward(b[0], b[1], b[2]));

    /// <summary>Sequence-first vectors [7, batch, 5] and class labels, with no batch declaration on the model.</summary>
    public static readonly ZooModel SequenceFirst = new("sequence-first", () => new ZooSequenceFirst(), Images, Classes: 3, BatchNorm: false,
        Arguments: (batch, step) => [ZooData.Vectors(7 * batch, 5, step).reshape(7, batch, 5), ZooData.Labels(batch, 3, step)],
        Forward: (m, b) => ((ZooSequenceFirst)m).forward(b[0], b[1]));

    /// <summary>Token ids [batch, 5] and the next tokens as labels [batch, 5].</summary>
    public static readonly ZooModel Llama = new("llama", () => new ZooLlama(), Tokens, Classes: 13, BatchNorm: false, Target: Tokens);

    private static Tensor Tokens(int batch, int step)
    {
        using var generator = new Generator((ulong)(9700 + step));
        return torch.randint(0, 13, [batch, 5], ScalarType.Int64, generator: generator);
    }

    private static Tensor Images(int batch, int step) => ZooData.Images(batch, step);

    /// <summary>A class per pixel of the 8×8 images.</summary>
    private static Tensor Mask(int batch, int step)
    {
        using var generator = new Generator((ulong)(8000 + step));
        return torch.randint(0, 3, [batch, 8, 8], ScalarType.Int64, generator: generator);
    }

    private static Func<int, int, Tensor> Vectors(int width) => (batch, step) => ZooData.Vectors(batch, width, step);
}
