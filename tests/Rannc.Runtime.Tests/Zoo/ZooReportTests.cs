using System.Collections.Concurrent;
using Rannc.Communication;
using Rannc.Execution;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Tests.Zoo;

/// <summary>What a user sees about opaque modules: a line of the plan summary, and why a forced plan cannot be cut.</summary>
public sealed class ZooReportTests
{
    private static readonly ZooModel Opaque = new("opaque", () => new ZooOpaqueNet(), (batch, step) => torch.randn([batch, 5], ScalarType.Float64, generator: new Generator((ulong)step)), Classes: 3, BatchNorm: false);

    private static (ConcurrentQueue<string> Log, Exception? Error) Train(IReadOnlyList<int>? plan, int ranks)
    {
        var log = new ConcurrentQueue<string>();
        Tensor[] batch = ZooHarness.BatchOf(Opaque, 0);
        try
        {
            InProcessLauncher.Run(ranks, comm =>
            {
                nn.Module model = ZooHarness.CreateSeeded(Opaque);
                var optimizer = torch.optim.SGD(model.parameters(), learningRate: 0.1);
                using var rannc = new RanncModule(model, optimizer, comm,
                    new RanncOptions { ForcedReplicas = plan, PlanCacheDirectory = "", ProfileRepeats = 1, Log = log.Enqueue });
                rannc.forward(batch).backward();
                return 0;
            }, new InProcessOptions(Timeout: TimeSpan.FromMinutes(2)));
            return (log, null);
        }
        catch (RankFailedException e)
        {
            return (log, e);
        }
    }

    [Fact]
    public void PlanSummary_ListsOpaqueModulesWithTheirShareOfParameters()
    {
        (ConcurrentQueue<string> log, Exception? error) = Train([1, 1], 2);
        Assert.Null(error);
        // fc has 5x6+6 = 36 parameters, the head 6x6+6 + 6x3+3 = 63: 64 % of 99.
        string line = Assert.Single(log, l => l.Contains("opaque module", StringComparison.Ordinal));
        Assert.Contains("1 opaque module holds 64 % of the parameters", line);
        Assert.Contains("head (ZooOpaqueHead is not marked [RaNNC]", line);
    }

    [Fact]
    public void ForcedPlanWithMoreStagesThanNodes_SaysTooFewNodesToCut()
    {
        (_, Exception? error) = Train([1, 1, 1, 1], 4);
        Assert.NotNull(error);
        Assert.Contains("too few nodes to cut, the graph has only 3 node(s)", error.Message);
        Assert.Contains("1 opaque module holds 64 %", error.Message);
        Assert.DoesNotContain("does not fit", error.Message);
        Assert.DoesNotContain("RANNC_DEVICE_MEMORY", error.Message);
    }
}
