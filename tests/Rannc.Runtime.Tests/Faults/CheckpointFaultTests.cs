using System.Text.Json.Nodes;
using Rannc.Communication;
using Rannc.Execution;
using Rannc.Samples;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Tests.Faults;

/// <summary>Checkpoints fail loudly when they are incomplete, foreign or damaged, and keep the newest ones.</summary>
public sealed class CheckpointFaultTests
{
    private static readonly SampleTask Mlp = SampleTasks.Mlp(inputSize: 6, hiddenSize: 8, hiddenLayers: 2, classes: 3);

    [Fact]
    public void MissingOptimizerState_NeedsAnExplicitOption() => WithCheckpoint(directory =>
    {
        string manifest = Path.Combine(Directory.GetDirectories(directory, "checkpoint-*").Single(), "manifest.json");
        var json = JsonNode.Parse(File.ReadAllText(manifest))!;
        var entries = json["Entries"]!.AsArray();
        foreach (var entry in entries.Where(e => (string?)e!["Kind"] == "optimizer").ToList()) entries.Remove(entry);
        File.WriteAllText(manifest, json.ToJsonString());
        var failure = Assert.Throws<RankFailedException>(() => Load(directory, Mlp, loadOptimizerState: true));
        Assert.Contains("holds no optimizer state. Pass loadOptimizerState: false", failure.ToString());
        Load(directory, Mlp, loadOptimizerState: false);
    });

    [Fact]
    public void ForeignCheckpoint_ListsTheDifferences() => WithCheckpoint(directory =>
    {
        var other = SampleTasks.Mlp(inputSize: 6, hiddenSize: 9, hiddenLayers: 2, classes: 3);
        var failure = Assert.Throws<RankFailedException>(() => Load(directory, other, loadOptimizerState: true));
        Assert.Contains("was written for a different model", failure.ToString());
        Assert.Contains("in the checkpoint but Float64[9, 6] in the model", failure.ToString());
    });

    [Fact]
    public void FlippedByte_IsAChecksumError() => WithCheckpoint(directory =>
    {
        // The largest rank file: a stage may hold no parameters.
        string file = Directory.GetFiles(Directory.GetDirectories(directory, "checkpoint-*").Single(), "rank-*.bin").MaxBy(f => new FileInfo(f).Length)!;
        byte[] bytes = File.ReadAllBytes(file);
        bytes[bytes.Length / 2] ^= 0x10;
        File.WriteAllBytes(file, bytes);
        var failure = Assert.Throws<RankFailedException>(() => Load(directory, Mlp, loadOptimizerState: true));
        Assert.Contains("is damaged", failure.ToString());
        Assert.Contains("do not match their checksum", failure.ToString());
    });

    [Fact]
    public void Saves_KeepTheNewestTwo_AndLoadingTakesTheNewest() => WithCheckpoint(directory =>
    {
        Save(directory, steps: 2);
        Save(directory, steps: 3);
        string[] folders = Directory.GetDirectories(directory, "checkpoint-*").Select(Path.GetFileName).Order().ToArray()!;
        Assert.Equal(["checkpoint-000002", "checkpoint-000003"], folders);
        Assert.Empty(Directory.GetDirectories(directory, ".checkpoint-*"));
    });

    private static void WithCheckpoint(Action<string> test)
    {
        string directory = Directory.CreateTempSubdirectory("rannc-checkpoint-faults-").FullName;
        try
        {
            Save(directory, steps: 1);
            test(directory);
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    private static void Save(string directory, int steps) => InProcessLauncher.Run(2, comm =>
    {
        using var rannc = Create(comm, Mlp);
        for (int step = 0; step < steps; step++)
        {
            rannc.Optimizer.zero_grad();
            rannc.forward(Batch(step)).backward();
            rannc.Optimizer.step();
        }
        rannc.SaveCheckpoint(directory);
    }, new InProcessOptions(Timeout: TimeSpan.FromMinutes(1)));

    private static void Load(string directory, SampleTask task, bool loadOptimizerState) => InProcessLauncher.Run(2, comm =>
    {
        using var rannc = Create(comm, task);
        rannc.LoadCheckpoint(directory, loadOptimizerState);
    }, new InProcessOptions(Timeout: TimeSpan.FromMinutes(1)));

    private static Tensor[] Batch(int step) => Mlp.CreateBatch(4, step).Select(t => t.is_floating_point() ? t.to_type(ScalarType.Float64) : t).ToArray();

    private static RanncModule Create(ICommunicator comm, SampleTask task)
    {
        nn.Module model = SeededModels.Create(task.CreateModel, 3);
        return new RanncModule(model, torch.optim.Adam(model.parameters()), comm,
            new RanncOptions { ForcedReplicas = [1, 1], PlanCacheDirectory = "", ProfileRepeats = 1, Log = _ => { } });
    }
}
