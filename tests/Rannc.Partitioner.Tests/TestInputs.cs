using Rannc.Partitioner;

namespace Rannc.Partitioner.Tests;

/// <summary>A complete set of planning inputs.</summary>
internal sealed record PlanningCase(Graph Graph, CostTable Costs, Cluster Cluster, PlanningOptions Options)
{
    public PartitionPlan Plan() => Planner.Plan(Graph, Costs, Cluster, Options);

    public PlanningCase WithMemory(long bytes) => this with { Cluster = Cluster with { MemoryBytesPerDevice = bytes } };
}

internal static class TestInputs
{
    public const long Mib = 1024L * 1024;
    public const long Gib = 1024L * Mib;

    /// <summary>
    /// A random DAG of <paramref name="nodeCount"/> nodes in topological order: each node reads the previous
    /// node's output and sometimes an earlier value (a skip connection); every node is batch-dependent, so each
    /// is its own atomic unit. Costs, sizes and the cluster are random but seeded.
    /// </summary>
    public static PlanningCase RandomCase(int seed, int nodeCount, int deviceCount)
    {
        var random = new Random(seed);
        var values = new List<GraphValue> { new(0, "x", random.Next(1, 64) * 64 * 1024, 0, false) };
        var nodes = new List<GraphNode>();
        var parameters = new List<GraphParameter>();
        var costs = new List<NodeCost>();
        for (int i = 0; i < nodeCount; i++)
        {
            var inputs = new List<int> { values.Count - 1 };
            if (i > 1 && random.NextDouble() < 0.3)
            {
                inputs.Add(random.Next(0, values.Count - 1));
            }

            var parameterIds = new List<int>();
            if (random.NextDouble() < 0.8)
            {
                parameterIds.Add(parameters.Count);
                parameters.Add(new GraphParameter(parameters.Count, $"p{i}", random.Next(1, 200) * Mib, Trainable: random.NextDouble() < 0.9));
            }

            if (parameters.Count > 1 && random.NextDouble() < 0.15)
            {
                parameterIds.Add(random.Next(0, parameters.Count - parameterIds.Count)); // a shared parameter
            }

            int output = values.Count;
            values.Add(new GraphValue(output, $"v{i}", random.Next(1, 64) * 256 * 1024, random.Next(0, 3) * 1024, random.NextDouble() < 0.9));
            nodes.Add(new GraphNode(i, $"n{i}", "Module", inputs, [output], parameterIds.Distinct().ToList()));
            double forward = random.Next(1, 100) * 1e-5;
            costs.Add(new NodeCost(random.Next(0, 5) * 1e-5, forward, random.Next(0, 5) * 1e-5, forward * (1 + random.NextDouble() * 2),
                random.Next(0, 128) * 256 * 1024));
        }

        var graph = new Graph(nodes, values, parameters, [0], [values.Count - 1]);
        int devicesPerNode = random.NextDouble() < 0.5 ? deviceCount : Math.Max(1, deviceCount / 2);
        int clusterNodes = Math.Max(1, deviceCount / devicesPerNode);
        int batch = random.Next(2, 13);
        long footprint = parameters.Sum(p => p.Bytes) * 4
            + batch * (values.Sum(v => v.BytesPerSample) + costs.Sum(c => c.SavedBytesPerSample));
        long memory = (long)(footprint * (0.25 + random.NextDouble() * 0.75));
        var cluster = new Cluster(
            clusterNodes, devicesPerNode, memory,
            IntraNodeBandwidth: random.Next(1, 50) * 1e9, IntraNodeLatencySeconds: 5e-6,
            InterNodeBandwidth: random.Next(1, 10) * 1e9, InterNodeLatencySeconds: 2e-5);
        var options = new PlanningOptions(batch)
        {
            MaxMicroBatches = 4,
            OptimizerStateFactor = random.Next(0, 3),
            MemoryMargin = 0.1,
        };
        return new PlanningCase(graph, new CostTable(costs), cluster, options);
    }

    /// <summary>A small BERT-like model on four devices whose memory forces a pipeline.</summary>
    public static PlanningCase SmallBert()
    {
        SyntheticModel model = SyntheticModels.BertLike(layers: 4, hidden: 256, sequence: 128, vocabulary: 8000, deviceFlopsPerSecond: 10e12);
        return new PlanningCase(model.Graph, model.Costs, Cluster.Typical(1, 4, 96 * Mib), new PlanningOptions(32));
    }

    /// <summary>A small ResNet-like chain on two nodes of four devices.</summary>
    public static PlanningCase SmallResNet()
    {
        SyntheticModel model = SyntheticModels.ResNetLike([2, 2, 2, 2], widthFactor: 2, imageSize: 64, deviceFlopsPerSecond: 10e12);
        return new PlanningCase(model.Graph, model.Costs, Cluster.Typical(2, 4, 512 * Mib), new PlanningOptions(64));
    }
}
