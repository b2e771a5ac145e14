using Rannc.Partitioner;

namespace Rannc.Bench.Planning;

/// <summary>The planning inputs the benchmarks use.</summary>
internal static class Scenarios
{
    public const long Gib = 1024L * 1024 * 1024;

    /// <summary>A BERT-large-like model (hidden 1024, sequence 512, vocabulary 30522) of <paramref name="layers"/>
    /// layers on <paramref name="devices"/> devices (8 per node) with <paramref name="memoryGib"/> GiB each;
    /// global batch 8 per device (at least 64), Adam.</summary>
    public static (Graph Graph, CostTable Costs, Cluster Cluster, PlanningOptions Options) Bert(int layers, int devices, int memoryGib)
    {
        SyntheticModel model = SyntheticModels.BertLike(layers);
        return (model.Graph, model.Costs, Cluster.Typical(Math.Max(1, devices / 8), Math.Min(8, devices), memoryGib * Gib),
            new PlanningOptions(Math.Max(64, 8 * devices)));
    }
}
