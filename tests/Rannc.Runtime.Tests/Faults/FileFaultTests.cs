using System.Collections.Concurrent;
using Rannc.Communication;
using Rannc.Execution;
using Rannc.Samples;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Tests.Faults;

/// <summary>Caches and plan files are never fatal: an unwritable cache or a malformed file gives a warning, training goes on.</summary>
public sealed class FileFaultTests
{
    private static readonly SampleTask Mlp = SampleTasks.Mlp(inputSize: 6, hiddenSize: 8, hiddenLayers: 2, classes: 3);

    [Theory]
    [InlineData("/proc/rannc-plan-cache")] // cannot be created, even by root
    [InlineData("file")]                   // a file where the folder should be
    public void UnwritableCacheDirectory_TrainingCompletesWithOneWarning(string where)
    {
        string? file = null;
        if (where == "file")
        {
            file = Path.GetTempFileName();
            where = Path.Combine(file, "plans");
        }
        try
        {
            var log = new ConcurrentQueue<string>();
            double[] losses = Train(new RanncOptions { PlanCacheDirectory = where, Log = log.Enqueue });
            Assert.All(losses, l => Assert.True(double.IsFinite(l)));
            Assert.Single(log, line => line.Contains("could not write the plan cache") && line.Contains("training continues"));
        }
        finally
        {
            if (file is not null) File.Delete(file);
        }
    }

    [Theory]
    [InlineData("null")]
    [InlineData("no plan")]
    [InlineData("no stages")]
    [InlineData("no node ids")]
    public void MalformedDeploymentFile_IsIgnoredWithAWarningNamingTheFile(string damage)
    {
        string cache = Directory.CreateTempSubdirectory("rannc-bad-cache-").FullName;
        try
        {
            var log = new ConcurrentQueue<string>();
            Train(new RanncOptions { PlanCacheDirectory = cache, Log = log.Enqueue });
            string file = Directory.GetFiles(cache, "deployment-*.json").Single();
            var json = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(file))!;
            switch (damage)
            {
                case "null": json = null; break;
                case "no plan": json["Plan"] = null; break;
                case "no stages": json["Plan"]!["Stages"] = null; break;
                default: json["Plan"]!["Stages"]![0]!["NodeIds"] = null; break;
            }
            File.WriteAllText(file, json?.ToJsonString() ?? "null");
            log.Clear();
            double[] losses = Train(new RanncOptions { PlanCacheDirectory = cache, Log = log.Enqueue });
            Assert.All(losses, l => Assert.True(double.IsFinite(l)));
            Assert.Contains(log, line => line.Contains($"Ignoring plan file {file}"));
        }
        finally
        {
            Directory.Delete(cache, recursive: true);
        }
    }

    private static double[] Train(RanncOptions options)
    {
        options = options with { ForcedReplicas = [1, 1], ProfileRepeats = 1 };
        Tensor[] batch = Mlp.CreateBatch(4, 0);
        return InProcessLauncher.Run(2, comm =>
        {
            nn.Module model = SeededModels.Create(Mlp.CreateModel, 3);
            var optimizer = torch.optim.SGD(model.parameters(), 0.1);
            using var rannc = new RanncModule(model, optimizer, comm, options);
            Tensor loss = rannc.forward(batch.Select(t => t.is_floating_point() ? t.to_type(ScalarType.Float64) : t).ToArray());
            loss.backward();
            return loss.item<double>();
        }, new InProcessOptions(Timeout: TimeSpan.FromMinutes(1)));
    }
}
