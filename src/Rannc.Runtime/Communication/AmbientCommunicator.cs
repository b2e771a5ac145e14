using TorchSharp;

namespace Rannc.Communication;

/// <summary>
/// The communicator a program gets without passing one (<c>new RanncModule(model, optimizer)</c>): inside
/// <see cref="RankLauncher.Run"/> (in-process or MPI) the current rank's; in a process started by an MPI launcher
/// without <see cref="RankLauncher"/>, the MPI world (initialised on first use, finalised at process exit);
/// otherwise a single rank.
/// </summary>
public static class AmbientCommunicator
{
    // AsyncLocal rather than ThreadStatic: tasks a rank's body starts still see that rank.
    private static readonly AsyncLocal<ICommunicator?> s_current = new();
    private static readonly Lazy<ICommunicator> s_process = new(CreateProcessCommunicator, LazyThreadSafetyMode.ExecutionAndPublication);

    /// <summary>The current rank's communicator (see the class summary for where it comes from).</summary>
    public static ICommunicator Current => s_current.Value ?? s_process.Value;

    /// <summary>Makes <paramref name="communicator"/> current until the returned scope is disposed.</summary>
    internal static Scope Enter(ICommunicator communicator)
    {
        ICommunicator? previous = s_current.Value;
        s_current.Value = communicator;
        return new Scope(previous);
    }

    private static ICommunicator CreateProcessCommunicator()
    {
        TorchNatives.EnsureLoadable();
        if (!MpiEnvironment.IsLaunchedByMpi) return SingleRank();
        MpiCommunicator world = MpiEnvironment.InitializeWorldOrExit(); // Open MPI or no MPICH: message, exit code 1
        // mpiexec would leave libtorch at one thread per rank.
        torch.set_num_threads(Math.Max(1, Environment.ProcessorCount / MpiEnvironment.LocalRanks));
        AppDomain.CurrentDomain.ProcessExit += (_, _) => world.Dispose();
        return world;
    }

    private static InProcessCommunicator SingleRank()
    {
        var job = new InProcessJob(1, Watchdog.TimeoutFromEnvironment());
        return new InProcessCommunicator(new InProcessGroup(job, job.NewGroupId(), [0]), 0);
    }

    internal readonly struct Scope(ICommunicator? previous) : IDisposable
    {
        public void Dispose() => s_current.Value = previous;
    }
}
