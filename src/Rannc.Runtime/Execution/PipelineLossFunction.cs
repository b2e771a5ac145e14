using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Execution;

/// <summary>
/// The loss <see cref="RanncModule.forward"/> returns: a scalar whose <c>backward()</c> hands the pipeline's
/// gradients to the parameters. The pipeline has already run its backward passes (1F1B interleaves them with the
/// forward passes, so they cannot wait for <c>loss.backward()</c>); their gradients, computed for a loss gradient of
/// 1, are scaled by the actual gradient (loss scaling, <c>(2 * loss).backward()</c>) and added to <c>.grad</c>.
/// The function joins the autograd graph through a small anchor tensor that requires a gradient.
/// </summary>
internal sealed class PipelineLossFunction : torch.autograd.SingleTensorFunction<PipelineLossFunction>
{
    private const string ApplyKey = "apply";

    public override string Name => "RanncPipelineLoss";

    /// <param name="ctx">Autograd context.</param>
    /// <param name="vars">The anchor tensor, the loss value (double), its dtype, and the gradient callback.</param>
    public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
    {
        var anchor = (Tensor)vars[0];
        double loss = (double)vars[1];
        var dtype = (ScalarType)vars[2];
        ctx.save_data(ApplyKey, vars[3]);
        _ = anchor;
        return torch.tensor(loss, dtype: ScalarType.Float64).to_type(dtype);
    }

    public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor grad_output)
    {
        var apply = (Action<Tensor>)ctx.get_data(ApplyKey);
        apply(grad_output);
        // One entry per argument of apply: the anchor's (unused) gradient, nothing for the others.
        return [torch.zeros(Array.Empty<long>(), ScalarType.Float64), null!, null!, null!];
    }
}
