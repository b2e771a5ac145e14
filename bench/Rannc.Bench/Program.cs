using BenchmarkDotNet.Running;
using Rannc.Bench;

// TorchSharp benchmarks. Harnesses that print ratios run by name:
//   comm    point-to-point and all-reduce, in-process and MPI (it launches itself under mpiexec for the MPI part)
//   steps   training-step time: plain TorchSharp vs Rannc on 1 rank vs 2 pipeline stages [layers hidden batch]
//   zb      zero-bubble schedule vs 1F1B on a 2-stage pipeline, measured and simulated [layers hidden batch]
//   checkpoint sharded atomic checkpoint save/load vs the former gather-to-rank-0 save [layers hidden]
//   agreement  cost of the per-step agreement check of the ranks' inputs next to a training step [layers hidden batch]
//   memory  per-rank memory of the BERT sample under mpiexec (2x2, 4x1): measured vs the plan's predicted peak [layers hidden plans whole,deferred]
//   capture-overhead  forward+backward through the captured graph vs forward() directly (interleaved A/B)
// Anything else goes to BenchmarkDotNet, e.g. `-- --filter '*Capture*'`.
return args.FirstOrDefault() switch
{
    "comm" => CommunicationBenchmark.Run(args.Skip(1).ToArray()),
    "comm-mpi-rank" => CommunicationBenchmark.RunMpiRank(args.Skip(1).ToArray()),
    "steps" => TrainingStepBenchmark.Run(args.Skip(1).ToArray()),
    "zb" => ZeroBubbleBenchmark.Run(args.Skip(1).ToArray()),
    "agreement" => StepAgreementBenchmark.Run(args.Skip(1).ToArray()),
    "checkpoint" => CheckpointBenchmark.Run(args.Skip(1).ToArray()),
    "memory" => MemoryBenchmark.Run(args.Skip(1).ToArray()),
    "memory-mpi-rank" => MemoryBenchmark.RunMpiRank(args.Skip(1).ToArray()),
    "capture-overhead" => CaptureOverheadProbe.Run(args.Skip(1).ToArray()),
    _ => RunBenchmarkDotNet(args),
};

static int RunBenchmarkDotNet(string[] args)
{
    BenchmarkSwitcher.FromAssembly(typeof(CommunicationBenchmark).Assembly).Run(args);
    return 0;
}
