using System.Text.Json.Nodes;
using Rannc.Communication;
using Rannc.Execution;
using Rannc.Samples;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Tests.Faults;

/// <summary>
/// Loading a checkpoint into a deployed module reads only what the rank holds: the parameters of its stage and their
/// optimizer state. Shown by damaging every item one rank wrote (its stage's): the rank that does not hold them loads
/// (and gets the saved values; with the whole model on one stage it holds nothing), the one that does fails with the
/// checksum error. Before, every rank read every item.
/// </summary>
public sealed class CheckpointShardReadTests
{
    private static readonly SampleTask Mlp = SampleTasks.Mlp(inputSize: 16, hiddenSize: 64, hiddenLayers: 6, classes: 3);
    private static readonly InProcessOptions Launch = new(Timeout: TimeSpan.FromMinutes(2));

    [Fact]
    public void DamagedItemsOfAnotherStage_DoNotStopARankThatDoesNotHoldThem()
    {
        string directory = Directory.CreateTempSubdirectory("rannc-checkpoint-shards-").FullName;
        string deployment = Path.Combine(directory, "deployment.json");
        try
        {
            // 2 stages: rank 1 owns (and writes) stage 1's parameters and optimizer state into rank-1.bin.
            Dictionary<string, Tensor>[] saved = InProcessLauncher.Run(2, comm =>
            {
                (RanncModule rannc, nn.Module model) = Create(comm, new RanncOptions { SaveDeploymentPath = deployment });
                using (rannc)
                {
                    Step(rannc, step: 0, optimizerStep: true);
                    rannc.SaveCheckpoint(directory);
                    return HeldParameters(model);
                }
            }, Launch);
            string folder = Directory.GetDirectories(directory, "checkpoint-*").Single();
            // Damage the file of the rank that holds the most; the other rank must not need any of it.
            int victim = saved[1].Count > saved[0].Count ? 1 : 0, other = 1 - victim;
            int damaged = DamageEveryItemOf(folder, $"rank-{victim}.bin");
            Assert.True(damaged > 0, $"rank-{victim}.bin holds no items");

            var loads = InProcessLauncher.Run(2, comm =>
            {
                // The same plan as the saving run (planning measures times, so it could otherwise differ).
                (RanncModule rannc, nn.Module model) = Create(comm, new RanncOptions { LoadDeploymentPath = deployment });
                using var owned = rannc;
                Step(rannc, step: 0, optimizerStep: false); // deploys: this rank now holds only its stage
                try
                {
                    rannc.LoadCheckpoint(directory);
                    return (Error: (string?)null, Parameters: HeldParameters(model));
                }
                catch (InvalidDataException e)
                {
                    return (Error: e.Message, Parameters: new Dictionary<string, Tensor>());
                }
            }, Launch);

            Assert.Null(loads[other].Error);
            Assert.Equal(saved[other].Keys.Order(), loads[other].Parameters.Keys.Order());
            foreach ((string name, Tensor value) in saved[other])
                Assert.True(value.shape.SequenceEqual(loads[other].Parameters[name].shape) && value.equal(loads[other].Parameters[name]).all().item<bool>(), $"'{name}' differs from the saved value");
            Assert.NotNull(loads[victim].Error);
            Assert.Contains($"in rank-{victim}.bin do not match their checksum", loads[victim].Error);
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    /// <summary>Flips the first byte of every item stored in <paramref name="file"/>; returns how many there were.</summary>
    private static int DamageEveryItemOf(string folder, string file)
    {
        var manifest = JsonNode.Parse(File.ReadAllText(Path.Combine(folder, "manifest.json")))!;
        string path = Path.Combine(folder, file);
        byte[] bytes = File.ReadAllBytes(path);
        int count = 0;
        foreach (JsonNode? entry in manifest["Entries"]!.AsArray())
        {
            if ((string?)entry!["File"] != file || (long)entry["Length"]! == 0) continue;
            bytes[(long)entry["Offset"]!] ^= 0x01;
            count++;
        }
        File.WriteAllBytes(path, bytes);
        return count;
    }

    /// <summary>Copies of the parameters this rank holds (those of other stages have no storage here).</summary>
    private static Dictionary<string, Tensor> HeldParameters(nn.Module model) =>
        model.named_parameters().Where(p => p.parameter.numel() > 0).ToDictionary(p => p.name, p => p.parameter.detach().clone());

    private static (RanncModule Rannc, nn.Module Model) Create(ICommunicator comm, RanncOptions deployment)
    {
        nn.Module model = SeededModels.Create(Mlp.CreateModel, 3);
        var rannc = new RanncModule(model, torch.optim.Adam(model.parameters(), lr: 0.01), comm,
            deployment with { ForcedShape = (2, 1), PlanCacheDirectory = "", ProfileRepeats = 1, Log = _ => { } });
        return (rannc, model);
    }

    private static void Step(RanncModule rannc, int step, bool optimizerStep)
    {
        Tensor[] batch = Mlp.CreateBatch(4, step).Select(t => t.is_floating_point() ? t.to_type(ScalarType.Float64) : t).ToArray();
        rannc.Optimizer.zero_grad();
        using Tensor loss = rannc.forward(batch);
        loss.backward();
        if (optimizerStep) rannc.Optimizer.step();
        rannc.Optimizer.zero_grad();
    }
}
