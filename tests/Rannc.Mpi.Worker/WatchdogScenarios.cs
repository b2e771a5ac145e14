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
        // Trains a small BERT on a 2x2 plan (2 stages of 2 replicas) until the test stops a rank from outside.
        ["train-until-stopped"] = comm => TrainBert(comm, leavingRank: -1),
        // The same, but rank 3 returns from its delegate after step 10 while the others train on.
        ["train-then-leave"] = comm => TrainBert(comm, leavingRank: 3),
    };

    /// <summary>The step after which <c>train-then-leave</c>'s leaving rank returns.</summary>
    public const int LeaveAfterStep = 10;

    private static void TrainBert(ICommunicator comm, int leavingRank)
    {
        Console.WriteLine($"rannc-worker: rank {comm.Rank} pid {Environment.ProcessId}");
        torch.manual_seed(5);
        var config = new BertConfig(VocabularySize: 50, HiddenSize: 16, Layers: 2, Heads: 2, IntermediateSize: 32, MaxPositions: 16,
            DropoutProbability: 0);
        nn.Module model = new BertForMaskedLM(config);
        var optimizer = torch.optim.SGD(model.parameters(), 0.1);
        var options = new RanncOptions { ForcedShape = (2, comm.Size / 2), PlanCacheDirectory = "", ProfileRepeats = 1, MicroBatches = 2 };
        using var rannc = new RanncModule(model, optimizer, comm, options);
        using var generator = new Generator(9);
        using Tensor ids = torch.randint(0, config.VocabularySize, [8, 6], ScalarType.Int64, generator: generator);
        using Tensor labels = ids.clone();
        for (int step = 0; step < 100_000; step++)
        {
            optimizer.zero_grad();
            using Tensor loss = rannc.forward(ids, labels);
            loss.backward();
            optimizer.step();
            if (step % 10 == 0) Console.WriteLine($"rannc-worker: rank {comm.Rank} step {step}");
            if (comm.Rank == leavingRank && step == LeaveAfterStep)
            {
                Console.WriteLine($"rannc-worker: rank {comm.Rank} leaves after step {step}");
                return;
            }
        }
        throw new ScenarioFailedException("nobody stopped the training");
    }
}
