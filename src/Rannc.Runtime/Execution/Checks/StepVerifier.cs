using System.Globalization;
using Rannc.Capture;
using Rannc.Communication;
using Rannc.Execution;
using Rannc.Partitioner;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Execution.Checks;

/// <summary>
/// The verify mode (<see cref="RanncOptions.VerifySteps"/>): for the first steps, rank 0 gathers the whole model's
/// parameters and the pipeline's gradients, runs the unpartitioned graph itself on the same slices, and compares the
/// loss and every parameter's gradient. A difference fails the step on every rank, naming the parameter and the
/// stage(s) that computed it. Every rank must call <see cref="Verify"/>; it costs one whole-model broadcast of
/// parameters and gradients and one unpartitioned forward and backward on rank 0 per verified step.
/// </summary>
internal sealed class StepVerifier(CapturedGraph graph, PartitionPlan plan, ParameterPlacement placement, LossCombination loss, ICommunicator world,
    InputSlicer slicer)
{
    /// <summary>Compares the step's <paramref name="pipelineLoss"/> and <paramref name="gradients"/> (graph names, for a loss of 1) with rank 0's unpartitioned step.</summary>
    /// <param name="valueOf">A copy of a parameter or buffer (graph name) as this rank holds it; zeros of its shape where it is released.</param>
    /// <param name="restore">Gives released parameters storage with the given values (rank 0 only), and returns an action that puts everything back.</param>
    /// <returns>Whether the step was verified (false when it could not be: the model does not fit rank 0, or batch norm slices differ).</returns>
    public bool Verify(long step, object?[] inputs, double pipelineLoss, IReadOnlyDictionary<string, Tensor> gradients,
        Func<string, Tensor> valueOf, Func<IReadOnlyDictionary<string, Tensor>, Action> restore, long budgetBytes, Action<string> log)
    {
        var owners = placement.Names.ToDictionary(n => n, n => plan.Stages[placement.HoldersOf(n)[0]].ReplicaRanks[0]);
        var names = graph.Parameters.Select(p => p.Name).Where(owners.ContainsKey).ToList();
        long modelBytes = graph.Parameters.Sum(p => p.Bytes);
        // Batch norm normalises over each stage's own slices; the reference reproduces them only when every stage
        // splits micro-batches the same way.
        bool batchStatistics = graph.Nodes.Any(n => n.Buffers.Any(b => b.EndsWith("running_var", StringComparison.Ordinal)));
        if (batchStatistics && plan.Stages.Select(s => s.ReplicaRanks.Count).Distinct().Count() > 1)
        {
            if (world.Rank == 0)
                log($"Rannc verify: step {step} not verified: batch norm with replica counts that differ between stages normalises over slices the unpartitioned step does not reproduce.");
            return false;
        }
        // Rank 0 needs the whole model, its gradients and their reference twice over.
        bool fits = 3 * modelBytes <= budgetBytes;
        var values = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        var pipelineGradients = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        string? verdict = null;
        using (var scope = torch.NewDisposeScope())
        {
            if (fits)
            {
                using (torch.no_grad())
                {
                    foreach (string name in names)
                    {
                        CapturedParameter info = graph.Parameters.First(p => p.Name == name);
                        Tensor value = valueOf(name);
                        world.Broadcast(value, owners[name]);
                        values[name] = value;
                        if (info.IsBuffer) continue;
                        Tensor gradient = gradients.TryGetValue(name, out Tensor? g) ? g.detach().clone() : torch.zeros_like(value);
                        world.Broadcast(gradient, owners[name]);
                        pipelineGradients[name] = gradient;
                    }
                }
                if (world.Rank == 0) verdict = Compare(step, inputs, pipelineLoss, values, pipelineGradients, restore);
            }
            else if (world.Rank == 0)
            {
                log($"Rannc verify: step {step} not verified: rank 0 would need {3 * modelBytes} bytes for the whole model, its gradients and their reference.");
            }
        }
        string?[] verdicts = world.AllGather(verdict);
        if (verdicts[0] is { } failure) throw new InvalidOperationException(failure);
        return fits;
    }

    private string? Compare(long step, object?[] inputs, double pipelineLoss, Dictionary<string, Tensor> values,
        Dictionary<string, Tensor> pipelineGradients, Func<IReadOnlyDictionary<string, Tensor>, Action> restore)
    {
        Action releaseAgain = restore(values);
        var randomState = torch.random.get_rng_state();
        try
        {
            var trained = graph.Parameters.Where(p => !p.IsBuffer && pipelineGradients.ContainsKey(p.Name)).ToList();
            var tensors = trained.Select(p => FindTensor(p.Name)).ToList();
            var referenceGradients = tensors.Select(t => torch.zeros_like(t)).ToList();
            // The slices the first stage runs, in order: batch norm normalises over each, as in the pipeline.
            var slices = Enumerable.Range(0, plan.MicroBatchCount)
                .SelectMany(m => Enumerable.Range(0, plan.Stages[0].ReplicaRanks.Count).Select(r => plan.ReplicaSlice(0, r, m))).ToList();
            var sliceLosses = new List<(double Weight, Tensor Loss)>();
            using (torch.enable_grad())
            {
                foreach (SampleRange slice in slices)
                {
                    object?[] part = slicer.Slice(inputs, slice.Start, slice.Count);
                    object?[] all = graph.ExecuteAll(part);
                    var byId = new Dictionary<int, object?>();
                    foreach (int v in loss.InputValues) byId[v] = all[v];
                    double weight = loss.SliceWeight(byId, slice.Count, graph);
                    sliceLosses.Add((weight, (Tensor)all[graph.Outputs[0]]!));
                }
                double total = loss.Rule == LossRule.Sum ? 1 : sliceLosses.Sum(s => s.Weight);
                foreach ((double weight, Tensor sliceLoss) in sliceLosses.Where(s => s.Weight != 0))
                {
                    IList<Tensor?> grads = torch.autograd.grad([sliceLoss], tensors, [torch.full_like(sliceLoss, weight / total)], allow_unused: true)!;
                    for (int i = 0; i < grads.Count; i++)
                    {
                        if (grads[i] is { IsInvalid: false } g) referenceGradients[i].add_(g);
                    }
                }
                double referenceLoss = sliceLosses.Where(s => s.Weight != 0).Sum(s => s.Weight * s.Loss.to_type(ScalarType.Float64).item<double>()) / total;
                double tolerance = tensors.Count > 0 && tensors[0].dtype == ScalarType.Float64 ? 1e-9 : 1e-4;
                var problems = new List<string>();
                if (!(Math.Abs(referenceLoss - pipelineLoss) <= tolerance * Math.Max(1e-12, Math.Abs(referenceLoss))) && !(double.IsNaN(referenceLoss) && double.IsNaN(pipelineLoss)))
                    problems.Add($"the loss is {pipelineLoss:R}, the unpartitioned step gives {referenceLoss:R}");
                double scale = referenceGradients.Select(g => g.abs().max().to_type(ScalarType.Float64).item<double>()).DefaultIfEmpty(0).Max();
                for (int i = 0; i < trained.Count; i++)
                {
                    Tensor difference = (pipelineGradients[trained[i].Name] - referenceGradients[i]).abs().max();
                    double d = difference.to_type(ScalarType.Float64).item<double>();
                    if (!(d <= tolerance * Math.Max(scale, 1e-12)))
                    {
                        string stages = string.Join(", ", placement.HoldersOf(trained[i].Name));
                        problems.Add($"the gradient of parameter '{trained[i].Name}' (stage {stages}, node {graph.Nodes[trained[i].Owner].Name}) differs by {d.ToString("e3", CultureInfo.InvariantCulture)} (largest gradient {scale.ToString("e3", CultureInfo.InvariantCulture)})");
                    }
                }
                if (problems.Count == 0) return null;
                return $"Rannc verify (step {step}): the pipeline's step differs from the unpartitioned step on rank 0:\n  " + string.Join("\n  ", problems.Take(20)) +
                    (problems.Count > 20 ? $"\n  … and {problems.Count - 20} more" : "") +
                    "\n(A model with randomness in forward, such as dropout with p > 0, cannot be verified.)";
            }
        }
        finally
        {
            torch.random.set_rng_state(randomState);
            releaseAgain();
        }
    }

    private Tensor FindTensor(string name) =>
        graph.Model.named_parameters().First(p => p.name == name).parameter;
}
