using System.Reflection;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Rannc.Execution.Memory;

/// <summary>
/// Frees the optimizer state that the user's optimizer holds for parameters other ranks own. TorchSharp's managed
/// optimizers (<see cref="OptimizerHelper"/>) keep one <see cref="OptimizerState"/> per parameter, its tensors in public
/// fields: Adam allocates its moments (<c>exp_avg</c>, <c>exp_avg_sq</c>) as zeros of the parameter's shape when it is
/// constructed, SGD its momentum buffer at the first step with a gradient. A released parameter never gets a gradient
/// here, so its state is never read or written by <c>step()</c>; its tensors give up their storage, and get it back
/// (as zeros of the shape they had) only when the whole model's state is asked for (<see cref="RestoreAll"/>).
/// </summary>
/// <remarks>
/// The state objects stay in the optimizer, so <c>state_dict()</c> keeps its order and length (checkpoints match
/// states to parameters by position in it). Scalar state (Adam's step count) is a plain field and stays: 8 bytes.
/// </remarks>
internal sealed class OptimizerStateResidency
{
    private readonly List<(Tensor Tensor, long[] Shape, ScalarType DType)> _released = [];
    private readonly HashSet<OptimizerState> _releasedStates = [];

    /// <summary>Whether <paramref name="state"/> is the state of a released parameter.</summary>
    public bool IsReleased(OptimizerState state) => _releasedStates.Contains(state);

    /// <summary>Bytes the released state held.</summary>
    public long ReleasedBytes => _released.Sum(r => r.Shape.Aggregate(1L, (a, b) => a * b) * r.Tensor.ElementSize);

    /// <summary>
    /// Frees the state tensors of the <paramref name="released"/> parameters (by handle) in <paramref name="optimizer"/>.
    /// Optimizers that are not TorchSharp's managed kind are left as they are.
    /// </summary>
    public void Release(optim.Optimizer optimizer, IEnumerable<Tensor> released)
    {
        if (optimizer is not OptimizerHelper helper) return;
        var handles = released.Select(p => p.Handle).ToHashSet();
        List<OptimizerState> states = helper.state_dict().State;
        var parameters = helper.parameters().ToList();
        using var noGrad = torch.no_grad();
        for (int i = 0; i < parameters.Count; i++)
        {
            if (!handles.Contains(parameters[i].Handle) || !_releasedStates.Add(states[i])) continue;
            foreach (Tensor tensor in TensorsOf(states[i]))
            {
                _released.Add((tensor, tensor.shape, tensor.dtype));
                tensor.set_(torch.empty(0, tensor.dtype));
            }
        }
    }

    /// <summary>
    /// Gives the released state tensors their storage back as zeros of the shape they had (so that loading another
    /// rank's state into them passes TorchSharp's shape check) and forgets them: from now on they are ordinary state.
    /// </summary>
    public void RestoreAll()
    {
        using var noGrad = torch.no_grad();
        foreach ((Tensor tensor, long[] shape, ScalarType dtype) in _released) tensor.set_(torch.zeros(shape, dtype));
        _released.Clear();
        _releasedStates.Clear();
    }

    /// <summary>
    /// The state's tensors: the public <see cref="Tensor"/> fields of TorchSharp's state classes (<c>Adam.State</c>,
    /// <c>SGD.State</c>, …). Reflection, because these classes have no common accessor for their tensors.
    /// </summary>
    public static IEnumerable<Tensor> TensorsOf(OptimizerState state) =>
        state.GetType().GetFields(BindingFlags.Public | BindingFlags.Instance)
            .Where(f => f.FieldType == typeof(Tensor))
            .Select(f => f.GetValue(state) as Tensor)
            .Where(t => t is not null && !t.IsInvalid)
            .Select(t => t!);
}
