using Rannc.Partitioner;

namespace Rannc.Partitioner.Tests;

public class GraphBlocksTests
{
    [Fact]
    public void AtomicUnits_ParameterOnlyNodes_JoinTheirFirstBatchConsumer()
    {
        // x → a; w_t = transpose(w) (no batch input) → b(a, w_t); c(b) ; w_t also read by c.
        var values = new List<GraphValue>
        {
            new(0, "x", 16, 0, false), new(1, "a", 16, 0, true), new(2, "w_t", 0, 64, true), new(3, "b", 16, 0, true), new(4, "c", 16, 0, true),
        };
        var nodes = new List<GraphNode>
        {
            new(0, "a", "Module", [0], [1], []),
            new(1, "transpose", "Function", [], [2], [0]),
            new(2, "b", "Function", [1, 2], [3], []),
            new(3, "c", "Function", [3, 2], [4], []),
        };
        var graph = new Graph(nodes, values, [new GraphParameter(0, "w", 64, true)], [0], [4]);

        IReadOnlyList<IReadOnlyList<int>> units = GraphBlocks.AtomicUnits(graph);

        Assert.Equal([[0], [1, 2], [3]], units.Select(u => u.ToArray()));
    }

    [Fact]
    public void Coarsen_KeepsOrderAndCoversEveryUnit_WithinTheBlockLimit()
    {
        SyntheticModel model = SyntheticModels.BertLike(layers: 12, hidden: 128, sequence: 32, vocabulary: 1000);
        IReadOnlyList<IReadOnlyList<int>> units = GraphBlocks.AtomicUnits(model.Graph);

        IReadOnlyList<IReadOnlyList<int>> blocks = GraphBlocks.Coarsen(model.Graph, model.Costs, units, 7);

        Assert.Equal(7, blocks.Count);
        Assert.Equal(units.SelectMany(u => u), blocks.SelectMany(b => b));
        Assert.Equal(units.Count, GraphBlocks.Coarsen(model.Graph, model.Costs, units, 1000).Count);
    }

    [Fact]
    public void Coarsen_BalancesBlocks_NoBlockFarAboveTheMean()
    {
        SyntheticModel model = SyntheticModels.UniformChain(64, 1e-3, TestInputs.Mib, 1024);
        IReadOnlyList<IReadOnlyList<int>> units = GraphBlocks.AtomicUnits(model.Graph);

        IReadOnlyList<IReadOnlyList<int>> blocks = GraphBlocks.Coarsen(model.Graph, model.Costs, units, 8);

        Assert.All(blocks, b => Assert.Equal(8, b.Count));
    }
}
