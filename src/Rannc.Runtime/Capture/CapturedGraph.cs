using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Capture;

/// <summary>One operation of a model instance's forward pass, after loops and branches are resolved.</summary>
public sealed class CapturedNode
{
    private readonly int[] _inputs;
    private readonly int[] _outputs;
    private readonly int[] _loopIndices;
    private readonly NodeExecutor _executor;

    internal CapturedNode(
        int id, string name, NodeKind kind, string operation, string modulePath, string location,
        int[] inputs, int[] outputs, IReadOnlyList<string> parameters, IReadOnlyList<string> buffers,
        NodeExecutor executor, int[] loopIndices, bool modifiesInput, string? opaqueReason)
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
        _executor = executor;
        _loopIndices = loopIndices;
        ModifiesInput = modifiesInput;
        OpaqueReason = opaqueReason;
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

    /// <summary>
    /// Whether the node may write into its first input tensor (an in-place method such as <c>relu_</c>, a module built
    /// with <c>inplace: true</c>, or a user module whose code is not captured). Callers that must keep a tensor unchanged,
    /// or that pass an autograd leaf, give such a node a copy.
    /// </summary>
    public bool ModifiesInput { get; }

    /// <summary>
    /// For a module node whose class is neither TorchSharp's nor a captured <c>[RaNNC]</c> class: why it stays one
    /// opaque node (the partitioner cannot cut inside it); null otherwise.
    /// </summary>
    public string? OpaqueReason { get; }

    /// <summary>Runs the node; an error names the node and its source location.</summary>
    internal void Execute(object?[] values)
    {
        try
        {
            _executor.Execute(new NodeFrame(values, _inputs, _outputs, _loopIndices));
        }
        catch (Exception e) when (e is not NodeExecutionException)
        {
            throw new NodeExecutionException(this, e);
        }
    }

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
        IReadOnlyList<CapturedParameter> parameters, IReadOnlyList<int> inputs, IReadOnlyList<int> outputs,
        IReadOnlyDictionary<string, string> canonicalNames)
    {
        Model = model;
        CanonicalNames = canonicalNames;
        Nodes = nodes;
        Values = values;
        Parameters = parameters;
        Inputs = inputs;
        Outputs = outputs;
        ModifiedInPlace = nodes.Where(n => n.ModifiesInput && n.Inputs.Count > 0).Select(n => n.Inputs[0]).ToHashSet();
    }

    /// <summary>Values that some node may write into (the first input of every node with <see cref="CapturedNode.ModifiesInput"/>).</summary>
    public IReadOnlySet<int> ModifiedInPlace { get; }

    /// <summary>
    /// What to bind to value <paramref name="value"/> when <paramref name="given"/> comes from outside the nodes (a
    /// graph input, a tensor received from another stage): a copy when a node may write into it, so the caller's tensor
    /// stays unchanged and an autograd leaf is never modified in place (libtorch refuses that); the copy is
    /// differentiable, so gradients still reach the leaf. Otherwise <paramref name="given"/> itself.
    /// </summary>
    public object? BindExternal(int value, object? given) =>
        given is Tensor tensor && ModifiedInPlace.Contains(value) ? tensor.clone() : given;

    /// <summary>The module instance the graph was built for; its nodes execute on this instance's submodules.</summary>
    public nn.Module Model { get; }

    /// <summary>Nodes in a deterministic topological order (program order after unrolling).</summary>
    public IReadOnlyList<CapturedNode> Nodes { get; }

    public IReadOnlyList<CapturedValue> Values { get; }

    /// <summary>Parameters and buffers used by the graph, in order of first use.</summary>
    public IReadOnlyList<CapturedParameter> Parameters { get; }

    /// <summary>
    /// Every name in the model's <c>named_parameters()</c> and <c>named_buffers()</c>, mapped to the name the graph uses
    /// for its tensor: the first name under which that tensor is listed. A tied weight (<c>head.weight = wte.weight</c>)
    /// has two names and one graph name; every other name maps to itself.
    /// </summary>
    public IReadOnlyDictionary<string, string> CanonicalNames { get; }

    /// <summary>The graph's name for the parameter or buffer the model lists as <paramref name="name"/>.</summary>
    public string CanonicalName(string name) => CanonicalNames.TryGetValue(name, out var canonical) ? canonical : name;

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

    /// <summary>
    /// Builds the graph of <paramref name="model"/> for a first batch: branches on shapes (<c>if (seqLen &gt; 1)</c>,
    /// <c>if (mask is not null)</c>) take the arm these inputs take, found by running the graph up to the branch without
    /// gradients, and <see cref="Guards"/> record each choice. Without such branches this is <see cref="Build(nn.Module)"/>.
    /// </summary>
    /// <exception cref="CaptureException">The class was not captured (the errors say why) or is not <c>[RaNNC]</c>.</exception>
    public static CapturedGraph Build(nn.Module model, object?[] sampleInputs) => GraphBuilder.Build(model, sampleInputs);

    /// <summary>
    /// As <see cref="Build(nn.Module, object?[])"/>, taking the choices of branches and loops on shapes from
    /// <paramref name="guardChoices"/> (another rank's <see cref="Guards"/>, in order) instead of running the nodes, and
    /// recognising tensors it cannot identify by storage by their name in <paramref name="canonicalNames"/> (another rank's
    /// <see cref="CanonicalNames"/>).
    /// </summary>
    internal static CapturedGraph Build(nn.Module model, object?[] sampleInputs, IReadOnlyList<int> guardChoices,
        IReadOnlyDictionary<string, string> canonicalNames) =>
        GraphBuilder.Build(model, sampleInputs, guardChoices, canonicalNames);

    /// <summary>
    /// Per input of <see cref="Inputs"/>, how it holds the batch as declared on forward()'s parameter; tensors without a
    /// declaration hold it along dimension 0, other values (numbers, flags) are not batched.
    /// </summary>
    public IReadOnlyList<InputBatch> InputBatching { get; internal init; } = [];

    /// <summary>The branches on shapes resolved for the first batch; every execution checks that a batch takes the same arms.</summary>
    public IReadOnlyList<ShapeGuard> Guards { get; internal init; } = [];

    /// <summary>
    /// Runs one node and, when it computes the arm of a guarded branch, checks the arm before any node of the arm runs
    /// (a node of the wrong arm could fail on the new shapes with a less helpful message).
    /// </summary>
    private void ExecuteGuarded(CapturedNode node, object?[] values)
    {
        node.Execute(values);
        if (Guards.Count == 0)
        {
            return;
        }
        foreach (var guard in Guards)
        {
            if (values[guard.Value] is { } computed && Values[guard.Value].Producer == node.Id
                && Convert.ToInt32(computed, System.Globalization.CultureInfo.InvariantCulture) != guard.Choice)
            {
                throw new CaptureException(
                    $"The graph of {guard.ModuleType} was built for batches where '{guard.Description}' at {guard.Location} resolves to {guard.Choice}, "
                    + $"but this batch resolves it to {computed} (an arm index, or a loop's trip count): a shape or input it depends on changed. "
                    + "Build the graph again for these inputs, or keep their shapes fixed.");
            }
        }
    }

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
            values[Inputs[i]] = BindExternal(Inputs[i], inputs[i]);
        }
        foreach (var node in Nodes)
        {
            ExecuteGuarded(node, values);
        }
        var outputs = new object?[Outputs.Count];
        for (var i = 0; i < outputs.Length; i++)
        {
            outputs[i] = values[Outputs[i]];
        }
        return outputs;
    }

    /// <summary>Runs every node and returns every value, by value id (for analyses of the graph's values).</summary>
    internal object?[] ExecuteAll(object?[] inputs)
    {
        var values = new object?[Values.Count];
        for (var i = 0; i < inputs.Length; i++)
        {
            values[Inputs[i]] = BindExternal(Inputs[i], inputs[i]);
        }
        foreach (var node in Nodes)
        {
            node.Execute(values);
        }
        return values;
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
    /// uses and any input tensors that require gradients. The inputs are bound as given: a node may write into one of
    /// <see cref="ModifiedInPlace"/> (pass <see cref="BindExternal"/>'s result to prevent it).
    /// </summary>
    public IReadOnlyDictionary<int, object?> ExecuteStage(GraphStage stage, IReadOnlyDictionary<int, object?> inputs) =>
        ExecuteStage(stage, inputs, []);

    /// <summary>As <see cref="ExecuteStage(GraphStage, IReadOnlyDictionary{int, object?})"/>, also returning the values <paramref name="alsoReturn"/> the stage computes.</summary>
    internal IReadOnlyDictionary<int, object?> ExecuteStage(GraphStage stage, IReadOnlyDictionary<int, object?> inputs, IReadOnlyList<int> alsoReturn)
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
            ExecuteGuarded(Nodes[id], values);
        }
        var outputs = new Dictionary<int, object?>(stage.OutputValues.Count);
        foreach (var value in stage.OutputValues.Concat(alsoReturn))
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

