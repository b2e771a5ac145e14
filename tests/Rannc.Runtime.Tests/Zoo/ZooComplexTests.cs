namespace Rannc.Tests.Zoo;

/// <summary>Complex values travel between stages: wherever the planner cuts, and a forced cut through one.</summary>
public sealed class ZooComplexTests
{
    private static readonly ZooModel Complex = new("complex", () => new ZooComplexNet(), (batch, step) => ZooData.Vectors(batch, 5, step),
        Classes: 3, BatchNorm: false);

    [Fact]
    public void PlannedCut_TrainsLikePlainTorchSharp() =>
        ZooHarness.AssertMatchesReference(Complex, new ZooPlan([1, 1]), "1f1b", "adam");

    [Theory]
    [InlineData("1,1", "gpipe", "sgd")]
    [InlineData("1,1", "1f1b", "adam")]
    [InlineData("1,3", "gpipe", "adam")]
    public void ForcedCutThroughAComplexValue_TrainsLikePlainTorchSharp(string replicas, string schedule, string optimizer) =>
        ZooHarness.AssertMatchesReference(Complex, new ZooPlan(replicas.Split(',').Select(int.Parse).ToList(), ["view_as_real"], InsideSequential: false),
            schedule, optimizer);
}
