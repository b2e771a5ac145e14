using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Toolchains.InProcess.Emit;
using Rannc.Capture;
using Rannc.Samples.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Bench;

/// <summary>
/// Overhead of running a model through its captured graph (generated switch executor, value array) instead of calling
/// forward() directly: forward + backward of the BERT sample, and of a tiny MLP where per-node overhead is most visible.
/// Run: <c>dotnet run -c Release --project bench/Rannc.Bench -- --filter '*CaptureBenchmarks*'</c>.
/// </summary>
[Config(typeof(CaptureBenchmarkConfig))]
[GroupBenchmarksBy(BenchmarkLogicalGroupRule.ByCategory)]
[CategoriesColumn]
public class CaptureBenchmarks
{
    private static readonly BertConfig s_bert = new(
        VocabularySize: 2000, HiddenSize: 256, Layers: 4, Heads: 4, IntermediateSize: 1024, MaxPositions: 128, DropoutProbability: 0.1);

    private BertForMaskedLM _bert = null!;
    private CapturedGraph _bertGraph = null!;
    private Tensor _ids = null!;
    private Tensor _labels = null!;
    private Mlp _mlp = null!;
    private CapturedGraph _mlpGraph = null!;
    private Tensor _mlpInput = null!;
    private Tensor _mlpLabels = null!;

    [GlobalSetup]
    public void Setup()
    {
        torch.manual_seed(0);
        _bert = new BertForMaskedLM(s_bert);
        _bertGraph = CapturedGraph.Build(_bert);
        // batch 8, sequence 64: a typical micro-batch for a model of this size on CPU
        _ids = torch.randint(s_bert.VocabularySize, [8, 64], dtype: ScalarType.Int64).DetachFromDisposeScope();
        _labels = torch.randint(s_bert.VocabularySize, [8, 64], dtype: ScalarType.Int64).DetachFromDisposeScope();
        _mlp = new Mlp(inputSize: 16, hiddenSize: 16, hiddenLayers: 8, classes: 4);
        _mlpGraph = CapturedGraph.Build(_mlp);
        _mlpInput = torch.randn([4, 16]).DetachFromDisposeScope();
        _mlpLabels = torch.randint(4, [4], dtype: ScalarType.Int64).DetachFromDisposeScope();
    }

    /// <summary>In process (the natives are loaded once), 15 iterations of 4 calls each.</summary>
    private sealed class CaptureBenchmarkConfig : ManualConfig
    {
        public CaptureBenchmarkConfig() =>
            AddJob(Job.Default.WithToolchain(InProcessEmitToolchain.Instance)
                .WithLaunchCount(1).WithWarmupCount(2).WithIterationCount(15)
                // a fixed count keeps every benchmark under the in-process time limit (the pilot picks 2048 calls of the MLP)
                .WithInvocationCount(4).WithUnrollFactor(1));
    }

    [Benchmark(Baseline = true, Description = "BERT forward()+backward")]
    [BenchmarkCategory("Bert")]
    public double BertForwardDirect()
    {
        using var scope = torch.NewDisposeScope();
        _bert.zero_grad();
        var loss = _bert.forward(_ids, _labels);
        loss.backward();
        return loss.item<float>();
    }

    [Benchmark(Description = "BERT captured graph+backward")]
    [BenchmarkCategory("Bert")]
    public double BertForwardGraph()
    {
        using var scope = torch.NewDisposeScope();
        _bert.zero_grad();
        var loss = (Tensor)_bertGraph.Execute(_ids, _labels)[0]!;
        loss.backward();
        return loss.item<float>();
    }

    [Benchmark(Baseline = true, Description = "BERT forward() only, no grad")]
    [BenchmarkCategory("BertNoGrad")]
    public double BertForwardOnlyDirect()
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        return _bert.forward(_ids, _labels).item<float>();
    }

    [Benchmark(Description = "BERT captured graph only, no grad")]
    [BenchmarkCategory("BertNoGrad")]
    public double BertForwardOnlyGraph()
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        return ((Tensor)_bertGraph.Execute(_ids, _labels)[0]!).item<float>();
    }

    [Benchmark(Baseline = true, Description = "tiny MLP forward()+backward")]
    [BenchmarkCategory("Mlp")]
    public double MlpForwardDirect()
    {
        using var scope = torch.NewDisposeScope();
        _mlp.zero_grad();
        var loss = _mlp.forward(_mlpInput, _mlpLabels);
        loss.backward();
        return loss.item<float>();
    }

    [Benchmark(Description = "tiny MLP captured graph+backward")]
    [BenchmarkCategory("Mlp")]
    public double MlpForwardGraph()
    {
        using var scope = torch.NewDisposeScope();
        _mlp.zero_grad();
        var loss = (Tensor)_mlpGraph.Execute(_mlpInput, _mlpLabels)[0]!;
        loss.backward();
        return loss.item<float>();
    }
}
