using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Tests;

/// <summary>
/// Builds models from a seed. libtorch has one random generator per process, shared by the in-process ranks and by
/// test classes that xunit runs in parallel, so every seeded construction in this assembly takes this one lock.
/// </summary>
internal static class SeededModels
{
    private static readonly object RandomLock = new();

    public static nn.Module Create(Func<nn.Module> create, long seed, ScalarType dtype = ScalarType.Float64)
    {
        lock (RandomLock)
        {
            torch.manual_seed(seed);
            return create().to(dtype);
        }
    }
}
