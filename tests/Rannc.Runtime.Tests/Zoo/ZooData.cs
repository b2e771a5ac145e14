using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Tests.Zoo;

/// <summary>
/// The zoo's deterministic data, compiled into the MPI worker too (with the models it runs), so that a job under
/// mpiexec and the reference in the test process train on the same tensors.
/// </summary>
public static class ZooData
{
    public static Tensor Images(int batch, int step)
    {
        using var generator = new Generator((ulong)(5000 + step));
        return torch.randn([batch, 3, 8, 8], ScalarType.Float64, generator: generator);
    }

    public static Tensor Vectors(int batch, int width, int step)
    {
        using var generator = new Generator((ulong)(6000 + step));
        return torch.randn([batch, width], ScalarType.Float64, generator: generator);
    }

    public static Tensor Labels(int batch, int classes, int step)
    {
        using var generator = new Generator((ulong)(7000 + step));
        return torch.randint(0, classes, [batch], ScalarType.Int64, generator: generator);
    }

    /// <summary>Builds a model from the zoo's seed in float64 (every rank and the reference build the same one).</summary>
    public static nn.Module Seeded(Func<nn.Module> create)
    {
        torch.manual_seed(4321);
        return create().to(ScalarType.Float64);
    }
}
