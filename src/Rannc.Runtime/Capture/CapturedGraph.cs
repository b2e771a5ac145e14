using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Capture;

/// <summary>One operation of a model instance's forward pass, after loops and branches are resolved.</summary>
public sealed class CapturedNode
{
    private readonly int[] _inputs;
    private readonly int[] _outputs;
    private readonly int[] _loopIndices;

    internal CapturedNode(
        int id, string name, NodeKind kind, string operation, string modulePath, string location,
        int[] inputs, int[] outputs, IReadOnlyList<string> parameters, IReadOnlyList<string> buffers,
        ICapturedModule owner, int templateNodeId, int[] loopIndices)
    {
        Id = id;
        Name = name;
        Kind = kind;
        Operation = operation;
        ModulePath = modulePath;
        Location = location;
        _inputs = inputs;
        _outputs = outputs;
        Parameters = parameters;
        Buffers = buffers;
        Owner = owner;
        TemplateNodeId = templateNodeId;
        _loopIndices = loopIndices;
    }

    /// <summary>Position in <see cref="CapturedGraph.Nodes"/>; nodes are in a topological order.</summary>
    public int Id { get; }

    /// <summary>Unique readable name: the module path, then the operation (<c>encoder.layers.3.attention.matmul_1</c>).</summary>
    public string Name { get; }

    public NodeKind Kind { get; }

    /// <summary>The method, property or operator (<c>forward</c>, <c>matmul</c>, <c>op_Addition</c>).</summary>
    public string Operation { get; }

    /// <summary>
    /// For a <see cref="NodeKind.Module"/> node the called submodule's path; otherwise the path of the
    /// <c>[RaNNC]</c> module whose forward() contains the operation ("" for the model itself).
    /// </summary>
    public string ModulePath { get; }

    /// <summary>Source location of the operation, <c>File.cs(line,column)</c>.</summary>
    public string Location { get; }

    /// <summary>Values the node reads (ids into <see cref="CapturedGraph.Values"/>).</summary>
    public IReadOnlyList<int> Inputs => _inputs;

    /// <summary>Values the node writes; every value has exactly one producer or is a graph input.</summary>
    public IReadOnlyList<int> Outputs => _outputs;

    /// <summary>Names, as in the model's <c>named_parameters()</c>, of the parameters this node uses.</summary>
    public IReadOnlyList<string> Parameters { get; }

    /// <summary>Names, as in the model's <c>named_buffers()</c>, of the buffers this node uses.</summary>
    public IReadOnlyList<string> Buffers { get; }

    internal ICapturedModule Owner { get; }

    internal int TemplateNodeId { get; }

    internal void Execute(object?[] values) =>
        Owner.ExecuteNode(TemplateNodeId, new NodeFrame(values, _inputs, _outputs, _loopIndices));

    public override string ToString() => Name;
}

/// <summary>A value of the concrete graph.</summary>
/// <param name="Id">Position in <see cref="CapturedGraph.Values"/>.</param>
/// <param name="Name">Readable name: the producing node's name, or the forward() parameter's name.</param>
/// <param name="Kind">Tensor, scalar (often a shape-derived number) or other.</param>
/// <param name="TypeName">The C# type.</param>
/// <param name="Producer">Id of the node that writes it, or -1 for a graph input.</param>
public sealed record CapturedValue(int Id, string Name, ValueKind Kind, string TypeName, int Producer);

/// <summary>A parameter or buffer used by the graph, under its name in <c>named_parameters()</c> / <c>named_buffers()</c>.</summary>
/// <param name="Name">The model's own name for it.</param>
/// <param name="IsBuffer">True for buffers (no gradient, no optimizer state).</param>
/// <param name="DType">Element type.</param>
/// <param name="Bytes">Storage bytes.</param>
/// <param name="Owner">Id of the first node that uses it.</param>
public sealed record CapturedParameter(string Name, bool IsBuffer, ScalarType DType, long Bytes, int Owner);

