using Rannc.Partitioner;

namespace Rannc.Partitioner.Tests;

/// <summary>Constraints the runtime sets on the graph: values that cannot cross a stage boundary and nodes that
/// need a minimum number of samples per slice (batch normalisation).</summary>
public class PlanConstraintTests
{
    private const double Ms = 1e-3;

    private static PlanningCase Chain(int nodes, int devices, long memory, int batch)
    {
        SyntheticModel model = SyntheticModels.UniformChain(nodes, forwardSecondsPerSample: 1 * Ms, TestInputs.Gib, activationBytesPerSample: 1024);
        var cluster = new Cluster(1, devices, memory, 1e9, 0, 1e9, 0);
        var options = new PlanningOptions(batch) { OptimizerStateFactor = 0, MemoryMargin = 0 };
        return new PlanningCase(model.Graph, model.Costs, cluster, options);
    }

    private static Graph WithoutCrossing(Graph graph, IEnumerable<int> values)
    {
        var set = values.ToHashSet();
        return graph with { Values = graph.Values.Select(v => set.Contains(v.Id) ? v with { CanCrossStage = false } : v).ToList() };
    }

    /// <summary>Independent of Validate: every reader of a value that cannot cross sits in its producer's stage.</summary>
    private static void AssertNoForbiddenCrossing(Graph graph, PartitionPlan plan)
    {
        var stageOf = new Dictionary<int, int>();
        foreach (StagePlan stage in plan.Stages)
        {
            foreach (int n in stage.NodeIds)
            {
                stageOf[n] = stage.Index;
            }
        }

        foreach (GraphNode producer in graph.Nodes)
        {
            foreach (int v in producer.Outputs.Where(v => !graph.Values[v].CanCrossStage))
            {
                foreach (GraphNode reader in graph.Nodes.Where(n => n.Inputs.Contains(v)))
                {
                    Assert.Equal(stageOf[producer.Id], stageOf[reader.Id]);
                }
            }
        }
    }

    [Fact]
    public void Plan_ChainThatWouldSplitInHalf_KeepsAValueThatCannotCrossInOneStage()
    {
        // Four 1 GiB nodes, two devices holding two nodes each: unconstrained the cut is after node 1.
        PlanningCase input = Chain(4, devices: 2, memory: 5 * TestInputs.Gib, batch: 8);
        Assert.Equal([[0, 1], [2, 3]], input.Plan().Stages.Select(s => s.NodeIds.ToArray()));
        int between = input.Graph.Nodes[1].Outputs[0];
        PlanningCase constrained = input with { Graph = WithoutCrossing(input.Graph, [between]), Cluster = input.Cluster with { MemoryBytesPerDevice = 7 * TestInputs.Gib } };

        PartitionPlan plan = constrained.Plan();

        Assert.Empty(plan.FindViolations(constrained.Graph, constrained.Costs, constrained.Cluster, constrained.Options));
        AssertNoForbiddenCrossing(constrained.Graph, plan);
        Assert.Contains(plan.Stages, s => s.NodeIds.Contains(1) && s.NodeIds.Contains(2));
    }

