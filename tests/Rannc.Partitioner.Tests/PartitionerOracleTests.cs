using Rannc.Partitioner;

namespace Rannc.Partitioner.Tests;

/// <summary>The search against a brute-force oracle on small graphs. The beam is switched off (width 0): the beam is
/// a speed knob for large inputs, and these tests check the exact algorithm under it.</summary>
public class PartitionerOracleTests
{
    private static PlanningCase Exhaustive(PlanningCase input) =>
        input with { Options = input.Options with { SearchBeamWidth = 0 } };

    public static TheoryData<int, int, int> SmallCases()
    {
        var data = new TheoryData<int, int, int>();
        for (int seed = 0; seed < 36; seed++)
        {
            data.Add(seed, 2 + seed % 6, 1 + seed % 5);
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(SmallCases))]
    public void Plan_RandomSmallGraph_MatchesBruteForceOptimum(int seed, int nodes, int devices)
    {
        PlanningCase input = Exhaustive(TestInputs.RandomCase(seed, nodes, devices));
        Assert.Equal(nodes, GraphBlocks.AtomicUnits(input.Graph).Count);
        BruteForceOracle.Result oracle = BruteForceOracle.Solve(input);

        if (oracle.BestShape is null)
        {
            NoFeasiblePlanException error = Assert.Throws<NoFeasiblePlanException>(input.Plan);
            Assert.Equal(oracle.SmallestPeak, error.RequiredPeakBytes);
            return;
        }

        PartitionPlan plan = input.Plan();
        Assert.True(plan.SearchWasExhaustive);
        Assert.Equal(oracle.BestObjective, plan.ObjectiveSeconds, 1e-9 * oracle.BestObjective);
        Assert.Empty(plan.FindViolations(input.Graph, input.Costs, input.Cluster, input.Options));
        long usable = CostModel.UsableBytes(input.Cluster, input.Options);
        Assert.All(plan.Stages, s => Assert.True(s.PeakMemoryBytes <= usable));
    }

    [Theory]
    [InlineData(100, 6, 4)]
    [InlineData(101, 7, 3)]
    [InlineData(102, 5, 5)]
    public void Plan_OnlyOneFOneBWithStageBounds_MatchesBruteForceOptimum(int seed, int nodes, int devices)
    {
        PlanningCase input = Exhaustive(TestInputs.RandomCase(seed, nodes, devices));
        input = input with
        {
            Options = input.Options with { Schedules = [PipelineScheduleKind.OneFOneB], MinStages = 2, MaxStages = 3 },
            Cluster = input.Cluster with { MemoryBytesPerDevice = input.Cluster.MemoryBytesPerDevice * 4 },
        };
        BruteForceOracle.Result oracle = BruteForceOracle.Solve(input);
        Assert.NotNull(oracle.BestShape);

        PartitionPlan plan = input.Plan();

        Assert.Equal(oracle.BestObjective, plan.ObjectiveSeconds, 1e-9 * oracle.BestObjective);
        Assert.InRange(plan.Stages.Count, 2, 3);
    }

    [Fact]
    public void Plan_ForcedShape_UsesExactlyThatShapeAndItsBestCuts()
    {
        PlanningCase input = Exhaustive(TestInputs.RandomCase(7, 6, 4));
        input = input with
        {
            Options = input.Options with { ForcedReplicasPerStage = [1, 2, 1] },
            Cluster = input.Cluster with { MemoryBytesPerDevice = 64 * TestInputs.Gib },
        };
        BruteForceOracle.Result oracle = BruteForceOracle.Solve(input);

        PartitionPlan plan = input.Plan();

        Assert.Equal([1, 2, 1], plan.Stages.Select(s => s.ReplicaRanks.Count));
        Assert.Equal(oracle.BestObjective, plan.ObjectiveSeconds, 1e-9 * oracle.BestObjective);
    }

    [Theory]
    [InlineData(3)]
    [InlineData(11)]
    [InlineData(23)]
    public void Plan_MoreMemory_NeverSlower(int seed)
    {
        PlanningCase input = Exhaustive(TestInputs.RandomCase(seed, 6, 4));
        double previous = double.PositiveInfinity;
        foreach (double factor in new[] { 0.5, 0.75, 1, 1.5, 2, 4, 16 })
        {
            PlanningCase scaled = input.WithMemory((long)(input.Cluster.MemoryBytesPerDevice * factor));
            double objective;
            try
            {
                objective = scaled.Plan().ObjectiveSeconds;
            }
            catch (NoFeasiblePlanException)
            {
                Assert.True(double.IsPositiveInfinity(previous), "A plan that fitted stopped fitting with more memory.");
                continue;
            }

            Assert.True(objective <= previous * (1 + 1e-12), $"With {factor}× memory the objective rose from {previous} to {objective}.");
            previous = objective;
        }

        Assert.False(double.IsPositiveInfinity(previous), "No memory size gave a plan.");
    }
}
