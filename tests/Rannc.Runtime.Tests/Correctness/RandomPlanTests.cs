using Rannc.Communication;
using Rannc.Execution;
using Rannc.Samples;
using Rannc.Samples.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Tests.Correctness;

/// <summary>
/// The planner never chooses a cut the runtime cannot run: random forced plan shapes (stages, replicas, micro-batches,
/// schedule) on every sample, the zoo (its rotary model has values of every dtype and a chunk result) and a model whose chunk result (a Tensor[]) a cut may carry, each trained one step; models without
/// batch norm match plain TorchSharp, and batch-norm models never get a slice of one sample.
/// </summary>
public sealed class RandomPlanTests
{
    private const int Batch = 8;

    public static TheoryData<string, int> Cases()
    {
        var data = new TheoryData<string, int>();
        foreach (string model in new[] { "mlp", "bert", "resnet", "gpt", "chunk", "zoo-vgg", "zoo-mobilenet", "zoo-unet", "zoo-inplace", "zoo-rotary" })
        {
            for (int seed = 0; seed < 3; seed++) data.Add(model, seed);
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void RandomPlan_Runs(string model, int seed)
    {
        var random = new Random(1000 * model.Length + seed);
        int stages = random.Next(2, 5);
        var replicas = Enumerable.Range(0, stages).Select(_ => 1).ToList();
        if (stages < 4) replicas[random.Next(stages)] = 2;
        int microBatches = new[] { 1, 2, 4 }[random.Next(3)];
        string schedule = random.Next(2) == 0 ? "gpipe" : "1f1b";
        (Func<nn.Module> create, Tensor[] batch, bool batchNorm) = Model(model);
        if (batchNorm) microBatches = Math.Min(microBatches, 2); // 8 samples, 2 replicas: slices of 2

        var options = new RanncOptions
        {
            ForcedReplicas = replicas, MicroBatches = microBatches, Schedule = RanncOptions.ParseSchedule(schedule),
            PlanCacheDirectory = "", ProfileRepeats = 1, Log = _ => { },
        };
        var results = InProcessLauncher.Run(replicas.Sum(), comm =>
        {
            nn.Module net = SeededModels.Create(create, 5);
            using var rannc = new RanncModule(net, torch.optim.SGD(net.parameters(), 0.1), comm, options);
            Tensor loss = rannc.forward(batch);
            loss.backward();
            var plan = rannc.Plan!;
            int smallestSlice = Enumerable.Range(0, plan.MicroBatchCount)
                .SelectMany(m => plan.Stages.SelectMany(s => Enumerable.Range(0, s.ReplicaRanks.Count).Select(r => plan.ReplicaSlice(s.Index, r, m).Count)))
                .Min();
            return (loss.item<double>(), smallestSlice);
        }, new InProcessOptions(Timeout: TimeSpan.FromMinutes(2)));

        if (batchNorm)
        {
            Assert.All(results, r => Assert.True(r.smallestSlice >= 2, $"a batch-norm model got a slice of {r.smallestSlice} sample(s)"));
            Assert.All(results, r => Assert.True(double.IsFinite(r.Item1)));
            return;
        }
        nn.Module plain = SeededModels.Create(create, 5);
        double expected = Equivalence.Forward(plain, batch).item<double>();
        foreach (var (loss, _) in results) Equivalence.AssertClose(expected, loss, $"loss with plan [{string.Join(",", replicas)}] × {microBatches} {schedule}");
    }

    private static (Func<nn.Module> Create, Tensor[] Batch, bool BatchNorm) FromZoo(Rannc.Tests.Zoo.ZooModel model) =>
        (() => Rannc.Tests.Zoo.ZooData.Seeded(model.Create), Rannc.Tests.Zoo.ZooHarness.BatchOf(model, 0), model.BatchNorm);

    private static (Func<nn.Module> Create, Tensor[] Batch, bool BatchNorm) Model(string name)
    {
        static Tensor[] Float64(Tensor[] batch) => batch.Select(t => t.is_floating_point() ? t.to_type(ScalarType.Float64) : t).ToArray();
        switch (name)
        {
            case "mlp":
                var mlp = SampleTasks.Mlp(inputSize: 6, hiddenSize: 10, hiddenLayers: 4, classes: 3);
                return (mlp.CreateModel, Float64(mlp.CreateBatch(Batch, 0)), false);
            case "bert":
                var bert = SampleTasks.Bert(new BertConfig(40, 16, 2, 2, 24, 8, 0), sequenceLength: 6, maskedPerSequence: 2);
                return (bert.CreateModel, bert.CreateBatch(Batch, 0), false);
            case "resnet":
                var resnet = SampleTasks.ResNet(blocks: 3, baseWidth: 4, classes: 5, imageSize: 8);
                return (resnet.CreateModel, Float64(resnet.CreateBatch(Batch, 0)), true);
            case "gpt":
                Tensor[] four = TiedWeightTests.Batches(1)[0];
                return (() => new GptLanguageModel(13, 8, 2, 2, 5), [torch.cat([four[0], four[0]]), torch.cat([four[1], four[1]])], false);
            case "zoo-vgg":
                return FromZoo(Rannc.Tests.Zoo.ZooCatalog.Vgg);
            case "zoo-mobilenet":
                return FromZoo(Rannc.Tests.Zoo.ZooCatalog.MobileNet);
            case "zoo-unet":
                return FromZoo(Rannc.Tests.Zoo.ZooCatalog.UNet);
            case "zoo-inplace":
                return FromZoo(Rannc.Tests.Zoo.ZooCatalog.InPlace);
            case "zoo-rotary": // complex, Tensor[], integer, bool and 16-bit float values wherever the planner cuts
                return FromZoo(Rannc.Tests.Zoo.ZooRotaryTests.Rotary);
            default:
                using (var generator = new Generator(77))
                {
                    return (() => new ChunkAttentionNet(),
                        [torch.randn([Batch, 5, 4], ScalarType.Float64, generator: generator), torch.randint(0, 3, [Batch], ScalarType.Int64, generator: generator)], false);
                }
        }
    }
}
