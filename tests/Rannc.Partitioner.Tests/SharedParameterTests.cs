using Rannc.Partitioner;

namespace Rannc.Partitioner.Tests;

/// <summary>A parameter used by nodes of different stages (tied embeddings): a copy per holder stage, counted in each
/// stage's memory, and one gradient sum among the holders per step in the simulation.</summary>
public class SharedParameterTests
{
    private const double Ms = 1e-3;
    private const long Tied = 256 * TestInputs.Mib;

    /// <summary>A four-node chain whose last node also reads the first node's weight (the LM head tied to the embedding).</summary>
    private static PlanningCase TiedChain(bool tied, IReadOnlyList<int>? forced = null)
    {
        SyntheticModel model = SyntheticModels.UniformChain(4, forwardSecondsPerSample: 1 * Ms, 64 * TestInputs.Mib, activationBytesPerSample: 1024);
        var parameters = model.Graph.Parameters.ToList();
        parameters[0] = parameters[0] with { Bytes = Tied };
        var nodes = model.Graph.Nodes.ToList();
        if (tied)
        {
            nodes[3] = nodes[3] with { Parameters = [.. nodes[3].Parameters, 0] };
        }
        else
        {
            // The same model with an untied head: its own parameter of the tied one's size.
            parameters.Add(new GraphParameter(parameters.Count, "head.weight", Tied, Trainable: true));
            nodes[3] = nodes[3] with { Parameters = [.. nodes[3].Parameters, parameters.Count - 1] };
        }

        var cluster = new Cluster(2, 1, 8 * TestInputs.Gib, 10e9, 1e-5, 1e9, 3e-5);
        var options = new PlanningOptions(8) { ForcedReplicasPerStage = forced };
        return new PlanningCase(model.Graph with { Parameters = parameters, Nodes = nodes }, model.Costs, cluster, options);
    }

    [Fact]
    public void SharedParameters_TieSplitOverTwoStages_ListsBothHolders()
    {
        PlanningCase input = TiedChain(tied: true, forced: [1, 1]);

        PartitionPlan plan = input.Plan();

        SharedParameter shared = Assert.Single(plan.SharedParameters(input.Graph));
        Assert.Equal(0, shared.ParameterId);
        Assert.Equal("layer0.weight", shared.Name);
        Assert.True(shared.Trainable);
        Assert.Equal(Tied, shared.Bytes);
        Assert.Equal([0, 1], shared.Stages);
        Assert.Empty(plan.FindViolations(input.Graph, input.Costs, input.Cluster, input.Options));
    }

    [Fact]
    public void SharedParameters_OneStage_IsEmpty()
    {
        PlanningCase input = TiedChain(tied: true, forced: [2]);

        PartitionPlan plan = input.Plan();

        Assert.Empty(plan.SharedParameters(input.Graph));
    }

    [Fact]
    public void Memory_EachHolderStageCountsParameterGradientAndOptimizerState()
    {
        PlanningCase tied = TiedChain(tied: true, forced: [1, 1]);
        PartitionPlan plan = tied.Plan();
        PlanningCase untied = TiedChain(tied: false);
        PlanningCase none = tied with { Graph = TiedChain(tied: false).Graph with { Nodes = TiedChain(tied: false).Graph.Nodes.Select(n => n with { Parameters = n.Parameters.Where(p => p < 4).ToList() }).ToList() } };

        PlanEstimate withTie = PlanObjective.Evaluate(tied.Graph, tied.Costs, tied.Cluster, tied.Options, plan.ToShape());
        PlanEstimate withCopy = PlanObjective.Evaluate(untied.Graph, untied.Costs, untied.Cluster, tied.Options, plan.ToShape());
        PlanEstimate without = PlanObjective.Evaluate(none.Graph, none.Costs, none.Cluster, tied.Options, plan.ToShape());

        Assert.Equal(withCopy.PeakBytesPerStage, withTie.PeakBytesPerStage);
        long copy = (long)(Tied * (2 + tied.Options.OptimizerStateFactor));
        int holderOfHead = plan.Stages.Single(s => s.NodeIds.Contains(3)).Index;
        Assert.Equal(without.PeakBytesPerStage[holderOfHead] + copy, withTie.PeakBytesPerStage[holderOfHead]);
    }

