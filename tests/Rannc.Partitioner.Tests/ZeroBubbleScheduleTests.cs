using Rannc.Partitioner;

namespace Rannc.Partitioner.Tests;

/// <summary>
/// The zero-bubble schedule (ZB-H1 style): every micro-batch runs F, then I (input gradient), then W (weight gradient)
/// exactly once on every rank of its stage; the schedule passes the checker (all transfers matched, no deadlock);
/// memory is 1F1B's; and on a bubble-bound pipeline it simulates faster than 1F1B on the same shape.
/// </summary>
public class ZeroBubbleScheduleTests
{
    private static PipelineTopology Topology(int[] replicas, int batch, int microBatches)
    {
        var stageRanks = new List<IReadOnlyList<int>>();
        int rank = 0;
        foreach (int r in replicas)
        {
            stageRanks.Add(Enumerable.Range(rank, r).ToList());
            rank += r;
        }

        return new PipelineTopology(stageRanks, new MicroBatchLayout(batch, microBatches), rank + 1); // one idle rank
    }

    [Theory]
    [MemberData(nameof(ScheduleTests.Shapes), MemberType = typeof(ScheduleTests))]
    public void Build_ZeroBubble_RunsEveryPassOnceInOrderAndPassesTheChecker(int[] replicas, int batch, int microBatches)
    {
        PipelineTopology topology = Topology(replicas, batch, microBatches);

        PipelineSchedule schedule = ScheduleBuilder.Build(PipelineScheduleKind.ZeroBubble, topology);

        Assert.Empty(ScheduleChecker.FindProblems(schedule, microBatches));
        Assert.Empty(schedule.Ranks[^1]);
        for (int s = 0; s < replicas.Length; s++)
        {
            foreach (int rank in topology.StageRanks[s])
            {
                IReadOnlyList<PipelineAction> actions = schedule.Ranks[rank];
                Assert.DoesNotContain(actions, a => a.Kind == ActionKind.Backward);
                for (int m = 0; m < microBatches; m++)
                {
                    int f = Single(actions, ActionKind.Forward, m), i = Single(actions, ActionKind.BackwardInput, m);
                    int w = Single(actions, ActionKind.BackwardWeight, m);
                    Assert.True(f < i && i < w, $"rank {rank} micro-batch {m}: F at {f}, I at {i}, W at {w}");
                }
            }
        }
    }

    [Theory]
    [MemberData(nameof(ScheduleTests.Shapes), MemberType = typeof(ScheduleTests))]
    public void Build_ZeroBubble_HoldsWhatTheMemoryModelCountsUntilTheWeightPass(int[] replicas, int batch, int microBatches)
    {
        PipelineTopology topology = Topology(replicas, batch, microBatches);
        PipelineSchedule schedule = ScheduleBuilder.ZeroBubble(topology);

        for (int s = 0; s < replicas.Length; s++)
        {
            int held = 0, peak = 0;
            foreach (PipelineAction a in schedule.Ranks[topology.StageRanks[s][0]])
            {
                held += a.Kind == ActionKind.Forward ? 1 : a.Kind == ActionKind.BackwardWeight ? -1 : 0;
                peak = Math.Max(peak, held);
            }

            int oneFOneB = CostModel.InFlightMicroBatches(PipelineScheduleKind.OneFOneB, microBatches, replicas.Length - s);
            Assert.Equal(oneFOneB, CostModel.InFlightMicroBatches(PipelineScheduleKind.ZeroBubble, microBatches, replicas.Length - s));
            Assert.Equal(oneFOneB, peak);
        }
    }

    [Theory]
    [InlineData(2, 4)]
    [InlineData(4, 4)]
    [InlineData(4, 8)]
    [InlineData(8, 8)]
    [InlineData(8, 32)]
    [InlineData(3, 1)]
    public void ZeroBubbleOrder_OnUnitTimes_IsNoSlowerThanOneFOneBAndFasterWhenThereIsABubble(int stages, int microBatches)
    {
        // Unit times (F = I = W = 1, a 1F1B backward = 2, free links), simulated by the engine the planner uses.
        PipelineTopology topology = Topology(Enumerable.Repeat(1, stages).ToArray(), microBatches, microBatches);
        double zeroBubble = ScheduleEngine.Run(ScheduleBuilder.ZeroBubble(topology), new UnitTimer()).FinishSeconds.Max();
        double oneFOneB = ScheduleEngine.Run(ScheduleBuilder.OneFOneB(topology), new UnitTimer()).FinishSeconds.Max();

        Assert.Equal(3.0 * (microBatches + stages - 1), oneFOneB); // 1F1B's textbook makespan
        Assert.True(zeroBubble >= 3.0 * microBatches + stages - 1, $"{zeroBubble}: below the zero-bubble bound"); // ZB-H1's ideal
        Assert.True(zeroBubble < oneFOneB, $"zero bubble {zeroBubble} vs 1F1B {oneFOneB}");
    }

