using Rannc.Partitioner;

namespace Rannc.Partitioner.Tests;

/// <summary>
/// The relation between the search objective J and the simulator: the plan's predicted step time is the
/// simulator's, exactly; J equals the simulation for balanced pipelines (for 1F1B only when links are free: there
/// each steady-state step also waits for a transfer, which J does not count); for GPipe with one replica per stage
/// and equal micro-batches the simulation equals the flow-shop closed form
/// <c>Σ(f+a) + (M−1)·max(f, a) + Σ(b+g) + (M−1)·max(b, g)</c>.
/// </summary>
public class SimulatorTests
{
    [Theory]
    [InlineData(1)]
    [InlineData(4)]
    [InlineData(9)]
    [InlineData(13)]
    [InlineData(29)]
    public void Plan_PredictedStepTime_IsTheSimulatedStepTime(int seed)
    {
        PlanningCase input = TestInputs.RandomCase(seed, 6, 4 + seed % 3);
        input = input.WithMemory(input.Cluster.MemoryBytesPerDevice * 3);

        PartitionPlan plan = input.Plan();
        SimulationResult simulated = PipelineSimulator.Simulate(plan, input.Graph, input.Costs, input.Cluster, input.Options);

        Assert.Equal(simulated.StepSeconds, plan.PredictedStepSeconds);
        Assert.All(simulated.IdleFractionPerStage, f => Assert.InRange(f, 0, 1));
        foreach (StagePlan stage in plan.Stages)
        {
            foreach (int rank in stage.ReplicaRanks)
            {
                Assert.InRange(simulated.PeakMemoryBytesPerRank[rank], 1, stage.PeakMemoryBytes);
            }
        }
    }

    [Theory]
    [InlineData(PipelineScheduleKind.GPipe, 1)]
    [InlineData(PipelineScheduleKind.GPipe, 2)]
    [InlineData(PipelineScheduleKind.OneFOneB, 1)]
    [InlineData(PipelineScheduleKind.OneFOneB, 2)]
    public void Simulate_BalancedChain_EqualsTheObjective(PipelineScheduleKind schedule, int replicas)
    {
        SyntheticModel model = SyntheticModels.UniformChain(8, 1e-3, TestInputs.Mib, 1024);
        bool freeLinks = schedule == PipelineScheduleKind.OneFOneB;
        var cluster = freeLinks
            ? new Cluster(1, 8, 64 * TestInputs.Gib, 1e30, 0, 1e30, 0)
            : new Cluster(1, 8, 64 * TestInputs.Gib, 1e9, 1e-6, 1e9, 1e-6);
        var options = new PlanningOptions(32)
        {
            Schedules = [schedule],
            ForcedReplicasPerStage = Enumerable.Repeat(replicas, 4).ToArray(),
            MinMicroBatches = 8,
            MaxMicroBatches = 8,
        };

        PartitionPlan plan = Planner.Plan(model.Graph, model.Costs, cluster, options);

        Assert.Equal([2, 2, 2, 2], plan.Stages.Select(s => s.NodeIds.Count));
        Assert.Equal(plan.ObjectiveSeconds, plan.PredictedStepSeconds, 1e-12);
    }

    [Fact]
    public void Simulate_BalancedOneFOneBWithLinks_IsNeverFasterThanTheObjective()
    {
        SyntheticModel model = SyntheticModels.UniformChain(8, 1e-3, TestInputs.Mib, 64 * 1024);
        var cluster = new Cluster(1, 8, 64 * TestInputs.Gib, 1e9, 1e-5, 1e9, 1e-5);
        var options = new PlanningOptions(32) { Schedules = [PipelineScheduleKind.OneFOneB], ForcedReplicasPerStage = [1, 1, 1, 1] };

        PartitionPlan plan = Planner.Plan(model.Graph, model.Costs, cluster, options);

        Assert.True(plan.PredictedStepSeconds > plan.ObjectiveSeconds);
        Assert.True(plan.PredictedStepSeconds < plan.ObjectiveSeconds * 1.05, $"{plan.PredictedStepSeconds} vs {plan.ObjectiveSeconds}");
    }

