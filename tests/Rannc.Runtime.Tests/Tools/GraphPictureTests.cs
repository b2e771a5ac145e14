using System.Text.RegularExpressions;
using Rannc.Communication;
using Rannc.Execution;
using Rannc.Samples;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Tests.Tools;

/// <summary><see cref="RanncModule.WriteGraph"/>: well-formed DOT, every node in exactly one stage cluster, coloured by stage.</summary>
public sealed partial class GraphPictureTests
{
    [Fact]
    public void WriteGraph_TwoStages_PutsEveryNodeInExactlyOneStageClusterOfItsPlanStage()
    {
        SampleTask task = SampleTasks.Mlp(inputSize: 6, hiddenSize: 10, hiddenLayers: 4, classes: 3);
        Tensor[] batch = task.CreateBatch(8, 0).Select(t => t.is_floating_point() ? t.to_type(ScalarType.Float64) : t).ToArray();
        string path = Path.Combine(Path.GetTempPath(), $"rannc-graph-{Guid.NewGuid():N}.dot");
        var logged = new List<string>();
        var options = new RanncOptions { ForcedShape = (2, 1), PlanCacheDirectory = "", ProfileRepeats = 1, Log = l => { lock (logged) logged.Add(l); } };
        IReadOnlyList<IReadOnlyList<int>>? stages = null;
        int nodeCount = 0;
        string? svg = null;
        try
        {
            RankLauncher.Run(2, comm =>
            {
                nn.Module model = SeededModels.Create(task.CreateModel, 5);
                var optimizer = torch.optim.SGD(model.parameters(), 0.1);
                using var rannc = new RanncModule(model, optimizer, options);
                rannc.forward(batch).backward();
                if (comm.Rank != 0) return;
                svg = rannc.WriteGraph(path);
                stages = rannc.Plan!.Stages.Select(s => s.NodeIds).ToList();
                nodeCount = rannc.Graph!.Nodes.Count;
            }, new InProcessOptions(Timeout: TimeSpan.FromMinutes(2)));

            string[] lines = File.ReadAllLines(path);
            Assert.StartsWith("digraph ", lines[0]);
            Assert.EndsWith("{", lines[0]);
            var open = new Stack<string>();
            var clustersOfNode = new Dictionary<int, string[]>();
            var fillOfNode = new Dictionary<int, string>();
            var edges = new List<(string From, string To)>();
            foreach (string line in lines.Skip(1))
            {
                Assert.True(Regex.Matches(line, "(?<!\\\\)\"").Count % 2 == 0, $"unbalanced quotes: {line}");
                if (Subgraph().Match(line) is { Success: true } subgraph) open.Push(subgraph.Groups[1].Value);
                else if (line.Trim() == "}")
                {
                    if (open.Count == 0) Assert.Same(lines[^1], line); // only the digraph's own closing brace
                    else open.Pop();
                }
                else if (NodeLine().Match(line) is { Success: true } node)
                {
                    int id = int.Parse(node.Groups[1].Value);
                    Assert.False(clustersOfNode.ContainsKey(id), $"node n{id} is defined twice");
                    clustersOfNode[id] = open.ToArray();
                    fillOfNode[id] = FillColour().Match(line) is { Success: true } fill ? fill.Groups[1].Value : "";
                }
                else if (EdgeLine().Match(line) is { Success: true } edge) edges.Add((edge.Groups[1].Value, edge.Groups[2].Value));
            }
            Assert.Empty(open);
            Assert.Equal("}", lines[^1]);

            Assert.NotNull(stages);
            Assert.Equal(2, stages.Count);
            Assert.Equal(Enumerable.Range(0, nodeCount), clustersOfNode.Keys.Order());
            for (int k = 0; k < stages.Count; k++)
            {
                foreach (int id in stages[k])
                {
                    string[] stageClusters = clustersOfNode[id].Where(c => StageCluster().IsMatch(c)).ToArray();
                    Assert.Equal([$"cluster_stage_{k}"], stageClusters);
                    Assert.Equal(fillOfNode[stages[k][0]], fillOfNode[id]);
                }
            }
            Assert.NotEqual("", fillOfNode[stages[0][0]]);
            Assert.NotEqual(fillOfNode[stages[0][0]], fillOfNode[stages[1][0]]);
            // Edges join defined nodes only, and the cut between the stages is drawn.
            var defined = clustersOfNode.Keys.Select(id => $"n{id}").ToHashSet();
            Assert.All(edges, e => Assert.True(defined.Contains(e.To) || e.To.StartsWith("out", StringComparison.Ordinal), $"edge to undefined {e.To}"));
            Assert.All(edges, e => Assert.True(defined.Contains(e.From) || e.From.StartsWith("in", StringComparison.Ordinal), $"edge from undefined {e.From}"));
            Assert.Contains(edges, e => stages[0].Contains(Id(e.From)) && stages[1].Contains(Id(e.To)));

            // With Graphviz installed the picture is rendered beside the DOT file; without it, one line says so.
            if (DotOnPath())
            {
                Assert.Equal(path + ".svg", svg);
                string picture = File.ReadAllText(path + ".svg");
                Assert.Contains("<svg", picture);
                Assert.Contains("cluster_stage_1", picture);
            }
            else
            {
                Assert.Null(svg);
                Assert.Contains(logged, l => l.Contains("Graphviz 'dot' is not on PATH", StringComparison.Ordinal));
            }
        }
        finally
        {
            File.Delete(path);
            File.Delete(path + ".svg");
        }
    }

