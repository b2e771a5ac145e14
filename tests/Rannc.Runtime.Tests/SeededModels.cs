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

    public static nn.Module Create(Func<nn.Module> create, long seed, ScalarType dtype = ScalarType.Float64) =>
        Seeded(seed, () => create().to(dtype));

    /// <summary>
    /// Seeds and runs <paramref name="construct"/> under the lock: for deferred construction, the
    /// <c>new RanncModule(createModel, ...)</c> call, in which rank 0 builds the model from the seed.
    /// </summary>
    public static T Seeded<T>(long seed, Func<T> construct)
    {
        lock (RandomLock)
        {
            torch.manual_seed(seed);
            return construct();
        }
    }
}