    [Fact]
    public void Simulation_SplitTie_AddsOneGradientSumBetweenTheHolders()
    {
        PlanningCase tied = TiedChain(tied: true, forced: [1, 1]);
        PartitionPlan plan = tied.Plan();
        PlanningCase untied = TiedChain(tied: false);

        double withTie = PipelineSimulator.Simulate(plan, tied.Graph, tied.Costs, tied.Cluster, tied.Options).StepSeconds;
        double withCopy = PipelineSimulator.Simulate(plan, untied.Graph, untied.Costs, untied.Cluster, tied.Options).StepSeconds;

        // Two holders on two hosts: ring all-reduce of 256 MiB over the 1 GB/s inter-node link, 2 latencies.
        double sync = 2.0 * 1 / 2 * Tied / 1e9 + 2 * 3e-5;
        Assert.Equal(withCopy + sync, withTie, 1e-12);
        Assert.Equal(withTie, plan.PredictedStepSeconds, 1e-12);
    }

    [Fact]
    public void Simulation_BuffersSharedAcrossStages_AreNotSynchronised()
    {
        PlanningCase tied = TiedChain(tied: true, forced: [1, 1]);
        var parameters = tied.Graph.Parameters.ToList();
        parameters[0] = parameters[0] with { Trainable = false };
        PlanningCase frozen = tied with { Graph = tied.Graph with { Parameters = parameters } };
        PartitionPlan plan = frozen.Plan();
        var graphWithCopy = TiedChain(tied: false).Graph;
        var copyParameters = graphWithCopy.Parameters.ToList();
        copyParameters[0] = copyParameters[0] with { Trainable = false };
        copyParameters[^1] = copyParameters[^1] with { Trainable = false };

        double shared = PipelineSimulator.Simulate(plan, frozen.Graph, frozen.Costs, frozen.Cluster, frozen.Options).StepSeconds;
        double copied = PipelineSimulator.Simulate(plan, graphWithCopy with { Parameters = copyParameters }, frozen.Costs, frozen.Cluster, frozen.Options).StepSeconds;

        Assert.False(Assert.Single(plan.SharedParameters(frozen.Graph)).Trainable);
        Assert.Equal(copied, shared, 1e-12);
    }

    [Theory]
    [InlineData(11)]
    [InlineData(12)]
    [InlineData(13)]
    public void Plan_RandomDagsWithSharedParameters_PassValidationAndPriceTheSync(int seed)
    {
        PlanningCase input = TestInputs.RandomCase(seed, 9, 4);
        PartitionPlan plan;
        try
        {
            plan = input.Plan();
        }
        catch (NoFeasiblePlanException)
        {
            return; // memory is drawn at random; some cases fit no plan
        }

        Assert.Empty(plan.FindViolations(input.Graph, input.Costs, input.Cluster, input.Options));
        var buckets = CostModel.SharedParameterSyncSeconds(plan, input.Graph, input.Cluster);
        Assert.Equal(plan.SharedParameters(input.Graph).Where(p => p.Trainable).Select(p => string.Join(",", p.Stages)).Distinct().Count(), buckets.Count);
        Assert.All(buckets, b => Assert.True(b.Seconds > 0 && b.Stages.Count > 1));
    }

    [Fact]
    public void Plan_SyncCostlierThanKeepingUsersTogether_KeepsTheTieInOneStage()
    {
        // A 2 GiB tie with tiny other weights on two hosts: splitting it pays a 2 GiB sum over the slow link (and the
        // pipeline's bubble); one data-parallel stage pays about the same all-reduce without the bubble. J alone (no sync)
        // prefers the split; the simulated choice must not.
        SyntheticModel model = SyntheticModels.UniformChain(4, forwardSecondsPerSample: 1 * Ms, TestInputs.Mib, activationBytesPerSample: 1024);
        var parameters = model.Graph.Parameters.ToList();
        parameters[0] = parameters[0] with { Bytes = 2 * TestInputs.Gib };
        var nodes = model.Graph.Nodes.Select(n => n.Id == 3 ? n with { Parameters = [.. n.Parameters, 0] } : n).ToList();
        Graph graph = model.Graph with { Parameters = parameters, Nodes = nodes };
        var cluster = new Cluster(2, 1, 64 * TestInputs.Gib, 10e9, 1e-5, 1e9, 3e-5);
        var options = new PlanningOptions(8);

        PartitionPlan plan = Planner.Plan(graph, model.Costs, cluster, options);
        PartitionPlan split = Planner.Plan(graph, model.Costs, cluster, options with { ForcedReplicasPerStage = [1, 1] });

        Assert.Empty(plan.SharedParameters(graph));
        Assert.Single(split.SharedParameters(graph));
        Assert.True(split.ObjectiveSeconds < plan.ObjectiveSeconds, "J without the sync should favour the split here");
        Assert.True(plan.PredictedStepSeconds < split.PredictedStepSeconds);
    }
}
