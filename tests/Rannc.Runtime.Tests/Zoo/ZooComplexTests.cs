namespace Rannc.Tests.Zoo;

/// <summary>Complex values cannot travel between stages yet: the planner cuts elsewhere, a forced cut is refused naming the value.</summary>
public sealed class ZooComplexTests
{
    private static readonly ZooModel Complex = new("complex", () => new ZooComplexNet(), (batch, step) => ZooData.Vectors(batch, 5, step),
        Classes: 3, BatchNorm: false);

    [Fact]
    public void PlannedCut_AvoidsComplexValuesAndTrainsLikePlainTorchSharp() =>
        ZooHarness.AssertMatchesReference(Complex, new ZooPlan([1, 1]), "1f1b", "adam");

    [Fact]
    public void ForcedCutThroughAComplexValue_IsRefusedNamingIt()
    {
        var error = Assert.ThrowsAny<Exception>(() =>
            ZooHarness.AssertMatchesReference(Complex, new ZooPlan([1, 1], ["view_as_real"], InsideSequential: false), "gpipe", "sgd"));
        Assert.Contains("('multiply, a ComplexFloat64 tensor", error.ToString());
        Assert.Contains("complex tensors cannot travel between stages yet", error.ToString());
    }
}
