using System.Runtime.CompilerServices;
using Rannc.Partitioner;

namespace Rannc.Partitioner.Tests;

/// <summary>Plans of sample-like synthetic models, stored as canonical JSON under <c>Plans/</c>. To accept a deliberate
/// change, run the tests with <c>RANNC_UPDATE_GOLDEN=1</c> and review the diff.</summary>
public class GoldenPlanTests
{
    public static TheoryData<string> Cases() => ["bert-4-small", "resnet-8-small"];

    private static PlanningCase Case(string name) => name switch
    {
        "bert-4-small" => TestInputs.SmallBert(),
        "resnet-8-small" => TestInputs.SmallResNet(),
        _ => throw new ArgumentException(name),
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void Plan_SampleLikeModel_MatchesGoldenFile(string name)
    {
        PlanningCase input = Case(name);
        string path = Path.Combine(TestDirectory(), "Plans", name + ".json");

        string actual = PlanJson.Serialize(input.Plan());

        if (Environment.GetEnvironmentVariable("RANNC_UPDATE_GOLDEN") == "1")
        {
            File.WriteAllText(path, actual);
        }

        Assert.True(File.Exists(path), $"Golden file {path} is missing; run with RANNC_UPDATE_GOLDEN=1 to create it.");
        Assert.Equal(File.ReadAllText(path), actual);
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Plan_SampleLikeModel_IsAPipelineThatFitsAndValidates(string name)
    {
        PlanningCase input = Case(name);

        PartitionPlan plan = input.Plan();

        Assert.True(plan.Stages.Count > 1, "The memory of these cases is chosen so that one stage cannot hold the model.");
        plan.Validate(input.Graph, input.Costs, input.Cluster, input.Options);
        Assert.Equal(plan.PredictedStepSeconds, PipelineSimulator.Simulate(plan, input.Graph, input.Costs, input.Cluster, input.Options).StepSeconds);
    }

    [Fact]
    public void Plan_SameInputsBuiltTwice_GivesTheSameBytes()
    {
        string first = PlanJson.Serialize(TestInputs.SmallBert().Plan());
        string second = PlanJson.Serialize(TestInputs.SmallBert().Plan());

        Assert.Equal(first, second);
    }

    [Fact]
    public void Plan_HugeVocabulary_PutsEmbeddingAndHeadInSeparateStages()
    {
        SyntheticModel model = SyntheticModels.BertLike(layers: 4, hidden: 256, sequence: 128, vocabulary: 60000, deviceFlopsPerSecond: 10e12);
        var input = new PlanningCase(model.Graph, model.Costs, Cluster.Typical(1, 4, 400 * TestInputs.Mib), new PlanningOptions(16));

        PartitionPlan plan = input.Plan();

        int embedding = model.Graph.Nodes.Single(n => n.Name == "embeddings").Id;
        int head = model.Graph.Nodes.Single(n => n.Name == "lm_head").Id;
        Assert.NotEqual(plan.Stages.Single(s => s.NodeIds.Contains(embedding)).Index, plan.Stages.Single(s => s.NodeIds.Contains(head)).Index);
    }

    private static string TestDirectory([CallerFilePath] string path = "") => Path.GetDirectoryName(path)!;
}