/// <summary>
/// A branch or loop on shapes resolved when the graph was built: the arm taken (or the trip count), and the value that
/// gives it for a batch.
/// </summary>
/// <param name="ModuleType">The class whose forward() has the branch or loop.</param>
/// <param name="Description">The condition as written (<c>if (seqLen &gt; 1)</c>, <c>for (i &lt; x.size(1))</c>).</param>
/// <param name="Location">Source location of the branch or loop.</param>
/// <param name="Value">Graph value (output of a node in <see cref="CapturedGraph.Nodes"/>) holding the arm index or trip count for a batch.</param>
/// <param name="Choice">The arm index or trip count the graph contains.</param>
public sealed record ShapeGuard(string ModuleType, string Description, string Location, int Value, int Choice);

/// <summary>A set of nodes executed together, with the values that enter and leave it.</summary>
/// <param name="NodeIds">Node ids in execution (topological) order.</param>
/// <param name="InputValues">Values the stage reads but does not produce (graph inputs or other stages' outputs).</param>
/// <param name="OutputValues">Values the stage produces that other nodes read or that the graph returns.</param>
public sealed record GraphStage(IReadOnlyList<int> NodeIds, IReadOnlyList<int> InputValues, IReadOnlyList<int> OutputValues);

/// <summary>Thrown when a node of the graph fails; the message names the node and its source line.</summary>
public sealed class NodeExecutionException : Exception
{
    internal NodeExecutionException(CapturedNode node, Exception inner)
        : base($"Node '{node.Name}' ({node.Location}) failed: {FirstLine(inner.Message)}", inner)
    {
        NodeName = node.Name;
    }

    public NodeExecutionException()
    {
        NodeName = string.Empty;
    }

    public NodeExecutionException(string message)
        : base(message)
    {
        NodeName = string.Empty;
    }

    public NodeExecutionException(string message, Exception innerException)
        : base(message, innerException)
    {
        NodeName = string.Empty;
    }

    /// <summary>The failing node's name (<c>layers.1.conv1</c>).</summary>
    public string NodeName { get; }

    // libtorch appends its C++ stack to the message; the first line says what went wrong.
    private static string FirstLine(string message)
    {
        var end = message.IndexOf('\n', StringComparison.Ordinal);
        return (end < 0 ? message : message[..end]).TrimEnd();
    }
}

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