    [Fact]
    public void Svg_WithoutDotOnPath_IsSkippedWithTheReason()
    {
        string empty = Directory.CreateTempSubdirectory("rannc-nodot-").FullName;
        try
        {
            string? svg = Capture.GraphvizRenderer.TryRenderSvg(Path.Combine(empty, "g.dot"), empty, out string? note);

            Assert.Null(svg);
            Assert.Contains("Graphviz 'dot' is not on PATH", note);
            Assert.Contains("g.dot.svg", note);
        }
        finally
        {
            Directory.Delete(empty, recursive: true);
        }
    }

    [Fact]
    [System.Runtime.Versioning.SupportedOSPlatform("linux")]
    public void Svg_WithDotOnPath_RunsDotTsvgIntoFileDotSvg()
    {
        // A stand-in 'dot' records its arguments and writes the output it is asked for, so this runs without Graphviz too.
        string folder = Directory.CreateTempSubdirectory("rannc-fakedot-").FullName;
        try
        {
            string fake = Path.Combine(folder, "dot");
            File.WriteAllText(fake, "#!/bin/sh\necho \"$@\" > \"$(dirname \"$0\")/args\"\necho '<svg/>' > \"$4\"\n");
            File.SetUnixFileMode(fake, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
            string dotFile = Path.Combine(folder, "g.dot");
            File.WriteAllText(dotFile, "digraph g { a -> b; }\n");

            string? svg = Capture.GraphvizRenderer.TryRenderSvg(dotFile, folder, out string? note);

            Assert.Null(note);
            Assert.Equal(dotFile + ".svg", svg);
            Assert.Equal($"-Tsvg {dotFile} -o {dotFile}.svg", File.ReadAllText(Path.Combine(folder, "args")).Trim());
            Assert.Equal("<svg/>", File.ReadAllText(dotFile + ".svg").Trim());
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    private static bool DotOnPath() =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':').Any(folder => File.Exists(Path.Combine(folder, "dot")));

    private static int Id(string dotNode) => dotNode.StartsWith('n') ? int.Parse(dotNode[1..]) : -1;

    [GeneratedRegex("^\\s*subgraph \"([^\"]+)\" \\{$")]
    private static partial Regex Subgraph();

    [GeneratedRegex("^cluster_stage_\\d+$")]
    private static partial Regex StageCluster();

    [GeneratedRegex("^\\s*\"n(\\d+)\" \\[label=")]
    private static partial Regex NodeLine();

    [GeneratedRegex("fillcolor=\"([^\"]+)\"\\];$")]
    private static partial Regex FillColour();

    [GeneratedRegex("^\\s*\"([^\"]+)\" -> \"([^\"]+)\";$")]
    private static partial Regex EdgeLine();
}