    [Fact]
    public void AtomicUnits_ValueReadFarAhead_MergesEverythingBetween()
    {
        PlanningCase input = TestInputs.RandomCase(3, 12, 4);
        // Node 2's output, read by node 3 and, through a forced skip, by node 7.
        var nodes = input.Graph.Nodes.ToList();
        int value = nodes[2].Outputs[0];
        nodes[7] = nodes[7] with { Inputs = [.. nodes[7].Inputs, value] };
        Graph graph = WithoutCrossing(input.Graph with { Nodes = nodes }, [value]);

        IReadOnlyList<IReadOnlyList<int>> units = GraphBlocks.AtomicUnits(graph);

        Assert.Contains(units, u => new[] { 2, 3, 4, 5, 6, 7 }.All(u.Contains));
        Assert.Equal(Enumerable.Range(0, 12), units.SelectMany(u => u).Order());
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    [InlineData(5)]
    public void Plan_RandomDagsWithForcedCutsAndValuesThatCannotCross_NeverCutsThem(int seed)
    {
        PlanningCase input = TestInputs.RandomCase(seed, 10, 4);
        var random = new Random(seed);
        var forbidden = input.Graph.Nodes.Where(_ => random.NextDouble() < 0.3).Select(n => n.Outputs[0]).ToList();
        PlanningCase constrained = input with
        {
            Graph = WithoutCrossing(input.Graph, forbidden),
            Cluster = input.Cluster with { MemoryBytesPerDevice = input.Cluster.MemoryBytesPerDevice * 8 },
            Options = input.Options with { MinStages = 2, SearchBeamWidth = 0 },
        };
        if (GraphBlocks.AtomicUnits(constrained.Graph).Count < 2)
        {
            return; // everything merged into one unit: no two-stage plan exists, nothing to check
        }

        PartitionPlan plan = constrained.Plan();

        Assert.True(plan.Stages.Count >= 2);
        Assert.Empty(plan.FindViolations(constrained.Graph, constrained.Costs, constrained.Cluster, constrained.Options));
        AssertNoForbiddenCrossing(constrained.Graph, plan);
    }

    [Fact]
    public void Validate_BoundaryValueThatCannotCross_IsReported()
    {
        PlanningCase input = TestInputs.SmallBert();
        PartitionPlan plan = input.Plan();
        int lastOfFirst = plan.Stages[0].NodeIds[^1];
        int crossing = input.Graph.Nodes[lastOfFirst].Outputs.First(v => input.Graph.Nodes.Any(n => plan.Stages[1].NodeIds.Contains(n.Id) && n.Inputs.Contains(v)));
        Graph graph = WithoutCrossing(input.Graph, [crossing]);

        IReadOnlyList<string> problems = plan.FindViolations(graph, input.Costs, input.Cluster, input.Options);

        Assert.Contains(problems, p => p.StartsWith($"Value {crossing} ", StringComparison.Ordinal) && p.Contains("cannot cross a stage boundary", StringComparison.Ordinal));
    }

    private static Graph WithSliceFloor(Graph graph, int node, int floor)
    {
        var nodes = graph.Nodes.ToList();
        nodes[node] = nodes[node] with { MinSamplesPerSlice = floor };
        return graph with { Nodes = nodes };
    }

    [Fact]
    public void Plan_BatchOfFourWithBatchNorm_NeverGivesOneSampleSlices()
    {
        // Without the floor, four one-sample micro-batches keep four stages busy.
        PlanningCase input = Chain(4, devices: 4, memory: 3 * TestInputs.Gib, batch: 4);
        PartitionPlan free = input.Plan();
        Assert.Equal(4, free.MicroBatchCount);
        PlanningCase bn = input with { Graph = WithSliceFloor(input.Graph, 2, 2) };

        PartitionPlan plan = bn.Plan();

        Assert.Empty(plan.FindViolations(bn.Graph, bn.Costs, bn.Cluster, bn.Options));
        StagePlan holder = plan.Stages.Single(s => s.NodeIds.Contains(2));
        Assert.True(plan.Layout.SmallestMicroBatch / holder.ReplicaRanks.Count >= 2);
        Assert.True(plan.MicroBatchCount <= 2);
    }

    [Fact]
    public void Plan_OptionRaisesTheFloorForEveryNode()
    {
        PlanningCase input = Chain(4, devices: 4, memory: 3 * TestInputs.Gib, batch: 12);
        PlanningCase floored = input with { Options = input.Options with { MinSamplesPerSlice = 3 } };

        PartitionPlan plan = floored.Plan();

        Assert.Empty(plan.FindViolations(floored.Graph, floored.Costs, floored.Cluster, floored.Options));
        Assert.All(plan.Stages, s => Assert.True(plan.Layout.SmallestMicroBatch / s.ReplicaRanks.Count >= 3));
        Assert.True(plan.MicroBatchCount <= 4);
    }

    [Fact]
    public void Validate_OneSampleSliceOfBatchNormStage_IsReported()
    {
        PlanningCase input = Chain(4, devices: 4, memory: 3 * TestInputs.Gib, batch: 4);
        PartitionPlan plan = input.Plan();
        Assert.Equal(4, plan.MicroBatchCount);
        Graph graph = WithSliceFloor(input.Graph, 2, 2);

        IReadOnlyList<string> problems = plan.FindViolations(graph, input.Costs, input.Cluster, input.Options);

        Assert.Contains(problems, p => p.Contains("node 2 ", StringComparison.Ordinal) && p.Contains("needs at least 2 per slice", StringComparison.Ordinal));
    }

    [Fact]
    public void Plan_SliceFloorAboveTheBatch_IsRefused()
    {
        PlanningCase input = Chain(2, devices: 1, memory: 100 * TestInputs.Gib, batch: 1);
        PlanningCase bn = input with { Graph = WithSliceFloor(input.Graph, 0, 2) };

        Assert.Throws<NoFeasiblePlanException>(() => bn.Plan());
    }
}
