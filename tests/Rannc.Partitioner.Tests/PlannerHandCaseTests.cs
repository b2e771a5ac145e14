using Rannc.Partitioner;

namespace Rannc.Partitioner.Tests;

/// <summary>Cases small enough to compute the answer by hand. Chains: forward 1 ms and backward 2 ms per sample
/// per node, 1 KiB activations, 1 GB/s links without latency, SGD (no optimizer state), no margin.</summary>
public class PlannerHandCaseTests
{
    private const double Ms = 1e-3;
    private const double TransferPerSample = 1024 / 1e9; // 1 KiB over 1 GB/s

    private static PlanningCase Chain(int nodes, long parameterBytes, int devices, long memory, int batch = 8)
    {
        SyntheticModel model = SyntheticModels.UniformChain(nodes, forwardSecondsPerSample: 1 * Ms, parameterBytes, activationBytesPerSample: 1024);
        var cluster = new Cluster(1, devices, memory, 1e9, 0, 1e9, 0);
        var options = new PlanningOptions(batch) { OptimizerStateFactor = 0, MemoryMargin = 0 };
        return new PlanningCase(model.Graph, model.Costs, cluster, options);
    }

    [Fact]
    public void Plan_UniformChainOnTwoDevicesThatHoldHalfEach_SplitsInHalfWithOneSampleMicroBatches()
    {
        // Each node holds 1 GiB of parameters + 1 GiB of gradients: two nodes fit a 5 GiB device, four do not.
        PlanningCase input = Chain(4, TestInputs.Gib, devices: 2, memory: 5 * TestInputs.Gib);

        PartitionPlan plan = input.Plan();

        Assert.Equal([[0, 1], [2, 3]], plan.Stages.Select(s => s.NodeIds.ToArray()));
        Assert.Equal([1, 1], plan.Stages.Select(s => s.ReplicaRanks.Count));
        Assert.Equal(8, plan.MicroBatchCount);
        // Σ(f+b) = 2 stages × 6 ms, plus one activation and one gradient transfer; bottleneck 6 ms × (M − 1).
        double expected = 2 * 6 * Ms + 2 * TransferPerSample + 7 * 6 * Ms;
        Assert.Equal(expected, plan.ObjectiveSeconds, 1e-12);
    }

    [Fact]
    public void Plan_UniformChainOnFourDevicesThatHoldOneEach_UsesFourStages()
    {
        PlanningCase input = Chain(4, TestInputs.Gib, devices: 4, memory: 3 * TestInputs.Gib);

        PartitionPlan plan = input.Plan();

        Assert.Equal([[0], [1], [2], [3]], plan.Stages.Select(s => s.NodeIds.ToArray()));
        Assert.Equal(8, plan.MicroBatchCount);
        double expected = 4 * 3 * Ms + 3 * 2 * TransferPerSample + 7 * 3 * Ms;
        Assert.Equal(expected, plan.ObjectiveSeconds, 1e-12);
    }

    [Fact]
    public void Plan_OneHugeLayer_GetsAStageOfItsOwn()
    {
        // Node 2 needs 6.8 GiB (parameters + gradients); with any neighbour it exceeds the 7 GiB device.
        SyntheticModel model = SyntheticModels.UniformChain(5, 1 * Ms, TestInputs.Gib / 4, 1024);
        var parameters = model.Graph.Parameters.ToList();
        parameters[2] = parameters[2] with { Bytes = (long)(3.4 * TestInputs.Gib) };
        var input = new PlanningCase(
            model.Graph with { Parameters = parameters }, model.Costs,
            new Cluster(1, 3, 7 * TestInputs.Gib, 1e9, 0, 1e9, 0),
            new PlanningOptions(8) { OptimizerStateFactor = 0, MemoryMargin = 0 });

        PartitionPlan plan = input.Plan();

        Assert.Contains(plan.Stages, s => s.NodeIds.SequenceEqual([2]));
        Assert.Empty(plan.FindViolations(input.Graph, input.Costs, input.Cluster, input.Options));
    }

