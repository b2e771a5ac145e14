using System.Globalization;
using System.Text;

namespace Rannc.Capture;

/// <summary>Text and Graphviz forms of a <see cref="CapturedGraph"/>, so users can see what was captured.</summary>
internal static class GraphFormatter
{
    public static string ToText(CapturedGraph graph)
    {
        var text = new StringBuilder();
        text.Append("graph ").Append(graph.Model.GetType().FullName).Append('(')
            .Append(string.Join(", ", graph.Inputs.Select(v => Value(graph, v)))).Append(')').Append('\n');
        foreach (var node in graph.Nodes)
        {
            text.Append("  ").Append(string.Join(", ", node.Outputs.Select(v => "%" + Id(v))))
                .Append(node.Outputs.Count > 0 ? " = " : string.Empty)
                .Append(node.Kind).Append(' ').Append(node.Name);
            if (node.Kind is NodeKind.Module or NodeKind.TensorMethod or NodeKind.Function or NodeKind.Operator)
            {
                text.Append(" [").Append(node.Operation).Append(']');
            }
            text.Append('(').Append(string.Join(", ", node.Inputs.Select(v => "%" + Id(v)))).Append(')');
            var owned = node.Parameters.Concat(node.Buffers).ToList();
            if (owned.Count > 0)
            {
                text.Append("  {").Append(string.Join(", ", owned)).Append('}');
            }
            text.Append("  @").Append(node.Location).Append('\n');
        }
        text.Append("  return ").Append(string.Join(", ", graph.Outputs.Select(v => "%" + Id(v)))).Append('\n');
        return text.ToString();
    }

    /// <summary>
    /// One DOT node per graph node, edges for values, and nested clusters by module path. A leaf submodule call sits in
    /// the cluster of the module that calls it, so a transformer layer shows its attention and feed-forward parts.
    /// </summary>
    public static string ToDot(CapturedGraph graph) => ToDot(graph, stages: null);

    /// <summary>
    /// As <see cref="ToDot(CapturedGraph)"/>; with <paramref name="stages"/> (the node ids of each pipeline stage, every
    /// node in exactly one) each stage is an outer cluster <c>cluster_stage_K</c> whose nodes are filled in the
    /// stage's colour, with the module clusters of its own nodes inside it.
    /// </summary>
    public static string ToDot(CapturedGraph graph, IReadOnlyList<IReadOnlyList<int>>? stages)
    {
        var bytesByName = graph.Parameters.ToDictionary(p => p.Name, p => p.Bytes, StringComparer.Ordinal);
        var dot = new StringBuilder();
        dot.Append("digraph ").Append(Quote(graph.Model.GetType().Name)).Append(" {\n");
        dot.Append("  rankdir=TB;\n  node [shape=box, fontname=\"Helvetica\", fontsize=10];\n");
        foreach (var input in graph.Inputs)
        {
            dot.Append("  ").Append(Quote("in" + Id(input))).Append(" [shape=ellipse, label=")
                .Append(Quote(graph.Values[input].Name)).Append("];\n");
        }
        if (stages is null)
        {
            WriteCluster(dot, ModuleClusters(graph.Nodes, string.Empty), bytesByName, "  ", fill: null);
        }
        else
        {
            CheckStages(graph, stages);
            for (var k = 0; k < stages.Count; k++)
            {
                var fill = StageColours[k % StageColours.Length];
                dot.Append("  subgraph ").Append(Quote("cluster_stage_" + Id(k))).Append(" {\n");
                dot.Append("    label=").Append(Quote("stage " + Id(k))).Append(";\n    style=filled;\n    color=")
                    .Append(Quote(fill)).Append(";\n    fillcolor=\"#ffffff\";\n");
                WriteCluster(dot, ModuleClusters(stages[k].Select(id => graph.Nodes[id]), "s" + Id(k) + "."), bytesByName, "    ", fill);
                dot.Append("  }\n");
            }
        }
        foreach (var output in graph.Outputs)
        {
            dot.Append("  ").Append(Quote("out" + Id(output))).Append(" [shape=ellipse, label=")
                .Append(Quote("output " + graph.Values[output].Name)).Append("];\n");
        }
        foreach (var node in graph.Nodes)
        {
            foreach (var input in node.Inputs.Distinct())
            {
                var producer = graph.Values[input].Producer;
                var from = producer < 0 ? "in" + Id(input) : "n" + Id(producer);
                dot.Append("  ").Append(Quote(from)).Append(" -> ").Append(Quote("n" + Id(node.Id))).Append(";\n");
            }
        }
        foreach (var output in graph.Outputs)
        {
            var producer = graph.Values[output].Producer;
            var from = producer < 0 ? "in" + Id(output) : "n" + Id(producer);
            dot.Append("  ").Append(Quote(from)).Append(" -> ").Append(Quote("out" + Id(output))).Append(";\n");
        }
        dot.Append("}\n");
        return dot.ToString();
    }

