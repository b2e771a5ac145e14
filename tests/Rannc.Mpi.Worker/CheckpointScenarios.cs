using Rannc.Communication;
using Rannc.Execution;
using Rannc.Samples.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Mpi.Worker;

/// <summary>
/// Saves checkpoints in a loop until the process is killed: before save k every parameter is filled with k, so a
/// loaded checkpoint shows at once whether it is one complete save (every value equal) or a mix. The model is large
/// enough (about 160 MiB of float64 parameters) that a save takes a good fraction of a second.
/// </summary>
public static class CheckpointScenarios
{
    /// <summary>The folder comes from RANNC_TEST_CHECKPOINT_DIR (the worker takes one argument, the scenario).</summary>
    public static readonly IReadOnlyDictionary<string, Action<ICommunicator>> All = new Dictionary<string, Action<ICommunicator>>
    {
        ["checkpoint-loop"] = SaveUntilKilled,
    };

    public static nn.Module CreateModel() => new Mlp(inputSize: 1024, hiddenSize: 1024, hiddenLayers: 20, classes: 8).to(ScalarType.Float64);

    private static void SaveUntilKilled(ICommunicator comm)
    {
        string directory = Environment.GetEnvironmentVariable("RANNC_TEST_CHECKPOINT_DIR")
            ?? throw new InvalidOperationException("set RANNC_TEST_CHECKPOINT_DIR");
        nn.Module model = CreateModel();
        var optimizer = torch.optim.SGD(model.parameters(), 0.1);
        using var rannc = new RanncModule(model, optimizer, comm, new RanncOptions { PlanCacheDirectory = "", Log = _ => { } });
        for (long k = 1; ; k++)
        {
            using (torch.no_grad())
            {
                foreach (var (_, parameter) in model.named_parameters()) parameter.fill_(k);
            }
            rannc.SaveCheckpoint(directory);
            Console.WriteLine($"rannc-worker: saved {k}");
        }
    }
}
