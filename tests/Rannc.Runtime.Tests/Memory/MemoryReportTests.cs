using System.Collections.Concurrent;
using System.Text.RegularExpressions;
using Rannc.Communication;
using Rannc.Execution;
using Rannc.Execution.Memory;
using Rannc.Samples;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Tests.Memory;

/// <summary>
/// The memory report (<c>RANNC_MEMORY_REPORT</c>) and what its numbers rest on. Its values are measurements, so the
/// tests check their form and the exact parts (the tensor bytes it counts, the predicted peak it prints), not sizes.
/// </summary>
public sealed partial class MemoryReportTests
{
    private static readonly SampleTask Task = SampleTasks.Mlp(inputSize: 6, hiddenSize: 10, hiddenLayers: 4, classes: 3);

    [Fact]
    public void Report_AfterTheMeasuredSteps_ListsEveryRankWithItsStagesPredictedPeak()
    {
        var lines = new ConcurrentQueue<string>();
        var plans = InProcessLauncher.Run(2, comm =>
        {
            nn.Module model = SeededModels.Create(Task.CreateModel, 3);
            var optimizer = torch.optim.Adam(model.parameters(), lr: 0.01);
            var options = new RanncOptions { ForcedShape = (2, 1), PlanCacheDirectory = "", ProfileRepeats = 1, MemoryReportSteps = 2, Log = lines.Enqueue };
            using var rannc = new RanncModule(model, optimizer, comm, options);
            for (int step = 0; step < 4; step++)
            {
                optimizer.zero_grad();
                rannc.forward(Task.CreateBatch(8, step).Select(t => t.is_floating_point() ? t.to_type(ScalarType.Float64) : t).ToArray()).backward();
                optimizer.step();
            }
            return rannc.Plan!;
        }, new InProcessOptions(Timeout: TimeSpan.FromMinutes(3)));
        string report = Assert.Single(lines, l => l.StartsWith("Rannc memory over steps 1–2", StringComparison.Ordinal));
        Assert.Contains("in-process ranks share one process", report);
        foreach (var stage in plans[0].Stages)
        {
            foreach (int rank in stage.ReplicaRanks)
            {
                Match line = StageLine().Match(report[report.IndexOf($"stage {stage.Index} rank {rank}:", StringComparison.Ordinal)..]);
                Assert.True(line.Success, report);
                Assert.Equal(FormattableString.Invariant($"{stage.PeakMemoryBytes / 1048576.0:0.0}"), line.Groups["predicted"].Value);
            }
        }
    }

    [Fact]
    public void TensorBytes_CountsTiedAndOptimizerTensorsOnce()
    {
        nn.Module model = SeededModels.Create(Task.CreateModel, 3);
        long parameters = model.parameters().Sum(p => p.numel()) * sizeof(double);
        Assert.Equal(parameters, MemoryReport.TensorBytes(model, torch.optim.SGD(model.parameters(), 0.1)));
        // Adam's two moments are allocated when it is constructed.
        Assert.Equal(3 * parameters, MemoryReport.TensorBytes(model, torch.optim.Adam(model.parameters())));
    }

    [Fact]
    public void SecondBackwardOfOneLoss_FailsTheNextForward_InsteadOfAddingTheGradientsAgain()
    {
        var errors = InProcessLauncher.Run(2, comm =>
        {
            nn.Module model = SeededModels.Create(Task.CreateModel, 3);
            var optimizer = torch.optim.SGD(model.parameters(), 0.1);
            using var rannc = new RanncModule(model, optimizer, comm, new RanncOptions { ForcedShape = (2, 1), PlanCacheDirectory = "", ProfileRepeats = 1, Log = _ => { } });
            Tensor[] batch = Task.CreateBatch(8, 0).Select(t => t.is_floating_point() ? t.to_type(ScalarType.Float64) : t).ToArray();
            Tensor loss = rannc.forward(batch);
            loss.backward(retain_graph: true);
            loss.backward();
            return Assert.Throws<InvalidOperationException>(() => rannc.forward(batch)).Message;
        }, new InProcessOptions(Timeout: TimeSpan.FromMinutes(3)));
        Assert.All(errors, message => Assert.Contains("backward() ran a second time", message));
    }

    [GeneratedRegex(@"measured [0-9.]+ MiB, predicted (?<predicted>[0-9.]+) MiB \(measured/predicted [0-9.]+\); held between steps -?[0-9.]+ MiB")]
    private static partial Regex StageLine();
}
