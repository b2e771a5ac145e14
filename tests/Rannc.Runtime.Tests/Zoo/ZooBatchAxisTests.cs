using Rannc.Capture;
using Rannc.Communication;
using Rannc.Execution;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Tests.Zoo;

/// <summary>
/// Where forward()'s arguments hold the batch: declared on parameters (the Transformer and text classifier of
/// <see cref="ZooTests"/>), given as an option, or refused with a message that says how to declare it.
/// </summary>
public sealed class ZooBatchAxisTests
{
    [Theory]
    [InlineData("1,1", "encoder.2", "gpipe", "sgd")]
    [InlineData("2,2", "encoder.1", "1f1b", "adam")]
    public void InputBatchingOption_TrainsAnUnannotatedSequenceFirstModelLikePlainTorchSharp(string plan, string cut, string schedule, string optimizer)
    {
        var batching = new Dictionary<string, InputBatch> { ["x"] = InputBatch.Along(1) };
        ZooHarness.AssertMatchesReference(ZooCatalog.SequenceFirst, new ZooPlan(plan.Split(',').Select(int.Parse).ToList(), [cut]), schedule, optimizer, batching);
    }

    [Fact]
    public void UndeclaredSequenceFirstInput_FailsSayingHowToDeclareIt()
    {
        ArgumentException error = Assert.Throws<ArgumentException>(() => TrainOneStep(ZooCatalog.SequenceFirst, batching: null));
        Assert.Contains("'x' has 7 along dimension 0", error.Message);
        Assert.Contains("'labels' has 8 along dimension 0", error.Message);
        Assert.Contains("[Batch(1)]", error.Message);
        Assert.Contains("[NotBatched]", error.Message);
        Assert.Contains("RanncOptions.InputBatching", error.Message);
    }

    [Fact]
    public void InputBatchingOption_NamingNoParameter_Fails()
    {
        var batching = new Dictionary<string, InputBatch> { ["source"] = InputBatch.Along(1) };
        ArgumentException error = Assert.Throws<ArgumentException>(() => TrainOneStep(ZooCatalog.SequenceFirst, batching));
        Assert.Contains("names 'source'", error.Message);
        Assert.Contains("x, labels", error.Message);
    }

    [Fact]
    public void DeclaredAttributes_ReachTheCapturedGraph()
    {
        CapturedGraph transformer = CapturedGraph.Build(ZooHarness.CreateSeeded(ZooCatalog.Transformer));
        Assert.Equal([InputBatch.Along(1), InputBatch.Along(1), InputBatch.NotBatched, InputBatch.Along(1)], transformer.InputBatching);
        CapturedGraph text = CapturedGraph.Build(ZooHarness.CreateSeeded(ZooCatalog.TextClassifier));
        Assert.Equal([InputBatch.Along(0), InputBatch.OffsetsOf("tokens"), InputBatch.Along(0)], text.InputBatching);
    }

    [Fact]
    public void Offsets_SliceTheFlatInputAndAreRebased()
    {
        CapturedGraph graph = CapturedGraph.Build(ZooHarness.CreateSeeded(ZooCatalog.TextClassifier));
        var slicer = new InputSlicer(graph);
        Tensor tokens = torch.arange(10L);
        Tensor offsets = torch.tensor(new long[] { 0, 3, 4, 8 });
        Tensor labels = torch.tensor(new long[] { 1, 2, 3, 0 });
        object?[] batch = [tokens, offsets, labels];
        Assert.Equal(4, slicer.BatchSize(batch));
        object?[] middle = slicer.Slice(batch, 1, 2);
        Assert.Equal(new long[] { 3, 4, 5, 6, 7 }, ((Tensor)middle[0]!).data<long>().ToArray());
        Assert.Equal(new long[] { 0, 1 }, ((Tensor)middle[1]!).data<long>().ToArray());
        Assert.Equal(new long[] { 2, 3 }, ((Tensor)middle[2]!).data<long>().ToArray());
        object?[] last = slicer.Slice(batch, 3, 1);
        Assert.Equal(new long[] { 8, 9 }, ((Tensor)last[0]!).data<long>().ToArray());
        Assert.Equal(new long[] { 0 }, ((Tensor)last[1]!).data<long>().ToArray());
    }

    [Theory]
    [InlineData(new long[] { 1, 3, 4, 8 }, "its first offset is not 0")]
    [InlineData(new long[] { 0, 5, 4, 8 }, "it decreases")]
    [InlineData(new long[] { 0, 3, 4, 11 }, "past the end of 'tokens'")]
    public void BadOffsets_AreRefusedNamingTheProblem(long[] offsets, string problem)
    {
        var slicer = new InputSlicer(CapturedGraph.Build(ZooHarness.CreateSeeded(ZooCatalog.TextClassifier)));
        object?[] batch = [torch.arange(10L), torch.tensor(offsets), torch.tensor(new long[] { 1, 2, 3, 0 })];
        ArgumentException error = Assert.Throws<ArgumentException>(() => slicer.BatchSize(batch));
        Assert.Contains("'offsets' is declared as offsets into 'tokens'", error.Message);
        Assert.Contains(problem, error.Message);
    }

    /// <summary>One training step of <paramref name="zoo"/> on 2 in-process ranks; the first rank's exception is rethrown.</summary>
    private static void TrainOneStep(ZooModel zoo, IReadOnlyDictionary<string, InputBatch>? batching)
    {
        Tensor[] batch = ZooHarness.BatchOf(zoo, 0);
        var options = new RanncOptions { ForcedReplicas = [1, 1], PlanCacheDirectory = "", ProfileRepeats = 1, InputBatching = batching, Log = _ => { } };
        try
        {
            InProcessLauncher.Run(2, comm =>
            {
                nn.Module model = ZooHarness.CreateSeeded(zoo);
                var optimizer = torch.optim.SGD(model.parameters(), learningRate: 0.1);
                using var rannc = new RanncModule(model, optimizer, comm, options);
                rannc.forward(batch).backward();
                return 0;
            }, new InProcessOptions(Timeout: TimeSpan.FromMinutes(2)));
        }
        catch (RankFailedException e) when (e.InnerException is not null)
        {
            throw e.InnerException;
        }
    }
}
