using System.Reflection;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Capture;

/// <summary>
/// How a <see cref="CapturedNode"/> runs. Nodes of a <c>[RaNNC]</c> class's forward() run through its generated
/// <c>switch</c>; nodes the runtime makes itself while building the graph (the children of a <c>Sequential</c>) call
/// their module directly, so no generated code is needed for them.
/// </summary>
internal abstract class NodeExecutor
{
    public abstract void Execute(NodeFrame frame);
}

/// <summary>Runs template node <paramref name="templateNodeId"/> of <paramref name="owner"/>'s generated code.</summary>
internal sealed class GeneratedNodeExecutor(ICapturedModule owner, int templateNodeId) : NodeExecutor
{
    public override void Execute(NodeFrame frame) => owner.ExecuteNode(templateNodeId, frame);
}

/// <summary>Calls a one-tensor module (a child of a <c>Sequential</c>) as the <c>Sequential</c> itself would.</summary>
internal sealed class ModuleCallExecutor(nn.Module<Tensor, Tensor> module) : NodeExecutor
{
    // call() rather than forward(): it runs the module's hooks, as Sequential.forward does for its children.
    public override void Execute(NodeFrame frame) => frame.SetOutput(0, module.call(frame.Input<Tensor>(0)));
}

/// <summary>What the graph builder knows about modules and operations that may change their input tensors.</summary>
internal static class InPlace
{
    /// <summary>
    /// Whether calling <paramref name="module"/> may write into its input: TorchSharp's activations built with
    /// <c>inplace: true</c> (they expose an <c>inplace</c> property), and any module whose code is not TorchSharp's,
    /// since nothing tells what it does.
    /// </summary>
    public static bool ModuleMayModifyInput(nn.Module module)
    {
        if (!IsTorchSharpType(module.GetType())) return true;
        PropertyInfo? property = module.GetType().GetProperty("inplace", BindingFlags.Public | BindingFlags.Instance);
        return property?.PropertyType == typeof(bool) && (bool)property.GetValue(module)!;
    }

    /// <summary>Tensor methods whose name ends in one underscore (<c>relu_</c>, <c>add_</c>) write into their receiver.</summary>
    public static bool IsInPlaceMethod(string operation) =>
        operation.Length > 1 && operation[^1] == '_' && operation[^2] != '_';

    public static bool IsTorchSharpType(Type type) => type.Assembly == typeof(nn.Module).Assembly;
}
