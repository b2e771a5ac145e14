using System.Globalization;
using Rannc.Execution;
using Rannc.Samples.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Mpi.Worker;

/// <summary>
/// Trains a small float64 MLP with the two-argument <see cref="RanncModule"/> constructor, or as plain TorchSharp for
/// the reference. The worker runs it without <see cref="Communication.RankLauncher"/>, so under mpiexec the module
/// must find the MPI world itself; the tests run the same code in-process for the reference.
/// </summary>
public static class AmbientTraining
{
    public const string Scenario = "ambient-training";
    public const int Steps = 3;
    public const int Batch = 8;
    public static readonly string[] Optimizers = ["sgd", "adam"];

    /// <summary>The model every rank builds (the caller seeds libtorch's generator first).</summary>
    public static nn.Module CreateModel() => new Mlp(inputSize: 6, hiddenSize: 10, hiddenLayers: 3, classes: 3).to(ScalarType.Float64);

    /// <summary>
    /// The per-step losses; with <paramref name="rannc"/> through <c>new RanncModule(model, optimizer, options)</c>,
    /// cut into <paramref name="stages"/> pipeline stages.
    /// </summary>
    public static double[] Train(nn.Module model, string optimizerName, bool rannc, int stages = 2)
    {
        optim.Optimizer optimizer = optimizerName switch
        {
            "sgd" => torch.optim.SGD(model.parameters(), 0.1),
            "adam" => torch.optim.Adam(model.parameters(), lr: 0.01),
            _ => throw new ArgumentException($"unknown optimizer '{optimizerName}'"),
        };
        var options = new RanncOptions { ForcedShape = (stages, 1), PlanCacheDirectory = "", ProfileRepeats = 1, Log = _ => { } };
        using RanncModule? module = rannc ? new RanncModule(model, optimizer, options) : null;
        var losses = new double[Steps];
        for (int step = 0; step < Steps; step++)
        {
            var generator = new torch.Generator(500UL + (ulong)step);
            Tensor input = torch.randn([Batch, 6], ScalarType.Float64, generator: generator);
            Tensor labels = torch.randint(0, 3, [Batch], ScalarType.Int64, generator: generator);
            optimizer.zero_grad();
            Tensor loss = module is null ? ((nn.Module<Tensor, Tensor, Tensor>)model).forward(input, labels) : module.forward(input, labels);
            loss.backward();
            optimizer.step();
            losses[step] = loss.item<double>();
        }
        return losses;
    }

    /// <summary>The worker's scenario: one line per optimizer with this rank's losses, then the exit line.</summary>
    public static int RunWithoutLauncher()
    {
        foreach (string optimizerName in Optimizers)
        {
            torch.manual_seed(1234);
            double[] losses = Train(CreateModel(), optimizerName, rannc: true);
            var world = Communication.AmbientCommunicator.Current;
            Console.WriteLine(FormatLine(world.Rank, world.Size, optimizerName, losses));
        }
        Console.WriteLine($"rannc-worker: rank {Communication.AmbientCommunicator.Current.Rank} exit 0");
        return 0;
    }

    public static string FormatLine(int rank, int size, string optimizerName, double[] losses) =>
        $"ambient: rank {rank} of {size} {optimizerName} {string.Join(" ", losses.Select(l => l.ToString("R", CultureInfo.InvariantCulture)))}";
}