    [Fact]
    public void Simulate_GPipeOneReplicaPerStage_EqualsFlowShopClosedForm()
    {
        PlanningCase input = TestInputs.RandomCase(17, 7, 4);
        Cluster cluster = input.Cluster with { Nodes = 1, DevicesPerNode = 4, MemoryBytesPerDevice = 1L << 50 };
        var options = input.Options with
        {
            GlobalBatchSize = 12,
            Schedules = [PipelineScheduleKind.GPipe],
            ForcedReplicasPerStage = [1, 1, 1, 1],
            MinMicroBatches = 4,
            MaxMicroBatches = 4,
        };

        PartitionPlan plan = Planner.Plan(input.Graph, input.Costs, cluster, options);
        SimulationResult simulated = PipelineSimulator.Simulate(plan, input.Graph, input.Costs, cluster, options);

        int samples = 3, m = 4;
        var f = new List<double>();
        var b = new List<double>();
        var a = new List<double>();
        var g = new List<double>();
        for (int s = 0; s < plan.Stages.Count; s++)
        {
            IReadOnlyList<int> nodes = plan.Stages[s].NodeIds;
            f.Add(nodes.Sum(n => input.Costs.Nodes[n].ForwardSeconds(samples)));
            b.Add(nodes.Sum(n => input.Costs.Nodes[n].BackwardSeconds(samples)) + (plan.Stages[s].Recompute ? f[s] : 0));
            if (s + 1 < plan.Stages.Count)
            {
                (long activations, long gradients) = CutBytes(input.Graph, plan, s, samples);
                a.Add(cluster.TransferSeconds(s, s + 1, activations));
                g.Add(cluster.TransferSeconds(s + 1, s, gradients));
            }
        }

        double expected = f.Sum() + a.Sum() + (m - 1) * f.Concat(a).Max() + b.Sum() + g.Sum() + (m - 1) * b.Concat(g).Max();
        Assert.Equal(expected, simulated.StepSeconds, 1e-12);
        Assert.True(simulated.StepSeconds >= plan.ObjectiveSeconds - 1e-12, "GPipe's two maxima are at least the objective's one.");
    }

    /// <summary>Bytes crossing the boundary after stage <paramref name="stage"/>: values produced at or before it and read after it.</summary>
    private static (long Activations, long Gradients) CutBytes(Graph graph, PartitionPlan plan, int stage, int samples)
    {
        var before = plan.Stages.Take(stage + 1).SelectMany(s => s.NodeIds).ToHashSet();
        var after = plan.Stages.Skip(stage + 1).SelectMany(s => s.NodeIds).ToHashSet();
        var crossing = graph.Nodes.Where(n => before.Contains(n.Id)).SelectMany(n => n.Outputs)
            .Where(v => graph.Nodes.Any(n => after.Contains(n.Id) && n.Inputs.Contains(v))).Distinct().Select(v => graph.Values[v]).ToList();
        return (crossing.Sum(v => v.BytesAt(samples)), crossing.Where(v => v.RequiresGrad).Sum(v => v.BytesAt(samples)));
    }

    [Fact]
    public void Simulate_AllReduceLongerThanLastBackward_ShowsAsTail()
    {
        // One stage, two replicas, 1 GiB of parameters over a slow link: the all-reduce dominates the step.
        SyntheticModel model = SyntheticModels.UniformChain(1, 1e-3, TestInputs.Gib, 1024);
        var cluster = new Cluster(1, 2, 64 * TestInputs.Gib, 1e9, 0, 1e9, 0);
        var options = new PlanningOptions(2) { ForcedReplicasPerStage = [2] };

        PartitionPlan plan = Planner.Plan(model.Graph, model.Costs, cluster, options);

        double allReduce = CostModel.RingAllReduceSeconds(TestInputs.Gib, 2, 1e9, 0);
        double computeOneSample = 3e-3;
        Assert.Equal(computeOneSample + allReduce - 2e-3, plan.PredictedStepSeconds, 1e-12);
        Assert.Equal(plan.ObjectiveSeconds, plan.PredictedStepSeconds, 1e-12);
    }
}
