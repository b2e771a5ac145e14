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

    /// <summary>A sequence-first translation batch: source [6, batch], target [5, batch], causal mask [5, 5], labels [5, batch].</summary>
    public static Tensor[] Translation(int batch, int step)
    {
        const int vocabulary = 11, sourceLength = 6, targetLength = 5;
        using var generator = new Generator((ulong)(9000 + step));
        Tensor source = torch.randint(0, vocabulary, [sourceLength, batch], ScalarType.Int64, generator: generator);
        Tensor target = torch.randint(0, vocabulary, [targetLength, batch], ScalarType.Int64, generator: generator);
        Tensor labels = torch.randint(0, vocabulary, [targetLength, batch], ScalarType.Int64, generator: generator);
        Tensor mask = torch.triu(torch.full([targetLength, targetLength], double.NegativeInfinity, ScalarType.Float64), 1);
        return [source, target, mask, labels];
    }

    /// <summary>A ragged batch of bags of 1 to 6 token ids: the flat ids, each sample's start offset, class labels.</summary>
    public static Tensor[] Bags(int batch, int step, int classes)
    {
        const int vocabulary = 23;
        using var generator = new Generator((ulong)(9500 + step));
        long[] lengths = torch.randint(1, 7, [batch], ScalarType.Int64, generator: generator).data<long>().ToArray();
        long[] offsets = new long[batch];
        for (int i = 1; i < batch; i++) offsets[i] = offsets[i - 1] + lengths[i - 1];
        Tensor tokens = torch.randint(0, vocabulary, [lengths.Sum()], ScalarType.Int64, generator: generator);
        Tensor labels = torch.randint(0, classes, [batch], ScalarType.Int64, generator: generator);
        return [tokens, torch.tensor(offsets), labels];
    }

    /// <summary>Builds a model from the zoo's seed in float64 (every rank and the reference build the same one).</summary>
    public static nn.Module Seeded(Func<nn.Module> create)
    {
        torch.manual_seed(4321);
        return create().to(ScalarType.Float64);
    }
}