    [Fact]
    public void ZeroBubble_FourStagesEightMicroBatches_FillsTheDrainWithWeightPasses()
    {
        PipelineSchedule schedule = ScheduleBuilder.ZeroBubble(Topology([1, 1, 1, 1], 8, 8));

        // The last stage runs F I W back to back; the first keeps 1F1B's warm-up and in-flight count.
        Assert.Equal("3F0 3I0 3W0 3F1 3I1 3W1 3F2 3I2 3W2 3F3 3I3 3W3 3F4 3I4 3W4 3F5 3I5 3W5 3F6 3I6 3W6 3F7 3I7 3W7",
            ComputeOrder(schedule.Ranks[3]));
        Assert.StartsWith("0F0 0F1 0F2 0F3 0I0 0W0 0F4 0I1 0W1", ComputeOrder(schedule.Ranks[0]), StringComparison.Ordinal);
        Assert.Equal("1RG0<2 1I0 1SG0>0 1W0", string.Join(' ', schedule.Ranks[1].SkipWhile(a => a.Kind != ActionKind.RecvGradient).Take(4)));
    }

    [Fact]
    public void Parse_ZeroBubbleHalves_RoundTrip()
    {
        Assert.Equal(new PipelineAction(2, ActionKind.BackwardInput, 7), PipelineAction.Parse("2I7"));
        Assert.Equal(new PipelineAction(12, ActionKind.BackwardWeight, 0), PipelineAction.Parse("12W0"));
        Assert.Equal("3I4", new PipelineAction(3, ActionKind.BackwardInput, 4).ToString());
        PipelineSchedule schedule = ScheduleBuilder.ZeroBubble(Topology([1, 2], 8, 4));
        Assert.Equal(schedule.ToString(), PipelineSchedule.Parse(schedule.ToString()).ToString());
    }

    [Fact]
    public void Checker_WeightPassBeforeInputPass_IsReported()
    {
        var ranks = new List<IReadOnlyList<PipelineAction>> { new[] { "0F0", "0W0", "0I0" }.Select(PipelineAction.Parse).ToList() };

        Assert.Contains("Rank 0 does not run micro-batch 0 in the order forward, input gradient, weight gradient.",
            ScheduleChecker.FindProblems(new PipelineSchedule(ranks), 1));
    }

    [Fact]
    public void Checker_MissingWeightPass_IsReported()
    {
        var ranks = new List<IReadOnlyList<PipelineAction>> { new[] { "0F0", "0I0" }.Select(PipelineAction.Parse).ToList() };

        Assert.Contains(ScheduleChecker.FindProblems(new PipelineSchedule(ranks), 1),
            p => p.Contains("input-gradient 1 and weight-gradient 0 times", StringComparison.Ordinal));
    }

    /// <summary>A compute-bound chain of 4 stages and 4 micro-batches: 1F1B idles for 3 of its 7 cycles per stage.</summary>
    private static (SyntheticModel Model, Cluster Cluster, PlanningOptions Options) BubbleBoundCase(params PipelineScheduleKind[] schedules)
    {
        SyntheticModel model = SyntheticModels.UniformChain(8, 1e-3, TestInputs.Mib, 1024);
        var cluster = new Cluster(1, 4, 64 * TestInputs.Gib, 1e10, 1e-6, 1e10, 1e-6);
        var options = new PlanningOptions(16)
        {
            Schedules = schedules,
            ForcedReplicasPerStage = [1, 1, 1, 1],
            MinMicroBatches = 4,
            MaxMicroBatches = 4,
            AllowRecompute = false,
        };
        return (model, cluster, options);
    }

