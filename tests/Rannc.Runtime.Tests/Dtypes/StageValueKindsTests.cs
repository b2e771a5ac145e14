using Rannc.Capture;
using Rannc.Execution;
using static TorchSharp.torch;

namespace Rannc.Tests.Dtypes;

/// <summary>Which values may sit on a stage boundary, and the reason given for those that may not.</summary>
public sealed class StageValueKindsTests
{
    private static CapturedValue Value(ValueKind kind, string typeName) => new(0, "v", kind, typeName, -1);

    [Theory]
    [InlineData(ValueKind.Tensor, "global::TorchSharp.torch.Tensor")]
    [InlineData(ValueKind.Other, "global::TorchSharp.torch.Tensor[]")]
    [InlineData(ValueKind.Other, "long[]")]
    [InlineData(ValueKind.Scalar, "long")]
    public void TensorsArraysShapesAndNumbers_Cross(ValueKind kind, string typeName) => Assert.True(ValueTransfer.CanCross(Value(kind, typeName)));

    [Theory]
    [InlineData("global::System.Collections.Generic.List<global::TorchSharp.torch.Tensor>")]
    [InlineData("global::TorchSharp.torch.Generator")]
    public void OtherObjects_DoNotCross(string typeName) => Assert.False(ValueTransfer.CanCross(Value(ValueKind.Other, typeName)));

    [Theory]
    [InlineData(ScalarType.ComplexFloat32)]
    [InlineData(ScalarType.ComplexFloat64)]
    [InlineData(ScalarType.BFloat16)]
    [InlineData(ScalarType.Int8)]
    [InlineData(ScalarType.Byte)]
    public void EveryComputingDtype_IsSendable(ScalarType dtype)
    {
        var tensor = new ValueMeasurement(dtype, [2, 3], 6, false);
        Assert.Null(ValueTransfer.WhyNotSendable(tensor));
        Assert.Null(ValueTransfer.WhyNotSendable(new ValueMeasurement(null, null, 12, false, [tensor, tensor])));
    }

    [Fact]
    public void AQuantizedTensor_AloneOrInAnArray_IsRefusedNamingItsDtype()
    {
        var quantized = new ValueMeasurement(ScalarType.QInt8, [4], 4, false);
        Assert.Contains("QInt8 tensor cannot travel between stages", ValueTransfer.WhyNotSendable(quantized));
        var array = new ValueMeasurement(null, null, 8, false, [new ValueMeasurement(ScalarType.Float32, [1], 4, false), quantized]);
        Assert.Contains("QInt8", ValueTransfer.WhyNotSendable(array));
    }

    [Fact]
    public void ATensorOfNineDimensions_IsRefused() =>
        Assert.Contains("9 dimensions", ValueTransfer.WhyNotSendable(new ValueMeasurement(ScalarType.Float64, [1, 1, 1, 1, 1, 1, 1, 1, 2], 16, false)));
}
