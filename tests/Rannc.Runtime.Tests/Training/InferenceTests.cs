using Rannc.Communication;
using Rannc.Execution;
using Rannc.Partitioner;
using Rannc.Samples;
using Rannc.Samples.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Tests.Training;

/// <summary>Inference through the pipeline: eval mode and no-grad forward give the reference's loss and leave no gradients.</summary>
public sealed class InferenceTests
{
    [Fact]
    public void EvalForward_OnTwoStages_EqualsThePlainModelsEvalLoss_AndComputesNoGradients()
    {
        SampleTask task = SampleTasks.Bert(new BertConfig(VocabularySize: 40, HiddenSize: 16, Layers: 2, Heads: 2, IntermediateSize: 24, MaxPositions: 8, DropoutProbability: 0.2),
            sequenceLength: 6, maskedPerSequence: 2);
        Tensor[] batch = task.CreateBatch(8, 0).Select(t => t.is_floating_point() ? t.to_type(ScalarType.Float64) : t).ToArray();
        nn.Module reference = SeededModels.Create(task.CreateModel, 5);
        reference.eval();
        double expected;
        using (torch.no_grad()) expected = SampleTask.Forward(reference, batch).item<double>();

        double[] losses = InProcessLauncher.Run(2, comm =>
        {
            nn.Module model = SeededModels.Create(task.CreateModel, 5);
            var optimizer = torch.optim.Adam(model.parameters());
            using var rannc = new RanncModule(model, optimizer, comm, new RanncOptions { ForcedShape = (2, 1), PlanCacheDirectory = "", Log = _ => { } });
            rannc.Eval();
            Tensor loss = rannc.forward(batch);
            Assert.False(loss.requires_grad);
            Assert.All(model.parameters(), p => Assert.Null(p.grad));
            rannc.Train();
            using (torch.no_grad()) Assert.False(rannc.forward(batch).requires_grad);
            return loss.item<double>();
        });
        foreach (double loss in losses) Assert.True(Math.Abs(loss - expected) <= 1e-9 * Math.Abs(expected), $"expected {expected:R}, got {loss:R}");
    }
}
