using Rannc.Partitioner;

namespace Rannc.Partitioner.Tests;

/// <summary>In heuristic mode the planner chooses among a few candidates by simulated step time (see <see cref="Planner"/>).</summary>
public class PlannerSimulatedChoiceTests
{
    /// <summary>BERT-like, 96 layers, on 64 devices with 32 GiB each (8 hosts of 8): the J-best plan is a 1F1B pipeline of
    /// several equally loaded stages whose steady state waits for transfers that J does not count.</summary>
    private static PlanningCase Bert96On64()
    {
        SyntheticModel model = SyntheticModels.BertLike(96);
        return new PlanningCase(model.Graph, model.Costs, Cluster.Typical(8, 8, 32 * TestInputs.Gib), new PlanningOptions(512));
    }

    [Fact]
    public void Plan_Heuristic_ReturnsTheCandidateWithTheSmallestSimulatedTime()
    {
        PlanningCase input = Bert96On64();

        IReadOnlyList<PartitionPlan> candidates = Planner.Candidates(input.Graph, input.Costs, input.Cluster, input.Options);
        PartitionPlan plan = input.Plan();

        // The J-best candidate comes first: the search's plan, or when nothing beat the baselines' and the cycle-balanced
        // split's J, the J-best of those.
        PartitionPlan jBest = candidates[0];
        Assert.False(plan.SearchWasExhaustive);
        Assert.True(candidates.Count >= 2);
        Assert.All(candidates, c => Assert.True(c.ObjectiveSeconds >= jBest.ObjectiveSeconds * (1 - 1e-9)));
        Assert.Equal(candidates.Min(c => c.PredictedStepSeconds), plan.PredictedStepSeconds);
        Assert.Empty(plan.FindViolations(input.Graph, input.Costs, input.Cluster, input.Options));
        Assert.Equal(
            PipelineSimulator.Simulate(plan, input.Graph, input.Costs, input.Cluster, input.Options).StepSeconds,
            plan.PredictedStepSeconds);
    }

    [Fact]
    public void Plan_Heuristic_IsDeterministic()
    {
        PlanningCase input = Bert96On64();

        Assert.Equal(PlanJson.Serialize(input.Plan()), PlanJson.Serialize(input.Plan()));
    }

    [Fact]
    public void Candidates_ExhaustiveSearch_IsTheJOptimalPlanAlone()
    {
        SyntheticModel model = SyntheticModels.UniformChain(6, forwardSecondsPerSample: 1e-3, parameterBytes: 1 << 20, activationBytesPerSample: 1024);
        var input = new PlanningCase(model.Graph, model.Costs, Cluster.Typical(1, 4, TestInputs.Gib), new PlanningOptions(8) { SearchBeamWidth = 0 });

        IReadOnlyList<PartitionPlan> candidates = Planner.Candidates(input.Graph, input.Costs, input.Cluster, input.Options);

        PartitionPlan only = Assert.Single(candidates);
        Assert.True(only.SearchWasExhaustive);
        Assert.Equal(PlanJson.Serialize(only), PlanJson.Serialize(input.Plan()));
    }
}
