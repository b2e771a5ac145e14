using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Tests;

/// <summary>The training loop every equivalence test runs, plain or through Rannc: zero_grad, forward, backward, step.</summary>
internal static class TrainingLoop
{
    /// <summary>Trains one step per batch; returns the per-step losses and the gradients of the last step, by parameter name.</summary>
    public static (double[] Losses, Dictionary<string, Tensor> LastGradients) Run(
        nn.Module model, optim.Optimizer optimizer, Func<int, Tensor> lossOfStep, int steps)
    {
        var losses = new double[steps];
        var gradients = new Dictionary<string, Tensor>();
        for (int step = 0; step < steps; step++)
        {
            optimizer.zero_grad();
            Tensor loss = lossOfStep(step);
            loss.backward();
            losses[step] = loss.item<double>();
            if (step == steps - 1) gradients = Gradients(model);
            optimizer.step();
        }
        return (losses, gradients);
    }

    /// <summary>The gradients the parameters hold now (those without one are left out).</summary>
    public static Dictionary<string, Tensor> Gradients(nn.Module model) =>
        model.named_parameters().Where(p => p.parameter.grad is not null).ToDictionary(p => p.name, p => p.parameter.grad!.detach().clone());
}
