using Rannc.Communication;
using Rannc.Mpi.Worker;

// Runs one communicator scenario on this MPI rank: `mpiexec -n N dotnet Rannc.Mpi.Worker.dll <scenario>`.
// Each rank ends with a line "rannc-worker: rank R exit 0" so tests can tell which ranks finished.
if (args.Length != 1)
{
    Console.Error.WriteLine($"usage: Rannc.Mpi.Worker <scenario>; scenarios: {string.Join(", ", CommunicatorScenarios.Passing.Keys.Concat(TrainingScenarios.Passing.Keys).Concat(CommunicatorScenarios.Failing.Keys).Concat(ZooScenarios.All.Keys).Concat(CheckpointScenarios.All.Keys).Concat(WatchdogScenarios.All.Keys).Append(AmbientTraining.Scenario))}");
    return 2;
}
// This one runs without the launcher: RanncModule must find the MPI world on its own.
if (args[0] == AmbientTraining.Scenario) return AmbientTraining.RunWithoutLauncher();
if (WatchdogScenarios.All.TryGetValue(args[0], out var watched))
{
    RankLauncher.RunMpi(watched);
    return 0;
}

Action<ICommunicator> scenario = CommunicatorScenarios.Passing.TryGetValue(args[0], out var passing) ? passing
    : TrainingScenarios.Passing.TryGetValue(args[0], out var training) ? training
    : CommunicatorScenarios.Failing.TryGetValue(args[0], out var failing) ? failing.Run
    : ZooScenarios.All.TryGetValue(args[0], out var zoo) ? zoo
    : CheckpointScenarios.All.TryGetValue(args[0], out var checkpoint) ? checkpoint
    : throw new ArgumentException($"unknown scenario '{args[0]}'");

RankLauncher.RunMpi(comm =>
{
    scenario(comm);
    comm.Barrier();
    Console.WriteLine($"rannc-worker: rank {comm.Rank} exit 0");
});
return 0;