    [Fact]
    public void Plan_ModelFitsOneDeviceOnFastNetwork_PureDataParallelismWins()
    {
        PlanningCase input = Chain(4, 100 * TestInputs.Mib, devices: 4, memory: 16 * TestInputs.Gib);
        input = input with { Cluster = input.Cluster with { IntraNodeBandwidth = 1e12 } };

        PartitionPlan plan = input.Plan();

        Assert.Single(plan.Stages);
        Assert.Equal(4, plan.Stages[0].ReplicaRanks.Count);
        Assert.Equal(1, plan.MicroBatchCount);
        // Two samples per replica: 4 nodes × 3 ms × 2; the all-reduce hides behind the backward.
        Assert.Equal(24 * Ms, plan.ObjectiveSeconds, 1e-12);
    }

    [Fact]
    public void Plan_TooLittleMemory_ErrorStatesTheMemoryTheBestPlanNeeds()
    {
        PlanningCase input = TestInputs.SmallBert().WithMemory(8 * TestInputs.Mib);

        NoFeasiblePlanException error = Assert.Throws<NoFeasiblePlanException>(input.Plan);

        Assert.Contains("No plan fits in device memory: the best plan needs", error.Message, StringComparison.Ordinal);
        Assert.Contains("but each device has 8 MiB", error.Message, StringComparison.Ordinal);
        Assert.True(error.RequiredPeakBytes > CostModel.UsableBytes(input.Cluster, input.Options));

        // The stated need is exact: with that much memory a plan exists, with one byte less of usable memory none does.
        double keep = 1 - input.Options.MemoryMargin;
        long enough = (long)Math.Ceiling(error.RequiredPeakBytes / keep) + 1;
        PartitionPlan plan = input.WithMemory(enough).Plan();
        Assert.Equal(error.RequiredPeakBytes, plan.Stages.Max(s => s.PeakMemoryBytes));
        Assert.Throws<NoFeasiblePlanException>(input.WithMemory((long)Math.Floor((error.RequiredPeakBytes - 1) / keep)).Plan);
    }

    [Fact]
    public void Plan_ImpossibleForcedShape_ErrorSaysNoShapeSatisfiesTheOptions()
    {
        PlanningCase input = Chain(4, TestInputs.Mib, devices: 2, memory: TestInputs.Gib);
        input = input with { Options = input.Options with { ForcedReplicasPerStage = [2, 2] } };

        NoFeasiblePlanException error = Assert.Throws<NoFeasiblePlanException>(input.Plan);

        Assert.StartsWith("No plan shape satisfies the options on 2 devices", error.Message, StringComparison.Ordinal);
        Assert.Equal(-1, error.RequiredPeakBytes);
    }

    [Fact]
    public void Plan_FewerUsefulReplicasThanDevices_LeavesTheLowestRanksIdle()
    {
        // A batch of 2 gives at most 2 useful replicas per stage; pure data parallelism on 2 of the 4 devices wins.
        PlanningCase input = Chain(4, TestInputs.Mib, devices: 4, memory: 16 * TestInputs.Gib, batch: 2);

        PartitionPlan plan = input.Plan();

        StagePlan stage = Assert.Single(plan.Stages);
        Assert.Equal([2, 3], stage.ReplicaRanks);
        Assert.Null(plan.RoleOf(0));
        Assert.Equal((0, 1), plan.RoleOf(3));
        PipelineSchedule schedule = ScheduleBuilder.Build(plan.Schedule, PipelineTopology.FromPlan(plan));
        Assert.Empty(schedule.Ranks[0]);
        Assert.Equal("0F0 0B0 0AR", string.Join(' ', schedule.Ranks[2]));
        Assert.Equal(12 * Ms, plan.PredictedStepSeconds, 1e-12);
    }

    [Fact]
    public void Plan_InfeasibleCoarsenedGraph_SaysTheStagesWereCoarsened()
    {
        PlanningCase input = Chain(200, TestInputs.Gib, devices: 2, memory: TestInputs.Gib);

        NoFeasiblePlanException error = Assert.Throws<NoFeasiblePlanException>(input.Plan);

        Assert.Contains("Stages were made of 96 blocks coarsened from 200 atomic units", error.Message, StringComparison.Ordinal);
    }
}

