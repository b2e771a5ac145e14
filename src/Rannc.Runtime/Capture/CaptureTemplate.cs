namespace Rannc.Capture;

/// <summary>What a captured operation is, as the generator recognised it.</summary>
public enum NodeKind
{
    /// <summary>A call of a submodule (<c>fc1.forward(x)</c>); a leaf that owns the submodule's parameters and buffers.</summary>
    Module,
    /// <summary>A static TorchSharp function (<c>torch.matmul</c>, <c>functional.gelu</c>) or a pure <c>System.Math</c> function.</summary>
    Function,
    /// <summary>A method or property of a tensor or another TorchSharp value (<c>x.view(...)</c>, <c>x.shape</c>).</summary>
    TensorMethod,
    /// <summary>A C# operator with a graph value operand (<c>a + b</c>, <c>-x</c>, <c>n * 2</c>).</summary>
    Operator,
    /// <summary>A read of a parameter or buffer field of the module (<c>this.bias</c>).</summary>
    Attribute,
    /// <summary>A value that does not depend on the inputs, materialised because a submodule call needs it as an argument.</summary>
    Constant,
    /// <summary>A conversion or another expression over graph values that is not a call (<c>(int)n</c>, <c>shape[0]</c>).</summary>
    Expression,
}

/// <summary>One element of a template body: a node, a loop or a configuration branch.</summary>
public abstract record TemplateStep;

/// <summary>
/// One operation of <c>forward()</c> as captured at build time. <see cref="Inputs"/> and <see cref="Outputs"/> are
/// template value ids; a call that returns a tuple has one output per tuple element.
/// </summary>
/// <param name="Id">Index used by <see cref="ICapturedModule.ExecuteNode"/> and <see cref="ICapturedModule.ResolveTarget"/>.</param>
/// <param name="Kind">What the operation is.</param>
/// <param name="Target">Readable receiver or function (<c>fc1</c>, <c>layers[i]</c>, <c>torch.nn.functional</c>).</param>
/// <param name="Operation">Method, property or operator name (<c>forward</c>, <c>matmul</c>, <c>op_Addition</c>).</param>
/// <param name="Inputs">Template values the operation reads.</param>
/// <param name="Outputs">Template values the operation writes.</param>
/// <param name="Location">Source location, <c>File.cs(line,column)</c>.</param>
/// <param name="InPlace">
/// True for an in-place tensor method (<c>x.add_(y)</c>, <c>relu_()</c>): the output is the first input, modified, so
/// running the node again, or on a value another node still reads, changes what that reader sees.
/// </param>
public sealed record TemplateNode(
    int Id, NodeKind Kind, string Target, string Operation, int[] Inputs, int[] Outputs, string Location, bool InPlace = false) : TemplateStep;

/// <summary>
/// A loop whose trip count is known only from the module instance (<c>foreach</c> over a <c>ModuleList</c>,
/// <c>for</c> up to a field). Iteration 0 reads <see cref="CarriedIn"/> as <see cref="BodyIn"/>; iteration k+1 reads
/// iteration k's <see cref="BodyOut"/>; after the last iteration <see cref="Results"/> take the last values
/// (or <see cref="CarriedIn"/> when the loop runs zero times). A loop bounded by shapes (<c>i &lt; x.size(1)</c>) has a
/// <see cref="Count"/>: the template value, computed by an earlier node, that holds the trip count for a batch; the graph
/// builder reads it from the first batch and guards it like the arm of a branch on shapes.
/// </summary>
public sealed record TemplateLoop(
    int Id, string Description, string Location, int[] CarriedIn, int[] BodyIn, TemplateStep[] Body, int[] BodyOut, int[] Results,
    int Count = -1)
    : TemplateStep
{
    /// <summary>True when the trip count depends on shapes of the inputs rather than on the instance.</summary>
    public bool DependsOnShapes => Count >= 0;
}

/// <summary>
/// An <c>if</c>, <c>switch</c> or <c>?:</c> on configuration. The arm is chosen per instance by
/// <see cref="ICapturedModule.SelectBranch"/> when the graph is built; <see cref="Results"/> take the chosen arm's outputs.
/// A branch on shapes (<c>if (seqLen &gt; 1)</c>, <c>if (mask is not null)</c>) has a <see cref="Selector"/>: the template
/// value, computed by an earlier node from shapes only, that holds the arm index. The graph builder evaluates it on the
/// first batch and the graph keeps a <see cref="ShapeGuard"/> so that later batches are checked against that choice.
/// </summary>
public sealed record TemplateBranch(int Id, string Description, string Location, TemplateArm[] Arms, int[] Results, int Selector = -1)
    : TemplateStep
{
    /// <summary>True when the arm depends on shapes of the inputs rather than on the instance's configuration.</summary>
    public bool DependsOnShapes => Selector >= 0;
}

/// <summary>One arm of a <see cref="TemplateBranch"/>: its body and the values it leaves in the branch's results.</summary>
public sealed record TemplateArm(TemplateStep[] Body, int[] Outputs);

/// <summary>How a template value is carried at run time.</summary>
public enum ValueKind
{
    /// <summary>A <c>torch.Tensor</c>.</summary>
    Tensor,
    /// <summary>A number or boolean (often derived from a shape: <c>x.size(-1)</c>).</summary>
    Scalar,
    /// <summary>Anything else (<c>long[]</c> shapes, dtypes, devices).</summary>
    Other,
}

/// <summary>A value of the template (one SSA name of <c>forward()</c>).</summary>
/// <param name="Id">Index in <see cref="CaptureTemplate.Values"/>.</param>
/// <param name="Name">The C# name it came from (a parameter, local or operation).</param>
/// <param name="TypeName">Its C# type.</param>
/// <param name="Kind">How it is carried.</param>
public sealed record TemplateValue(int Id, string Name, string TypeName, ValueKind Kind);

/// <summary>
/// The dataflow template of one <c>[RaNNC]</c> class's <c>forward()</c>, emitted by the generator. It is independent of
/// any instance: loops and branches are resolved by <see cref="CapturedGraph.Build"/> for a concrete module.
/// </summary>
/// <param name="ModuleType">Full name of the captured class.</param>
/// <param name="Values">All template values.</param>
/// <param name="Inputs">Values bound to <c>forward()</c>'s parameters, in order.</param>
/// <param name="Outputs">Values returned (one per tuple element when <c>forward()</c> returns a tuple).</param>
/// <param name="Body">The steps of <c>forward()</c> in program order.</param>
/// <param name="Errors">Why the class could not be captured (empty when it was); each names a RANNC diagnostic.</param>
/// <param name="InputBatching">
/// Per input, how it holds the batch as declared on its parameter (<c>[Batch(1)]</c>, <c>[NotBatched]</c>,
/// <c>[OffsetsOf("tokens")]</c>); null (or a null entry) where nothing was declared.
/// </param>
public sealed record CaptureTemplate(
    string ModuleType, TemplateValue[] Values, int[] Inputs, int[] Outputs, TemplateStep[] Body, string[] Errors,
    InputBatch?[]? InputBatching = null)
{
    /// <summary>True when <c>forward()</c> was captured; otherwise <see cref="Errors"/> says why not.</summary>
    public bool IsCaptured => Errors.Length == 0;

    /// <summary>The template of a class whose <c>forward()</c> could not be captured.</summary>
    public static CaptureTemplate Failed(string moduleType, string[] errors) => new(moduleType, [], [], [], [], errors);
}