/// <summary>
/// The dataflow graph of one model instance's forward(): the captured template with loops unrolled and
/// configuration branches resolved. Any subset of its nodes can be executed on its own (<see cref="ExecuteStage"/>).
/// </summary>
public sealed class CapturedGraph
{
    internal CapturedGraph(
        nn.Module model, IReadOnlyList<CapturedNode> nodes, IReadOnlyList<CapturedValue> values,
        IReadOnlyList<CapturedParameter> parameters, IReadOnlyList<int> inputs, IReadOnlyList<int> outputs)
    {
        Model = model;
        Nodes = nodes;
        Values = values;
        Parameters = parameters;
        Inputs = inputs;
        Outputs = outputs;
    }

    /// <summary>The module instance the graph was built for; its nodes execute on this instance's submodules.</summary>
    public nn.Module Model { get; }

    /// <summary>Nodes in a deterministic topological order (program order after unrolling).</summary>
    public IReadOnlyList<CapturedNode> Nodes { get; }

    public IReadOnlyList<CapturedValue> Values { get; }

    /// <summary>Parameters and buffers used by the graph, in order of first use.</summary>
    public IReadOnlyList<CapturedParameter> Parameters { get; }

    /// <summary>Values bound to forward()'s parameters, in order.</summary>
    public IReadOnlyList<int> Inputs { get; }

    /// <summary>Values forward() returns (one per element when it returns a tuple).</summary>
    public IReadOnlyList<int> Outputs { get; }

    /// <summary>
    /// Builds the graph of <paramref name="model"/>, which must be a <c>[RaNNC]</c> class. Loop trip counts and
    /// branch arms come from this instance; <c>[RaNNC]</c> submodules are inlined, other submodules are leaf nodes.
    /// </summary>
    /// <exception cref="CaptureException">The class was not captured (the errors say why) or is not <c>[RaNNC]</c>.</exception>
    public static CapturedGraph Build(nn.Module model) => GraphBuilder.Build(model);

    /// <summary>Runs every node on <paramref name="inputs"/> (forward()'s arguments) and returns the graph outputs.</summary>
    public object?[] Execute(params object?[] inputs)
    {
        if (inputs.Length != Inputs.Count)
        {
            throw new ArgumentException($"The graph takes {Inputs.Count} input(s) but {inputs.Length} were given.", nameof(inputs));
        }
        var values = new object?[Values.Count];
        for (var i = 0; i < inputs.Length; i++)
        {
            values[Inputs[i]] = inputs[i];
        }
        foreach (var node in Nodes)
        {
            node.Execute(values);
        }
        var outputs = new object?[Outputs.Count];
        for (var i = 0; i < outputs.Length; i++)
        {
            outputs[i] = values[Outputs[i]];
        }
        return outputs;
    }

    /// <summary>
    /// The stage made of <paramref name="nodeIds"/> (any subset): the values it must receive and the values it must
    /// send, i.e. those read by nodes outside it or returned by the graph.
    /// </summary>
    public GraphStage CreateStage(IEnumerable<int> nodeIds)
    {
        var members = new SortedSet<int>(nodeIds);
        if (members.Count == 0 || members.Min < 0 || members.Max >= Nodes.Count)
        {
            throw new ArgumentException("A stage needs at least one node, and node ids must be in the graph.", nameof(nodeIds));
        }
        var produced = new HashSet<int>();
        var inputs = new List<int>();
        foreach (var id in members)
        {
            foreach (var value in Nodes[id].Inputs)
            {
                if (!produced.Contains(value) && !inputs.Contains(value))
                {
                    inputs.Add(value);
                }
            }
            produced.UnionWith(Nodes[id].Outputs);
        }
        var neededOutside = new HashSet<int>(Outputs);
        for (var id = 0; id < Nodes.Count; id++)
        {
            if (!members.Contains(id))
            {
                neededOutside.UnionWith(Nodes[id].Inputs);
            }
        }
        var outputs = members.SelectMany(id => Nodes[id].Outputs).Where(neededOutside.Contains).ToList();
        return new GraphStage(members.ToList(), inputs, outputs);
    }

