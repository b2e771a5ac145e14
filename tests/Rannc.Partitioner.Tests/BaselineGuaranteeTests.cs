using Rannc.Partitioner;

namespace Rannc.Partitioner.Tests;

/// <summary>The planner's plan never simulates slower than the uniform, parameter-balanced and data-parallel baselines,
/// and nothing a baseline can fit is reported infeasible.</summary>
public class BaselineGuaranteeTests
{
    private static void AssertNoWorseThanBaselines(Graph graph, CostTable costs, Cluster cluster, PlanningOptions options)
    {
        var baselines = Enum.GetValues<BaselineSplit>()
            .Select(split => (split, shape: Baselines.BestShape(graph, costs, cluster, options, split)))
            .Where(b => b.shape is not null)
            .Select(b => (b.split, plan: Planner.PlanFromShape(graph, costs, cluster, options, b.shape!)))
            .ToList();
        PartitionPlan plan;
        try
        {
            plan = Planner.Plan(graph, costs, cluster, options);
        }
        catch (NoFeasiblePlanException e)
        {
            Assert.True(baselines.Count == 0, $"Infeasible, but the {baselines.FirstOrDefault().split} baseline fits: {e.Message}");
            return;
        }

        Assert.Empty(plan.FindViolations(graph, costs, cluster, options));
        foreach ((BaselineSplit split, PartitionPlan baseline) in baselines)
        {
            Assert.Empty(baseline.FindViolations(graph, costs, cluster, options));
            Assert.True(
                plan.PredictedStepSeconds <= baseline.PredictedStepSeconds,
                $"{split}: planner {plan.PredictedStepSeconds * 1e3:0.###} ms > baseline {baseline.PredictedStepSeconds * 1e3:0.###} ms");
        }
    }

    /// <summary>The RaNNC paper's 18 enlarged BERT configurations (hidden × layers, sequence 512; 4 × 8 devices of 32 GiB, batch 256).</summary>
    public static TheoryData<int, int> PaperConfigs()
    {
        var data = new TheoryData<int, int>();
        foreach (int hidden in new[] { 1024, 1536, 2048 })
        {
            foreach (int layers in new[] { 24, 48, 96, 144, 192, 256 }) data.Add(hidden, layers);
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(PaperConfigs))]
    public void Plan_PaperConfiguration_NoSlowerThanAnyBaseline(int hidden, int layers)
    {
        SyntheticModel model = SyntheticModels.BertLike(layers, hidden, deviceFlopsPerSecond: 30e12);
        AssertNoWorseThanBaselines(model.Graph, model.Costs, Cluster.Typical(4, 8, 32 * TestInputs.Gib), new PlanningOptions(256));
    }

    /// <summary>The seed's scale: 100B (h 8192 × 128 layers) and 206B (× 256), batch 8192, nodes of 8 devices.</summary>
    [Theory]
    [InlineData(128, 1024, 80)]
    [InlineData(128, 1024, 32)]
    [InlineData(256, 1024, 80)]
    [InlineData(128, 4096, 80)]
    public void Plan_SeedScale_NoSlowerThanAnyBaseline(int layers, int devices, int memoryGib)
    {
        SyntheticModel model = SyntheticModels.BertLike(layers, 8192);
        AssertNoWorseThanBaselines(model.Graph, model.Costs, Cluster.Typical(devices / 8, 8, memoryGib * TestInputs.Gib), new PlanningOptions(8192));
    }

