using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Engines;
using Rannc.Partitioner;

namespace Rannc.Bench.Planning;

/// <summary>BenchmarkDotNet short run of the headline planning cases, in process (no generated project to build):
/// one warm-up and five measured calls each.</summary>
[SimpleJob(RunStrategy.Monitoring, launchCount: 1, warmupCount: 1, iterationCount: 5)]
[InProcess]
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
}
