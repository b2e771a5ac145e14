using TorchSharp;

namespace Rannc.Communication;

/// <summary>
/// Runs a training function on every rank (SPMD): under an MPI launcher (<c>mpiexec -n N</c>) each process is one
/// rank; otherwise <c>inProcessRanks</c> threads of this process are the ranks. Programs call this once from Main.
/// </summary>
public static class RankLauncher
{
    public static void Run(int inProcessRanks, Action<ICommunicator> body, InProcessOptions? inProcessOptions = null)
    {
        if (MpiEnvironment.IsLaunchedByMpi) RunMpi(body);
        else InProcessLauncher.Run(inProcessRanks, body, inProcessOptions);
    }

    /// <summary>
    /// Runs <paramref name="body"/> as this process's MPI rank (also <see cref="AmbientCommunicator.Current"/> while it
    /// runs). If it throws, the rank prints its exception (with its rank) to stderr and aborts the whole MPI job, so the
    /// launcher exits non-zero within seconds instead of leaving the other ranks blocked. An MPI environment that
    /// cannot work (Open MPI, no MPICH) ends the process with its explanation and exit code 1. Sets libtorch's thread count to the cores per local rank (mpiexec would make it 1).
    /// </summary>
    public static void RunMpi(Action<ICommunicator> body, int? torchThreads = null)
    {
        ArgumentNullException.ThrowIfNull(body);
        TorchNatives.EnsureLoadable();
        MpiCommunicator world = MpiEnvironment.InitializeWorldOrExit();
        torch.set_num_threads(torchThreads ?? Math.Max(1, Environment.ProcessorCount / MpiEnvironment.LocalRanks));
        try
        {
            using var ambient = AmbientCommunicator.Enter(world);
            body(world);
        }
        catch (Exception e)
        {
            Console.Out.Flush();
            world.Abort($"rank {world.Rank} of {world.Size} failed: {e}");
        }
        world.Dispose();
    }
}
