using Rannc.Communication;
using Rannc.Execution;
using Rannc.Samples.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Mpi.Worker;

/// <summary>
/// Scenarios that end the job through the watchdog. They run without the worker's closing barrier, since a rank
/// leaving early is the point of some of them.
/// </summary>
public static class WatchdogScenarios
{
    public static readonly IReadOnlyDictionary<string, Action<ICommunicator>> All = new Dictionary<string, Action<ICommunicator>>
    {
        // Rank 1 returns from its delegate at once; every other rank waits for a message from it.
        ["leave-early"] = comm =>
        {
            if (comm.Rank == 1) return;
            using Tensor into = torch.zeros(4);
            comm.Receive(into, 1, 3);
        },
        // Trains a small GPT on a 2x2 plan (2 stages of 2 replicas) until the test stops a rank from outside.
        ["train-until-stopped"] = TrainUntilStopped,
    };

    private static void TrainUntilStopped(ICommunicator comm)
    {
        Console.WriteLine($"rannc-worker: rank {comm.Rank} pid {Environment.ProcessId}");
        torch.manual_seed(5);
        nn.Module model = new GptLanguageModel(vocabulary: 13, width: 8, layers: 2, heads: 2, maxSequence: 5);
        var optimizer = torch.optim.SGD(model.parameters(), 0.1);
        var options = new RanncOptions { ForcedShape = (2, comm.Size / 2), PlanCacheDirectory = "", ProfileRepeats = 1, MicroBatches = 2 };
        using var rannc = new RanncModule(model, optimizer, comm, options);
        using var generator = new Generator(9);
        using Tensor tokens = torch.randint(0, 13, [8, 5], ScalarType.Int64, generator: generator);
        using Tensor targets = torch.randint(0, 13, [8, 5], ScalarType.Int64, generator: generator);
        for (int step = 0; step < 100_000; step++)
        {
            optimizer.zero_grad();
            using Tensor loss = rannc.forward(tokens, targets);
            loss.backward();
            optimizer.step();
            if (step % 20 == 0) Console.WriteLine($"rannc-worker: rank {comm.Rank} step {step}");
        }
        throw new ScenarioFailedException("nobody stopped the training");
    }
}
