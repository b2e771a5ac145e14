namespace Rannc.Tests.Zoo;

/// <summary>
/// Values of every dtype and arrays of tensors on stage boundaries (<see cref="ZooRotaryNet"/>): the cut before
/// <c>index_1</c> carries the <c>chunk</c> result (a <c>Tensor[]</c>), the rotated queries (complex128, with gradient), the
/// rotation table (complex128 without a batch axis, whose gradient reaches the learned frequencies), the mask as bool,
/// uint8, int8, int16, int32 and float16, a float16 copy of the embedding and a bfloat16 copy that carries gradients.
/// </summary>
public sealed class ZooRotaryTests
{
    public static readonly ZooModel Rotary = new("rotary", () => new ZooRotaryNet(classes: 3),
        (batch, step) => ZooData.Vectors(batch, ZooRotaryNet.Tokens * ZooRotaryNet.Features, step), Classes: 3, BatchNorm: false);

    /// <summary>The cut that carries every kind of value at once.</summary>
    private const string EveryKind = "index_1";

    /// <summary>Four stages with parameters each: masks and half copies cross three boundaries, the complex table two.</summary>
    private const string FourStages = "frequencies;qkv;index_1";

    public static TheoryData<string, string, string, string> Cases() => new()
    {
        { EveryKind, "1,1", "gpipe", "sgd" },
        { EveryKind, "1,1", "1f1b", "adam" },
        // Uneven replicas: every value (the array's tensors one by one) is split and joined along its batch axis.
        { EveryKind, "1,3", "1f1b", "sgd" },
        { EveryKind, "1,3", "gpipe", "adam" },
        { EveryKind, "2,2", "gpipe", "adam" },
        // Zero bubble: the input half sends the array's and the complex values' gradients, the weight half runs later.
        { EveryKind, "1,3", "zb", "sgd" },
        { FourStages, "1,1,1,1", "1f1b", "sgd" },
        { FourStages, "1,1,1,1", "gpipe", "adam" },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void EveryDtypeAndAnArrayOfTensorsOnACut_TrainLikePlainTorchSharp(string cuts, string replicas, string schedule, string optimizer) =>
        ZooHarness.AssertMatchesReference(Rotary, new ZooPlan(replicas.Split(',').Select(int.Parse).ToList(), cuts.Split(';'), InsideSequential: false),
            schedule, optimizer);
}
