using BenchmarkDotNet.Running;

// TorchSharp benchmarks. Harnesses that print ratios run by name (`-- comm`); anything else goes to BenchmarkDotNet
// (`-- --filter '*Executor*'`).
BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
