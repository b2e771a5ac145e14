using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Execution;

/// <summary>
/// What <see cref="RanncModule.forward"/> returns: the loss, or the gathered output, joined to autograd so that
/// <c>backward()</c> on it reaches the pipeline. Its backward hands the incoming gradient to a callback: for a loss,
/// the pipeline's backward passes have already run (1F1B interleaves them with the forward passes) and their
/// gradients, computed for a loss gradient of 1, are scaled by it (loss scaling, <c>(2 * loss).backward()</c>); for an
/// output, the callback runs the pipeline's backward passes with it. The function joins the autograd graph through a
/// small anchor tensor that requires a gradient.
/// </summary>
internal sealed class PipelineResultFunction : torch.autograd.SingleTensorFunction<PipelineResultFunction>
{
    private const string CallbackKey = "backward";

    public override string Name => "RanncPipelineResult";

    /// <param name="ctx">Autograd context.</param>
    /// <param name="vars">The anchor tensor, the result's value (no gradient), and the backward callback.</param>
    public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
    {
        var value = (Tensor)vars[1];
        ctx.save_data(CallbackKey, vars[2]);
        return value.detach().clone();
    }

    public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor grad_output)
    {
        var callback = (Action<Tensor>)ctx.get_data(CallbackKey);
        callback(grad_output);
        // One entry per argument of apply: the anchor's (unused) gradient, nothing for the others.
        return [torch.zeros(Array.Empty<long>(), ScalarType.Float64), null!, null!];
    }
}