    /// <summary>
    /// Cuts the node sequence into contiguous stages; stage k starts at node <c>stageStarts[k]</c>
    /// (<c>stageStarts[0]</c> must be 0 and the starts must increase).
    /// </summary>
    public IReadOnlyList<GraphStage> SplitContiguous(IReadOnlyList<int> stageStarts)
    {
        if (stageStarts.Count == 0 || stageStarts[0] != 0)
        {
            throw new ArgumentException("The first stage must start at node 0.", nameof(stageStarts));
        }
        var stages = new List<GraphStage>();
        for (var k = 0; k < stageStarts.Count; k++)
        {
            var end = k + 1 < stageStarts.Count ? stageStarts[k + 1] : Nodes.Count;
            if (end <= stageStarts[k] || end > Nodes.Count)
            {
                throw new ArgumentException($"Stage starts must increase and stay below {Nodes.Count}.", nameof(stageStarts));
            }
            stages.Add(CreateStage(Enumerable.Range(stageStarts[k], end - stageStarts[k])));
        }
        return stages;
    }

    /// <summary>
    /// The values that cross a cut placed before node <paramref name="firstNodeAfterCut"/>: produced by (or input to)
    /// the part before it and read by the part after it.
    /// </summary>
    public IReadOnlyList<int> ValuesCrossingCut(int firstNodeAfterCut)
    {
        if (firstNodeAfterCut <= 0 || firstNodeAfterCut >= Nodes.Count)
        {
            throw new ArgumentOutOfRangeException(nameof(firstNodeAfterCut), "The cut must leave at least one node on each side.");
        }
        // everything the part after the cut reads but does not produce comes from before it (or is a graph input)
        return CreateStage(Enumerable.Range(firstNodeAfterCut, Nodes.Count - firstNodeAfterCut)).InputValues;
    }

    /// <summary>
    /// Runs the nodes of <paramref name="stage"/> in their own value environment, which holds only
    /// <paramref name="inputs"/> (every <see cref="GraphStage.InputValues"/> entry), and returns the stage's output values.
    /// Autograd is intact: <c>backward</c> from the outputs with received gradients reaches the parameters the stage
    /// uses and any input tensors that require gradients.
    /// </summary>
    public IReadOnlyDictionary<int, object?> ExecuteStage(GraphStage stage, IReadOnlyDictionary<int, object?> inputs)
    {
        var values = new object?[Values.Count];
        foreach (var value in stage.InputValues)
        {
            if (!inputs.TryGetValue(value, out var received))
            {
                throw new ArgumentException(
                    $"Stage input %{value} ({Values[value].Name}) was not given; the stage needs {string.Join(", ", stage.InputValues.Select(v => "%" + v))}.",
                    nameof(inputs));
            }
            values[value] = received;
        }
        foreach (var id in stage.NodeIds)
        {
            Nodes[id].Execute(values);
        }
        var outputs = new Dictionary<int, object?>(stage.OutputValues.Count);
        foreach (var value in stage.OutputValues)
        {
            outputs[value] = values[value];
        }
        return outputs;
    }

    /// <summary>Readable listing: one line per node with its inputs, outputs, parameters and source location.</summary>
    public string ToText() => GraphFormatter.ToText(this);

    /// <summary>Graphviz DOT, with one nested cluster per module path (layers, their attention and feed-forward parts).</summary>
    public string ToDot() => GraphFormatter.ToDot(this);

    /// <summary>Graphviz DOT with one cluster per stage (<paramref name="stageNodeIds"/>: each stage's node ids), nodes coloured by stage.</summary>
    public string ToDot(IReadOnlyList<IReadOnlyList<int>> stageNodeIds) => GraphFormatter.ToDot(this, stageNodeIds);
}

/// <summary>A set of nodes executed together, with the values that enter and leave it.</summary>
/// <param name="NodeIds">Node ids in execution (topological) order.</param>
/// <param name="InputValues">Values the stage reads but does not produce (graph inputs or other stages' outputs).</param>
/// <param name="OutputValues">Values the stage produces that other nodes read or that the graph returns.</param>
public sealed record GraphStage(IReadOnlyList<int> NodeIds, IReadOnlyList<int> InputValues, IReadOnlyList<int> OutputValues);

/// <summary>Thrown when a graph cannot be built for a module.</summary>
public sealed class CaptureException : Exception
{
    public CaptureException(string message)
        : base(message)
    {
    }

    public CaptureException(string message, Exception innerException)
        : base(message, innerException)
    {
    }

    public CaptureException()
    {
    }
}