    [Fact]
    public void Simulate_BubbleBoundPipeline_ZeroBubbleStepIsShorterThanOneFOneB()
    {
        (SyntheticModel model, Cluster cluster, PlanningOptions options) = BubbleBoundCase(PipelineScheduleKind.OneFOneB);
        PartitionPlan oneFOneB = Planner.Plan(model.Graph, model.Costs, cluster, options);
        PartitionPlan zeroBubble = oneFOneB with { Schedule = PipelineScheduleKind.ZeroBubble };

        SimulationResult a = PipelineSimulator.Simulate(oneFOneB, model.Graph, model.Costs, cluster, options);
        SimulationResult z = PipelineSimulator.Simulate(zeroBubble, model.Graph, model.Costs, cluster, options);

        Assert.True(z.StepSeconds < a.StepSeconds * 0.9, $"zero bubble {z.StepSeconds} vs 1F1B {a.StepSeconds}");
        // The same compute, only less idle time; and no rank holds more than under 1F1B.
        Assert.Equal(a.ComputeSecondsPerRank.Sum(), z.ComputeSecondsPerRank.Sum(), 1e-12);
        Assert.All(Enumerable.Range(0, 4), r => Assert.True(z.PeakMemoryBytesPerRank[r] <= a.PeakMemoryBytesPerRank[r]));
    }

    [Fact]
    public void Plan_ZeroBubbleAllowed_ChoosesItOnABubbleBoundPipeline()
    {
        (SyntheticModel model, Cluster cluster, PlanningOptions oneFOneBOnly) = BubbleBoundCase(PipelineScheduleKind.OneFOneB);
        PlanningOptions options = oneFOneBOnly with
        {
            Schedules = [PipelineScheduleKind.GPipe, PipelineScheduleKind.OneFOneB, PipelineScheduleKind.ZeroBubble],
        };

        PartitionPlan plan = Planner.Plan(model.Graph, model.Costs, cluster, options);
        PartitionPlan withoutZeroBubble = Planner.Plan(model.Graph, model.Costs, cluster, oneFOneBOnly);

        Assert.Equal(PipelineScheduleKind.ZeroBubble, plan.Schedule);
        Assert.True(plan.PredictedStepSeconds < withoutZeroBubble.PredictedStepSeconds);
        Assert.Empty(plan.FindViolations(model.Graph, model.Costs, cluster, options));
    }

    [Fact]
    public void Plan_OnlyZeroBubbleAllowed_SearchesWithItAndNeverRecomputes()
    {
        SyntheticModel model = SyntheticModels.UniformChain(8, 1e-3, TestInputs.Mib, 1024);
        var cluster = new Cluster(1, 4, 64 * TestInputs.Gib, 1e10, 1e-6, 1e10, 1e-6);
        var options = new PlanningOptions(16) { Schedules = [PipelineScheduleKind.ZeroBubble] };

        PartitionPlan plan = Planner.Plan(model.Graph, model.Costs, cluster, options);

        Assert.Equal(PipelineScheduleKind.ZeroBubble, plan.Schedule);
        Assert.DoesNotContain(plan.Stages, s => s.Recompute);
        Assert.Empty(plan.FindViolations(model.Graph, model.Costs, cluster, options));
    }

    [Fact]
    public void FindViolations_ZeroBubbleWithRecomputation_IsReported()
    {
        (SyntheticModel model, Cluster cluster, PlanningOptions options) = BubbleBoundCase(PipelineScheduleKind.ZeroBubble);
        PartitionPlan plan = Planner.Plan(model.Graph, model.Costs, cluster, options);
        PartitionPlan recomputing = plan with { Stages = plan.Stages.Select(s => s with { Recompute = true }).ToList() };

        Assert.Contains(recomputing.FindViolations(model.Graph, model.Costs, cluster, options with { AllowRecompute = true }),
            p => p.Contains("zero-bubble schedule, which does not support recomputation", StringComparison.Ordinal));
    }

    private sealed class UnitTimer : IActionTimer
    {
        public double ComputeSeconds(int rank, PipelineAction action) => action.Kind == ActionKind.Backward ? 2 : 1;

        public double TransferSeconds(int fromRank, PipelineAction send) => 0;

        public double AllReduceSeconds(int stage, IReadOnlyList<int> ranks) => 0;
    }

    private static int Single(IReadOnlyList<PipelineAction> actions, ActionKind kind, int microBatch)
    {
        var indices = Enumerable.Range(0, actions.Count).Where(i => actions[i].Kind == kind && actions[i].MicroBatch == microBatch).ToList();
        return Assert.Single(indices);
    }

    private static string ComputeOrder(IReadOnlyList<PipelineAction> actions) =>
        string.Join(' ', actions.Where(a => a.Kind.IsCompute()));
}
