using Rannc.Partitioner;

namespace Rannc.Partitioner.Tests;

/// <summary><see cref="PipelineSimulator.Timeline"/>: every action of the schedule once, in order, on a consistent clock.</summary>
public class SimulatedTimelineTests
{
    [Theory]
    [InlineData(PipelineScheduleKind.GPipe, new[] { 1, 1, 1, 1 })]
    [InlineData(PipelineScheduleKind.OneFOneB, new[] { 2, 2 })]
    [InlineData(PipelineScheduleKind.OneFOneB, new[] { 1, 3 })]
    public void Timeline_HasEveryActionInScheduleOrder_AndEndsAtTheSimulatedStep(PipelineScheduleKind kind, int[] replicas)
    {
        SyntheticModel model = SyntheticModels.UniformChain(8, 1e-3, TestInputs.Mib, 64 * 1024);
        var cluster = new Cluster(1, 4, 64 * TestInputs.Gib, 1e9, 1e-5, 1e9, 1e-5);
        var options = new PlanningOptions(24) { Schedules = [kind], ForcedReplicasPerStage = replicas, MinMicroBatches = 4, MaxMicroBatches = 4 };
        PartitionPlan plan = Planner.Plan(model.Graph, model.Costs, cluster, options);

        SimulatedTimeline timeline = PipelineSimulator.Timeline(plan, model.Graph, model.Costs, cluster, options);

        PipelineSchedule schedule = ScheduleBuilder.Build(plan.Schedule, PipelineTopology.FromPlan(plan));
        SimulationResult simulated = PipelineSimulator.Simulate(plan, model.Graph, model.Costs, cluster, options);
        Assert.Equal(simulated.StepSeconds, timeline.Result.StepSeconds);
        double lastEnd = 0;
        for (int r = 0; r < schedule.Ranks.Count; r++)
        {
            IReadOnlyList<TimedAction> mine = timeline.ActionsOf(r);
            Assert.Equal(schedule.Ranks[r], mine.Select(a => a.Action));
            double clock = 0;
            foreach (TimedAction action in mine)
            {
                Assert.True(action.StartSeconds >= clock - 1e-15, $"rank {r}: {action.Action} starts before the previous action ended");
                Assert.True(action.EndSeconds >= action.StartSeconds);
                bool transfer = action.Action.Kind is ActionKind.SendActivation or ActionKind.SendGradient or ActionKind.RecvActivation or ActionKind.RecvGradient;
                Assert.Equal(transfer, action.Bytes > 0);
                // The sender goes on once the message is posted; everything else holds the rank until it ends.
                clock = action.Action.Kind is ActionKind.SendActivation or ActionKind.SendGradient ? action.StartSeconds : action.EndSeconds;
                lastEnd = Math.Max(lastEnd, clock);
            }
        }
        Assert.Equal(simulated.StepSeconds, lastEnd, 1e-12);
        double compute = timeline.Actions.Where(a => a.Action.Kind is ActionKind.Forward or ActionKind.Backward).Sum(a => a.EndSeconds - a.StartSeconds);
        Assert.Equal(simulated.ComputeSecondsPerRank.Sum(), compute, 1e-12);
    }
}
