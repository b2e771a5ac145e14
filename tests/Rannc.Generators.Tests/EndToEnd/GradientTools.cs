using Rannc.Capture;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Generators.Tests.EndToEnd;

/// <summary>Reference and staged runs of a model, returning the loss and every parameter gradient by name.</summary>
internal static class GradientTools
{
    /// <summary>forward() called directly, then backward: the reference.</summary>
    public static (double Loss, Dictionary<string, Tensor> Gradients) RunForward(nn.Module model, object[] inputs)
    {
        model.zero_grad();
        var loss = model switch
        {
            nn.Module<Tensor, Tensor, Tensor> twoInputs => twoInputs.forward((Tensor)inputs[0], (Tensor)inputs[1]),
            nn.Module<Tensor, Tensor> oneInput => oneInput.forward((Tensor)inputs[0]),
            _ => throw new NotSupportedException(model.GetType().Name),
        };
        loss.backward();
        return (loss.item<double>(), Gradients(model));
    }

    /// <summary>The whole captured graph executed by the generated executor, then backward.</summary>
    public static (double Loss, Dictionary<string, Tensor> Gradients) RunGraph(CapturedGraph graph, object[] inputs)
    {
        graph.Model.zero_grad();
        var loss = (Tensor)graph.Execute(inputs).Single()!;
        loss.backward();
        return (loss.item<double>(), Gradients(graph.Model));
    }

    /// <summary>
    /// Runs <paramref name="stages"/> one after another the way separate ranks would: each stage gets only its boundary
    /// values, as fresh leaf tensors; backward then runs stage by stage in reverse, feeding each stage the gradients
    /// that later stages computed for its outputs.
    /// </summary>
    public static (double Loss, Dictionary<string, Tensor> Gradients) RunStaged(CapturedGraph graph, IReadOnlyList<GraphStage> stages, object[] inputs)
    {
        graph.Model.zero_grad();
        var available = new Dictionary<int, object?>();
        for (var i = 0; i < inputs.Length; i++)
        {
            available[graph.Inputs[i]] = inputs[i];
        }
        // per stage: the leaf copies it received (value id -> tensor) and what it produced
        var received = new List<Dictionary<int, Tensor>>();
        var produced = new List<IReadOnlyDictionary<int, object?>>();
        foreach (var stage in stages)
        {
            var stageInputs = new Dictionary<int, object?>();
            var leaves = new Dictionary<int, Tensor>();
            foreach (var value in stage.InputValues)
            {
                var source = available[value];
                if (source is Tensor tensor && tensor.requires_grad)
                {
                    var leaf = tensor.detach().requires_grad_(true);
                    leaves[value] = leaf;
                    stageInputs[value] = leaf;
                }
                else
                {
                    stageInputs[value] = source;
                }
            }
            var outputs = graph.ExecuteStage(stage, stageInputs);
            foreach (var (value, result) in outputs)
            {
                available[value] = result;
            }
            received.Add(leaves);
            produced.Add(outputs);
        }
        var loss = (Tensor)available[graph.Outputs.Single()]!;

        for (var s = stages.Count - 1; s >= 0; s--)
        {
            var tensors = new List<Tensor>();
            var gradients = new List<Tensor>();
            foreach (var (value, result) in produced[s])
            {
                if (result is not Tensor { requires_grad: true } tensor)
                {
                    continue;
                }
                Tensor? gradient = graph.Outputs.Contains(value) ? torch.ones_like(tensor) : null;
                for (var later = s + 1; later < stages.Count; later++)
                {
                    if (received[later].TryGetValue(value, out var leaf) && leaf.grad is { } leafGradient)
                    {
                        gradient = gradient is null ? leafGradient : gradient + leafGradient;
                    }
                }
                if (gradient is not null)
                {
                    tensors.Add(tensor);
                    gradients.Add(gradient);
                }
            }
            if (tensors.Count > 0)
            {
                torch.autograd.backward(tensors, gradients);
            }
        }
        return (loss.item<double>(), Gradients(graph.Model));
    }

    public static Dictionary<string, Tensor> Gradients(nn.Module model) =>
        model.named_parameters().ToDictionary(p => p.name, p => p.parameter.grad?.clone() ?? torch.zeros_like(p.parameter));

    /// <summary>Largest absolute difference between two gradient sets, with the parameter where it occurs.</summary>
    public static (double Difference, string Parameter) MaxDifference(Dictionary<string, Tensor> expected, Dictionary<string, Tensor> actual)
    {
        Assert.Equal(expected.Keys.Order(), actual.Keys.Order());
        var worst = (0.0, string.Empty);
        foreach (var (name, gradient) in expected)
        {
            var difference = (gradient - actual[name]).abs().max().item<double>();
            if (difference > worst.Item1 || worst.Item2.Length == 0)
            {
                worst = (difference, name);
            }
        }
        return worst;
    }

    /// <summary>Largest gradient entry, to relate differences to the gradients' scale.</summary>
    public static double MaxMagnitude(Dictionary<string, Tensor> gradients) =>
        gradients.Values.Max(g => g.abs().max().item<double>());
}