    [Theory]
    [InlineData(80)]
    [InlineData(32)]
    public void Plan_WideModelOnManyDevices_NoSlowerThanAnyBaseline(int memoryGib)
    {
        // A scaled-down stand-in for 100B on 1024 devices (h 8192 × 128, batch 8192; in the bench): h 2048 × 32 layers on
        // 128 devices, batch 1024, memory scaled by 1/16 with the parameters, so memory forces a pipeline as it does there.
        SyntheticModel model = SyntheticModels.BertLike(32, 2048, sequence: 512);
        AssertNoWorseThanBaselines(model.Graph, model.Costs, Cluster.Typical(16, 8, memoryGib * TestInputs.Gib / 16), new PlanningOptions(1024));
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    [InlineData(5)]
    [InlineData(6)]
    [InlineData(7)]
    [InlineData(8)]
    public void Plan_RandomDag_NoSlowerThanAnyBaseline(int seed)
    {
        PlanningCase input = TestInputs.RandomCase(seed, 12, 4 << (seed % 3));
        AssertNoWorseThanBaselines(input.Graph, input.Costs, input.Cluster, input.Options with { MaxMicroBatches = 16 });
    }

    [Fact]
    public void Grids_AlwaysHoldDivisorsOfTheBatchAndPowersOfTwo()
    {
        // Batch 256: 32 micro-batches and 32 replicas (pure data parallelism over 32 devices) must be on the grids.
        Assert.True(StageSearch.IsEvenCount(32, 256));
        Assert.True(StageSearch.IsEvenCount(12, 36));
        Assert.False(StageSearch.IsEvenCount(29, 256));
        SyntheticModel model = SyntheticModels.UniformChain(4, 1e-3, TestInputs.Mib, 1024);
        var cluster = new Cluster(4, 8, 64 * TestInputs.Gib, 150e9, 5e-6, 25e9, 1e-5);
        PartitionPlan plan = Planner.Plan(model.Graph, model.Costs, cluster, new PlanningOptions(256) { MaxStages = 1, MaxMicroBatches = 1 });

        // Tiny parameters, so all-reducing is cheap: all 32 devices data-parallel is the best one-stage plan.
        Assert.Equal(32, Assert.Single(plan.Stages).ReplicaRanks.Count);
    }

    [Fact]
    public void Baselines_RespectSliceFloorsAndValuesThatCannotCross()
    {
        SyntheticModel model = SyntheticModels.UniformChain(6, 1e-3, TestInputs.Gib, 1024);
        var nodes = model.Graph.Nodes.Select(n => n.Id == 3 ? n with { MinSamplesPerSlice = 2 } : n).ToList();
        var values = model.Graph.Values.Select(v => v.Id == model.Graph.Nodes[2].Outputs[0] ? v with { CanCrossStage = false } : v).ToList();
        Graph graph = model.Graph with { Nodes = nodes, Values = values };
        var cluster = new Cluster(1, 4, 16 * TestInputs.Gib, 1e9, 0, 1e9, 0);
        var options = new PlanningOptions(8) { OptimizerStateFactor = 0, MemoryMargin = 0 };

        foreach (BaselineSplit split in Enum.GetValues<BaselineSplit>())
        {
            PlanShape? shape = Baselines.BestShape(graph, model.Costs, cluster, options, split);
            Assert.NotNull(shape);
            Assert.Empty(Planner.PlanFromShape(graph, model.Costs, cluster, options, shape!).FindViolations(graph, model.Costs, cluster, options));
        }
    }

    [Theory]
    [InlineData(128)]
    [InlineData(130)]
    public void Plan_ModelNeedingOneLayerPerStage_GetsAStagePerLayer(int devices)
    {
        // 128 layers of 1 GiB (+ 1 GiB gradient): two never fit a 3 GiB device, so only 128 stages fit, more than the
        // 96 refinement blocks; 130 devices: the stage count does not divide the device count.
        SyntheticModel model = SyntheticModels.UniformChain(128, 1e-3, TestInputs.Gib, 1024);
        var cluster = new Cluster(1, devices, 3 * TestInputs.Gib, 1e9, 0, 1e9, 0);
        var options = new PlanningOptions(8) { OptimizerStateFactor = 0, MemoryMargin = 0 };

        PartitionPlan plan = Planner.Plan(model.Graph, model.Costs, cluster, options);

        Assert.Equal(128, plan.Stages.Count);
        Assert.Empty(plan.FindViolations(model.Graph, model.Costs, cluster, options));
    }
}
