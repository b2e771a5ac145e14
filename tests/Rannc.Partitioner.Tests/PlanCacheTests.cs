using Rannc.Partitioner;

namespace Rannc.Partitioner.Tests;

public sealed class PlanCacheTests : IDisposable
{
    private readonly string _directory = Path.Combine(Path.GetTempPath(), "rannc-plan-cache-" + Guid.NewGuid().ToString("N"));
    private readonly List<string> _warnings = [];

    public void Dispose()
    {
        if (Directory.Exists(_directory))
        {
            Directory.Delete(_directory, recursive: true);
        }
    }

    private FilePlanStore Store() => new(_directory, _warnings.Add);

    [Fact]
    public void Key_IsStableAndCoversEveryInput()
    {
        PlanningCase input = TestInputs.SmallBert();
        string key = PlanCacheKey.Compute(input.Graph, input.Costs, input.Cluster, input.Options);

        // A fixed input has a fixed key in every process (update deliberately when the format changes).
        Assert.Equal("1f093613050df69e41a85fae26fda15d80442c4182103b49b280ee3e80165cb7", key);
        Assert.Equal(key, PlanCacheKey.Compute(TestInputs.SmallBert().Graph, input.Costs, input.Cluster, input.Options));
        var changedCosts = new CostTable(input.Costs.Nodes.Select((c, i) => i == 3 ? c with { BackwardSecondsPerSample = c.BackwardSecondsPerSample * 1.01 } : c).ToList());
        Assert.NotEqual(key, PlanCacheKey.Compute(input.Graph, changedCosts, input.Cluster, input.Options));
        Assert.NotEqual(key, PlanCacheKey.Compute(input.Graph, input.Costs, input.Cluster with { InterNodeLatencySeconds = 2e-5 }, input.Options));
        Assert.NotEqual(key, PlanCacheKey.Compute(input.Graph, input.Costs, input.Cluster, input.Options with { MemoryMargin = 0.2 }));
        var renamed = input.Graph with { Nodes = input.Graph.Nodes.Select(n => n.Id == 0 ? n with { Name = "embed" } : n).ToList() };
        Assert.NotEqual(key, PlanCacheKey.Compute(renamed, input.Costs, input.Cluster, input.Options));
        var pinned = input.Graph with { Values = input.Graph.Values.Select(v => v.Id == 2 ? v with { CanCrossStage = false } : v).ToList() };
        Assert.NotEqual(key, PlanCacheKey.Compute(pinned, input.Costs, input.Cluster, input.Options));
        var floored = input.Graph with { Nodes = input.Graph.Nodes.Select(n => n.Id == 2 ? n with { MinSamplesPerSlice = 2 } : n).ToList() };
        Assert.NotEqual(key, PlanCacheKey.Compute(floored, input.Costs, input.Cluster, input.Options));
        Assert.NotEqual(key, PlanCacheKey.Compute(input.Graph, input.Costs, input.Cluster, input.Options with { MinSamplesPerSlice = 2 }));
    }

    [Fact]
    public void SaveThenLoad_ReturnsTheSamePlan()
    {
        PlanningCase input = TestInputs.SmallBert();
        PartitionPlan plan = input.Plan();

        Store().Save(plan);
        PlanCacheLookup lookup = Store().TryLoad(input.Graph, input.Costs, input.Cluster, input.Options);

        Assert.Equal(PlanCacheStatus.Hit, lookup.Status);
        Assert.Equal(PlanJson.Serialize(plan), PlanJson.Serialize(lookup.Plan!));
        Assert.Equal([Path.GetFileName(Store().PathFor(plan.Fingerprint))], Directory.GetFiles(_directory).Select(Path.GetFileName));
        Assert.Empty(_warnings);
    }

    [Fact]
    public void Load_NoFile_IsAMiss()
    {
        PlanningCase input = TestInputs.SmallBert();

        PlanCacheLookup lookup = Store().TryLoad(input.Graph, input.Costs, input.Cluster, input.Options);

        Assert.Equal(PlanCacheStatus.Miss, lookup.Status);
        Assert.Null(lookup.Plan);
    }

    [Fact]
    public void Load_CorruptFile_IsAMissWithWarning_AndGetOrPlanReplaces()
    {
        PlanningCase input = TestInputs.SmallBert();
        string key = PlanCacheKey.Compute(input.Graph, input.Costs, input.Cluster, input.Options);
        Directory.CreateDirectory(_directory);
        File.WriteAllText(Store().PathFor(key), "{\"fingerprint\": \"" + key + "\", \"stages\": [");

        PlanCacheLookup lookup = Store().TryLoad(input.Graph, input.Costs, input.Cluster, input.Options);

        Assert.Equal(PlanCacheStatus.Corrupt, lookup.Status);
        Assert.Null(lookup.Plan);
        Assert.Contains("cannot be read", Assert.Single(_warnings), StringComparison.Ordinal);

        PartitionPlan plan = Store().GetOrPlan(input.Graph, input.Costs, input.Cluster, input.Options);
        Assert.Equal(PlanCacheStatus.Hit, Store().TryLoad(input.Graph, input.Costs, input.Cluster, input.Options).Status);
        Assert.Equal(PlanJson.Serialize(plan), File.ReadAllText(Store().PathFor(key)));
    }

    [Fact]
    public void Load_PlanOfOtherInputs_IsStale()
    {
        PlanningCase input = TestInputs.SmallBert();
        PlanningCase other = input with { Options = input.Options with { GlobalBatchSize = 64 } };
        PartitionPlan otherPlan = other.Plan();
        string key = PlanCacheKey.Compute(input.Graph, input.Costs, input.Cluster, input.Options);
        Directory.CreateDirectory(_directory);
        File.WriteAllText(Store().PathFor(key), PlanJson.Serialize(otherPlan));

        PlanCacheLookup lookup = Store().TryLoad(input.Graph, input.Costs, input.Cluster, input.Options);

        Assert.Equal(PlanCacheStatus.Stale, lookup.Status);
        Assert.Contains($"made for inputs {otherPlan.Fingerprint}", Assert.Single(_warnings), StringComparison.Ordinal);
    }

    [Fact]
    public void Load_TamperedPlanWithTheRightKey_IsStale()
    {
        PlanningCase input = TestInputs.SmallBert();
        PartitionPlan plan = input.Plan();
        var tampered = plan with { Stages = [plan.Stages[0] with { NodeIds = plan.Stages[0].NodeIds.Skip(1).ToList() }, .. plan.Stages.Skip(1)] };
        Store().Save(tampered);

        PlanCacheLookup lookup = Store().TryLoad(input.Graph, input.Costs, input.Cluster, input.Options);

        Assert.Equal(PlanCacheStatus.Stale, lookup.Status);
        Assert.Contains("is in no stage", Assert.Single(_warnings), StringComparison.Ordinal);
    }

    [Fact]
    public void PathFor_RejectsNonKeys() =>
        Assert.Throws<ArgumentException>(() => Store().PathFor("../../etc/passwd"));
}
