using Rannc.Partitioner;

namespace Rannc.Partitioner.Tests;

public class PlanValidationTests
{
    private static (PlanningCase Input, PartitionPlan Plan) Planned()
    {
        PlanningCase input = TestInputs.SmallBert();
        return (input, input.Plan());
    }

    private static IReadOnlyList<string> Violations(PlanningCase input, PartitionPlan plan) =>
        plan.FindViolations(input.Graph, input.Costs, input.Cluster, input.Options);

    [Fact]
    public void ReturnedPlan_HasNoViolations()
    {
        (PlanningCase input, PartitionPlan plan) = Planned();

        Assert.Empty(Violations(input, plan));
    }

    [Fact]
    public void NodeInTwoStages_IsReported()
    {
        (PlanningCase input, PartitionPlan plan) = Planned();
        var broken = plan with { Stages = [plan.Stages[0], plan.Stages[1] with { NodeIds = [plan.Stages[0].NodeIds[^1], .. plan.Stages[1].NodeIds] }] };

        Assert.Contains(Violations(input, broken), p => p.StartsWith($"Node {plan.Stages[0].NodeIds[^1]} ", StringComparison.Ordinal) && p.Contains("is in stages 0 and 1", StringComparison.Ordinal));
    }

    [Fact]
    public void ValueFlowingBackwards_IsReported()
    {
        (PlanningCase input, PartitionPlan plan) = Planned();
        int moved = plan.Stages[1].NodeIds[0];
        var broken = plan with
        {
            Stages =
            [
                plan.Stages[0] with { NodeIds = plan.Stages[0].NodeIds.Take(2).ToList() },
                plan.Stages[1] with { NodeIds = [.. plan.Stages[0].NodeIds.Skip(2), .. plan.Stages[1].NodeIds] },
            ],
        };
        broken = broken with { Stages = [broken.Stages[1] with { Index = 0 }, broken.Stages[0] with { Index = 1 }] };

        Assert.Contains(Violations(input, broken), p => p.Contains("flows backwards", StringComparison.Ordinal));
        Assert.True(moved > 0);
    }

    [Fact]
    public void RankUsedTwice_AndMemoryTooSmall_AreReported()
    {
        (PlanningCase input, PartitionPlan plan) = Planned();
        var broken = plan with { Stages = [plan.Stages[0], plan.Stages[1] with { ReplicaRanks = [plan.Stages[0].ReplicaRanks[0], .. plan.Stages[1].ReplicaRanks.Skip(1)] }] };

        Assert.Contains(Violations(input, broken), p => p.StartsWith("Rank 0 is used twice", StringComparison.Ordinal));
        Assert.Contains(Violations(input.WithMemory(TestInputs.Mib), plan), p => p.Contains("per device but only", StringComparison.Ordinal));
        PlanValidationException error = Assert.Throws<PlanValidationException>(
            () => plan.Validate(input.Graph, input.Costs, input.Cluster with { Nodes = 2 }, input.Options));
        Assert.Contains("The plan is for 4 devices but the cluster has 8.", error.Problems);
    }

    [Fact]
    public void WrongMicroBatchesAndOptions_AreReported()
    {
        (PlanningCase input, PartitionPlan plan) = Planned();
        var broken = plan with { MicroBatchSizes = [.. plan.MicroBatchSizes.Take(plan.MicroBatchCount - 1), plan.MicroBatchSizes[^1] + 1] };
        var options = input.Options with { Schedules = [PipelineScheduleKind.GPipe], MaxStages = 1 };

        IReadOnlyList<string> problems = plan.FindViolations(input.Graph, input.Costs, input.Cluster, options);

        Assert.Contains(Violations(input, broken), p => p.Contains("the layout rule gives", StringComparison.Ordinal));
        Assert.Contains(problems, p => p.StartsWith("Schedule OneFOneB is not among the allowed GPipe", StringComparison.Ordinal));
        Assert.Contains(problems, p => p.StartsWith("2 stages is outside the allowed 1…1", StringComparison.Ordinal));
    }

    [Fact]
    public void Plan_InvalidGraph_IsRejectedWithItsRule()
    {
        PlanningCase input = TestInputs.SmallBert();
        var reversed = input.Graph with { Nodes = input.Graph.Nodes.Reverse().Select((n, i) => n with { Id = i }).ToList() };

        ArgumentException error = Assert.Throws<ArgumentException>(() => Planner.Plan(reversed, input.Costs, input.Cluster, input.Options));

        Assert.Contains("topological order", error.Message, StringComparison.Ordinal);
    }
}