    /// <summary>Light fills that stay readable under black labels; stages beyond them reuse them in order.</summary>
    private static readonly string[] StageColours =
        ["#a6cee3", "#b2df8a", "#fdbf6f", "#cab2d6", "#fb9a99", "#ffff99", "#8dd3c7", "#d9d9d9"];

    private static void CheckStages(CapturedGraph graph, IReadOnlyList<IReadOnlyList<int>> stages)
    {
        var seen = new int[graph.Nodes.Count];
        foreach (var id in stages.SelectMany(s => s))
        {
            if (id < 0 || id >= seen.Length) throw new ArgumentException($"Stage node {id} is not a node of the graph.", nameof(stages));
            seen[id]++;
        }
        var wrong = Enumerable.Range(0, seen.Length).FirstOrDefault(id => seen[id] != 1, -1);
        if (wrong >= 0) throw new ArgumentException($"Node {wrong} is in {seen[wrong]} stages; every node must be in exactly one.", nameof(stages));
    }

    /// <summary>The module-path cluster tree of <paramref name="nodes"/>; cluster names start with <paramref name="prefix"/>.</summary>
    private static Cluster ModuleClusters(IEnumerable<CapturedNode> nodes, string prefix)
    {
        var root = new Cluster(string.Empty, prefix);
        foreach (var node in nodes)
        {
            var path = node.Kind == NodeKind.Module ? Parent(node.ModulePath) : node.ModulePath;
            var cluster = root;
            if (path.Length > 0)
            {
                var partial = string.Empty;
                foreach (var segment in path.Split('.'))
                {
                    partial = partial.Length == 0 ? segment : partial + "." + segment;
                    cluster = cluster.Child(partial);
                }
            }
            cluster.Nodes.Add(node);
        }
        return root;
    }

    private sealed class Cluster(string path, string namePrefix)
    {
        public string Path { get; } = path;

        /// <summary>The DOT subgraph name: module paths repeat across stages, and Graphviz merges equal names.</summary>
        public string Name => "cluster_" + namePrefix + Path;

        public List<Cluster> Children { get; } = [];

        public List<CapturedNode> Nodes { get; } = [];

        public Cluster Child(string path)
        {
            var child = Children.FirstOrDefault(c => c.Path == path);
            if (child is null)
            {
                child = new Cluster(path, namePrefix);
                Children.Add(child);
            }
            return child;
        }
    }

    private static void WriteCluster(StringBuilder dot, Cluster cluster, Dictionary<string, long> bytesByName, string indent, string? fill)
    {
        foreach (var node in cluster.Nodes)
        {
            var label = new StringBuilder(node.Name).Append('\n').Append(node.Kind).Append(' ').Append(node.Operation);
            var bytes = node.Parameters.Concat(node.Buffers).Sum(name => bytesByName.TryGetValue(name, out var b) ? b : 0);
            if (bytes > 0)
            {
                label.Append('\n').Append(FormatBytes(bytes)).Append(" of parameters");
            }
            dot.Append(indent).Append(Quote("n" + Id(node.Id))).Append(" [label=").Append(Quote(label.ToString()));
            if (fill is not null) dot.Append(", style=filled, fillcolor=").Append(Quote(fill));
            dot.Append("];\n");
        }
        foreach (var child in cluster.Children)
        {
            dot.Append(indent).Append("subgraph ").Append(Quote(child.Name)).Append(" {\n");
            dot.Append(indent).Append("  label=").Append(Quote(child.Path)).Append(";\n");
            if (fill is not null) dot.Append(indent).Append("  style=solid;\n");
            WriteCluster(dot, child, bytesByName, indent + "  ", fill);
            dot.Append(indent).Append("}\n");
        }
    }

    private static string FormatBytes(long bytes) => bytes switch
    {
        >= 1 << 30 => (bytes / (double)(1 << 30)).ToString("0.##", CultureInfo.InvariantCulture) + " GiB",
        >= 1 << 20 => (bytes / (double)(1 << 20)).ToString("0.##", CultureInfo.InvariantCulture) + " MiB",
        >= 1 << 10 => (bytes / (double)(1 << 10)).ToString("0.##", CultureInfo.InvariantCulture) + " KiB",
        _ => bytes.ToString(CultureInfo.InvariantCulture) + " B",
    };

    private static string Parent(string path)
    {
        var dot = path.LastIndexOf('.');
        return dot < 0 ? string.Empty : path[..dot];
    }

    private static string Value(CapturedGraph graph, int id) => "%" + Id(id) + " " + graph.Values[id].Name;

    private static string Id(int id) => id.ToString(CultureInfo.InvariantCulture);

    private static string Quote(string text) => "\"" + text.Replace("\\", "\\\\").Replace("\"", "\\\"").Replace("\n", "\\n") + "\"";
}
