using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Execution.Memory;

/// <summary>
/// Frees the storage of parameters that other ranks own (every rank builds the whole model, but trains only its
/// stage's part), remembering their shapes so whole-model operations (state gathering, checkpoints) can put them
/// back for a moment. The parameter objects stay, so the user's optimizer and module keep working: they simply
/// have no gradient here.
/// </summary>
internal sealed class ParameterResidency
{
    private readonly Dictionary<string, (Tensor Parameter, long[] Shape, ScalarType DType)> _released = [];

    public bool IsReleased(string name) => _released.ContainsKey(name);

    /// <summary>The shape the released parameter had.</summary>
    public long[] ShapeOf(string name) => _released[name].Shape;

    /// <summary>A zero tensor of the shape and dtype the released parameter had.</summary>
    public Tensor Zeros(string name)
    {
        var (_, shape, dtype) = _released[name];
        return torch.zeros(shape, dtype);
    }

    public void Release(IEnumerable<(string Name, Tensor Parameter)> parameters)
    {
        foreach ((string name, Tensor parameter) in parameters)
        {
            // A parameter adopted already empty (deferred construction) keeps the shape it was adopted with.
            _released.TryAdd(name, (parameter, parameter.shape, parameter.dtype));
        }
        ReleaseAgain();
    }

    /// <summary>
    /// Takes a parameter that never had storage here (deferred construction: another rank's stage) as released, with the
    /// shape and dtype it has in the model.
    /// </summary>
    public void Adopt(string name, Tensor emptyParameter, long[] shape, ScalarType dtype) => _released[name] = (emptyParameter, shape, dtype);

    /// <summary>Gives the released parameters their storage back, with <paramref name="values"/> or zeros.</summary>
    public void RestoreAll(IReadOnlyDictionary<string, Tensor>? values)
    {
        using var noGrad = torch.no_grad();
        foreach ((string name, (Tensor parameter, long[] shape, ScalarType dtype)) in _released)
        {
            parameter.set_(values is not null && values.TryGetValue(name, out Tensor? value) ? value.clone() : torch.zeros(shape, dtype));
        }
    }

    /// <summary>Frees the storage of every released parameter (again).</summary>
    public void ReleaseAgain()
    {
        using var noGrad = torch.no_grad();
        foreach ((Tensor parameter, _, ScalarType dtype) in _released.Values)
        {
            parameter.set_(torch.empty(0, dtype));
        }
    }
}
