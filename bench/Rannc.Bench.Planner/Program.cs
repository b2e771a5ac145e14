using BenchmarkDotNet.Running;

// Planner benchmarks. `dotnet run -c Release --project bench/Rannc.Bench.Planner -- --filter '*'`
BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
