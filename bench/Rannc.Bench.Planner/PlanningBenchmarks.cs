using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Engines;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Toolchains.InProcess.Emit;
using Rannc.Partitioner;

namespace Rannc.Bench.Planning;

/// <summary>BenchmarkDotNet short run of the headline planning cases: in process (no generated project to build),
/// one warm-up and five measured calls each.</summary>
[Config(typeof(ShortInProcessConfig))]
[MemoryDiagnoser]
public class PlanningBenchmarks
{
    private (Graph Graph, CostTable Costs, Cluster Cluster, PlanningOptions Options) _input;

    [Params(24, 96)]
    public int Layers { get; set; }

    [Params(8, 1024)]
    public int Devices { get; set; }

    [GlobalSetup]
    public void Setup() => _input = Scenarios.Bert(Layers, Devices, 80);

    [Benchmark]
    public PartitionPlan Plan() => Planner.Plan(_input.Graph, _input.Costs, _input.Cluster, _input.Options);

    private sealed class ShortInProcessConfig : ManualConfig
    {
        public ShortInProcessConfig() =>
            AddJob(Job.Default
                .WithStrategy(RunStrategy.Monitoring)
                .WithLaunchCount(1)
                .WithWarmupCount(1)
                .WithIterationCount(5)
                .WithToolchain(InProcessEmitToolchain.Instance));
    }
}
