using static TorchSharp.torch;

namespace Rannc.Tests;

/// <summary>The float64 equivalence checks of the state and optimizer tests: relative to the expected value's size.</summary>
internal static class Close
{
    public const double Tolerance = 1e-9;

    /// <summary>Same names, and each tensor within <see cref="Tolerance"/> of the expected one's largest magnitude.</summary>
    public static void AssertSameTensors(IReadOnlyDictionary<string, Tensor> expected, IReadOnlyDictionary<string, Tensor> actual)
    {
        Assert.Equal(expected.Keys.Order(), actual.Keys.Order());
        foreach ((string name, Tensor value) in expected)
        {
            double scale = Math.Max(1e-12, value.abs().max().item<double>());
            double difference = (actual[name] - value).abs().max().item<double>();
            Assert.True(difference <= Tolerance * scale, $"{name} differs by {difference:e3}");
        }
    }

    public static void AssertClose(double expected, double actual, string what) =>
        Assert.True(Math.Abs(expected - actual) <= Tolerance * Math.Max(1e-12, Math.Abs(expected)), $"{what}: expected {expected:R}, got {actual:R}");
}
