using System.Collections.Concurrent;
using Rannc.Communication;
using Rannc.Execution;
using Rannc.Samples;
using Rannc.Samples.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Tests.Correctness;

/// <summary>The verify mode: rank 0 recomputes the step unpartitioned and compares the loss and every gradient.</summary>
public sealed class VerifyTests
{
    public static TheoryData<string, string> Samples() => new()
    {
        { "mlp", "1,1" },
        { "mlp", "2,1" },
        { "bert", "1,2" },
        { "bert", "1,1,1" },
        { "resnet", "1,1" },
        { "gpt", "1,1,1" },
    };

    [Theory]
    [MemberData(nameof(Samples))]
    public void Verify_PassesOnEverySample(string sample, string plan)
    {
        var log = new ConcurrentQueue<string>();
        Train(Task(sample), plan, new RanncOptions { VerifySteps = 2, Log = log.Enqueue });
        Assert.Contains("Rannc verify: step 0 matches the unpartitioned step.", log);
        Assert.Contains("Rannc verify: step 1 matches the unpartitioned step.", log);
    }

    [Fact]
    public void Verify_SaysWhenBatchNormSlicesCannotBeReproduced()
    {
        var log = new ConcurrentQueue<string>();
        Train(Task("resnet"), "2,1", new RanncOptions { VerifySteps = 1, Log = log.Enqueue });
        Assert.Contains(log, line => line.StartsWith("Rannc verify: step 0 not verified: batch norm with replica counts that differ", StringComparison.Ordinal));
        Assert.DoesNotContain(log, line => line.Contains("matches the unpartitioned step"));
    }

    [Fact]
    public void Verify_FailsNamingTheStageAndParameterWhoseGradientIsWrong()
    {
        var options = new RanncOptions
        {
            VerifySteps = 1,
            Log = _ => { },
            // One stage computes a gradient 1 % too large.
            PerturbGradient = (name, gradient) => name == "encoder.layers.1.feedForward.output.weight" ? gradient * 1.01 : gradient,
        };
        var failure = Assert.Throws<RankFailedException>(() => Train(Task("bert"), "1,1", options));
        string message = failure.ToString();
        // The whole message on failure: a different failure (not the verifier's) must show what it was.
        Assert.True(message.Contains("Rannc verify (step 0)", StringComparison.Ordinal), message);
        // The planner picks the cut from profiled timings, so the stage holding the node is not fixed: any stage, named.
        Assert.Matches(@"the gradient of parameter 'encoder\.layers\.1\.feedForward\.output\.weight' \(stage \d+, node encoder\.layers\.1\.feedForward\.output\)", message);
        Assert.DoesNotContain("parameter 'encoder.layers.0", message);
    }

    private static SampleTask Task(string sample) => sample switch
    {
        "mlp" => SampleTasks.Mlp(inputSize: 6, hiddenSize: 10, hiddenLayers: 3, classes: 3),
        "bert" => SampleTasks.Bert(new BertConfig(VocabularySize: 40, HiddenSize: 16, Layers: 2, Heads: 2, IntermediateSize: 24, MaxPositions: 8, DropoutProbability: 0),
            sequenceLength: 6, maskedPerSequence: 2),
        "resnet" => SampleTasks.ResNet(blocks: 2, baseWidth: 4, classes: 3, imageSize: 8),
        "gpt" => new SampleTask("gpt", () => new GptLanguageModel(13, 8, 2, 2, 5), (batch, step) => TiedWeightTests.Batches(step + 1)[step]),
        _ => throw new ArgumentException(sample),
    };

    private static void Train(SampleTask task, string plan, RanncOptions options)
    {
        options = options with { ForcedReplicas = plan.Split(',').Select(int.Parse).ToList(), PlanCacheDirectory = "", ProfileRepeats = 1, MicroBatches = 2 };
        Tensor[][] batches = Enumerable.Range(0, 2)
            .Select(step => task.CreateBatch(4, step).Select(t => t.is_floating_point() ? t.to_type(ScalarType.Float64) : t).ToArray()).ToArray();
        InProcessLauncher.Run(options.ForcedReplicas!.Sum(), comm =>
        {
            nn.Module model = SeededModels.Create(task.CreateModel, 9);
            var optimizer = torch.optim.SGD(model.parameters(), 0.05);
            using var rannc = new RanncModule(model, optimizer, comm, options);
            foreach (Tensor[] batch in batches)
            {
                optimizer.zero_grad();
                rannc.forward(batch).backward();
                optimizer.step();
            }
            return 0;
        }, new InProcessOptions(Timeout: TimeSpan.FromMinutes(2)));
    }
}
