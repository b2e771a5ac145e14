using System.Reflection;
using System.Runtime.InteropServices;
using MpiNative = MPI.Unsafe;

namespace Rannc.Communication;

/// <summary>
/// Process-wide MPI set-up. MPI.NET 1.4.0 binds to MS-MPI's <c>msmpi.dll</c> with MPICH's integer handles; on Linux
/// an MPICH-ABI library (Debian's <c>libmpich.so.12</c>) has the same handles, so the DllImport is redirected to it.
/// MPI itself is process-global (one init, one finalize), which is why this one class is static.
/// </summary>
public static class MpiEnvironment
{
    /// <summary>Names or paths an MPICH-ABI library to load instead of searching the usual names (a non-standard install).</summary>
    public const string LibraryVariable = "RANNC_MPI_LIBRARY";

    private static readonly string[] MpichAbiLibraries = ["libmpich.so.12", "libmpi.so.12", "libmpich.so"];
    private static readonly object InitLock = new();
    private static bool s_resolverInstalled;
    private static IntPtr s_library;

    /// <summary>MPI_IN_PLACE in the MPICH ABI.</summary>
    internal static readonly IntPtr InPlace = -1;

    /// <summary>MPICH's MPI_LONG_LONG (MS-MPI's MPI_LONG is 32-bit, so the 64-bit type is named explicitly).</summary>
    internal const int Int64Type = 0x4c000809;

    /// <summary>True when this process was started by an MPI launcher (mpiexec / mpirun / a PMI-based scheduler).</summary>
    public static bool IsLaunchedByMpi =>
        Has("PMI_RANK") || Has("PMI_SIZE") || Has("PMIX_RANK") || Has("MPI_LOCALNRANKS") || Has("OMPI_COMM_WORLD_SIZE");

    /// <summary>Number of ranks the launcher placed on this machine (1 when not launched by MPI).</summary>
    public static int LocalRanks =>
        int.TryParse(Environment.GetEnvironmentVariable("MPI_LOCALNRANKS"), out int n) && n > 0 ? n : 1;

    private static bool Has(string name) => !string.IsNullOrEmpty(Environment.GetEnvironmentVariable(name));

    /// <summary>
    /// The MPI world for a program (<see cref="RankLauncher"/>, <see cref="AmbientCommunicator"/>). An MPI environment
    /// that cannot work ends the process with its explanation and exit code 1: no caller can do better, and a stack
    /// trace would bury the explanation.
    /// </summary>
    internal static MpiCommunicator InitializeWorldOrExit()
    {
        try
        {
            return MpiCommunicator.InitializeWorld();
        }
        catch (MpiEnvironmentException e)
        {
            Console.Out.Flush();
            Console.Error.WriteLine($"Rannc: {e.Message}");
            Console.Error.Flush();
            Environment.Exit(1);
            throw; // Environment.Exit does not return
        }
    }

    /// <summary>Initialises MPI with MPI_THREAD_MULTIPLE (once per process) and makes errors return codes.</summary>
    /// <exception cref="MpiEnvironmentException">Open MPI's launcher, no MPICH-ABI library, or too low a thread level.</exception>
    internal static void Initialize()
    {
        lock (InitLock)
        {
            if (Has("OMPI_COMM_WORLD_SIZE"))
            {
                throw new MpiEnvironmentException(
                    "This process was started by Open MPI's mpiexec, but Rannc's MPI layer needs an MPICH-ABI library " +
                    "(MPI.NET uses MPICH handles). Install MPICH and launch with mpiexec.mpich (or mpiexec.hydra).");
            }
            if (s_library == IntPtr.Zero) s_library = LoadMpichAbiLibrary();
            InstallResolver();
            Check(MpiNative.MPI_Initialized(out int initialized), "MPI_Initialized");
            if (initialized != 0) return;
            unsafe
            {
                int argc = 0;
                byte** argv = null;
                Check(MpiNative.MPI_Init_thread(ref argc, ref argv, MpiNative.MPI_THREAD_MULTIPLE, out int provided), "MPI_Init_thread");
                if (provided < MpiNative.MPI_THREAD_MULTIPLE)
                {
                    throw new MpiEnvironmentException(
                        $"The MPI library provides thread level {provided}, but Rannc needs MPI_THREAD_MULTIPLE (3).");
                }
            }
            Check(MpiNative.MPI_Errhandler_set(MpiNative.MPI_COMM_WORLD, MpiNative.MPI_ERRORS_RETURN), "MPI_Errhandler_set");
            MpiCollectives.Bind(s_library);
            MpiWatchdog.Start(s_library);
        }
    }

    /// <summary>
    /// Loads the library named by <c>RANNC_MPI_LIBRARY</c>, or the first of the usual MPICH-ABI names, and checks
    /// that it is an MPI library and not Open MPI's (whose handles differ, so every call would be wrong).
    /// </summary>
    private static IntPtr LoadMpichAbiLibrary()
    {
        const string Install = "Install MPICH (Debian/Ubuntu: apt-get install mpich)";
        string? chosen = Environment.GetEnvironmentVariable(LibraryVariable);
        IntPtr handle;
        string name;
        if (!string.IsNullOrEmpty(chosen))
        {
            name = chosen;
            if (!NativeLibrary.TryLoad(chosen, out handle))
            {
                throw new MpiEnvironmentException(
                    $"No MPICH-ABI MPI library found: {LibraryVariable}='{chosen}' could not be loaded. " +
                    $"{Install}, or set {LibraryVariable} to the path of its libmpich.so.12.");
            }
        }
        else
        {
            name = "";
            handle = IntPtr.Zero;
            foreach (string candidate in MpichAbiLibraries)
            {
                if (!NativeLibrary.TryLoad(candidate, out handle)) continue;
                name = candidate;
                break;
            }
            if (handle == IntPtr.Zero)
            {
                throw new MpiEnvironmentException(
                    $"No MPICH-ABI MPI library found (tried {string.Join(", ", MpichAbiLibraries)}). " +
                    $"{Install}, or set {LibraryVariable} to the path of its libmpich.so.12.");
            }
        }
        if (!NativeLibrary.TryGetExport(handle, "MPI_Init_thread", out _))
            throw new MpiEnvironmentException($"'{name}' is not an MPI library (it has no MPI_Init_thread). {Install}.");
        if (NativeLibrary.TryGetExport(handle, "ompi_mpi_comm_world", out _))
        {
            throw new MpiEnvironmentException(
                $"'{name}' is Open MPI's library, but Rannc's MPI layer needs an MPICH-ABI library (MPI.NET uses MPICH " +
                $"handles). {Install} and launch with mpiexec.mpich (or mpiexec.hydra).");
        }
        return handle;
    }

    /// <param name="leaveTimeout">How long the leave notices may take (the world's deadline).</param>
    internal static void FinalizeMpi(TimeSpan leaveTimeout)
    {
        lock (InitLock)
        {
            Check(MpiNative.MPI_Finalized(out int finalized), "MPI_Finalized");
            if (finalized != 0) return;
            MpiWatchdog.AnnounceLeaving(leaveTimeout); // also withdraws the pending notice receive, which must not outlive MPI
            using var guard = new FinalizeGuard(FinalizeTimeout);
            MpiNative.MPI_Finalize();
        }
    }

    /// <summary>
    /// MPI_Finalize starts when every rank has left (the leave notices and a barrier), so it normally takes well under a
    /// second. Debian 12's MPICH 4.0.2 with UCX 1.13 over TCP sometimes never returns from it (an endpoint close stays
    /// unflushed while the peers wait in the launcher's exit barrier), which would hold the job for ever after training.
    /// </summary>
    internal static readonly TimeSpan FinalizeTimeout = TimeSpan.FromSeconds(30);

    [DllImport("libc", EntryPoint = "_exit")]
    private static extern void ExitImmediately(int status);

    /// <summary>Ends the process if MPI_Finalize does not return in time (nothing is left to do by then).</summary>
    private sealed class FinalizeGuard : IDisposable
    {
        private readonly ManualResetEventSlim _done = new();

        public FinalizeGuard(TimeSpan timeout)
        {
            var thread = new Thread(() =>
            {
                if (_done.Wait(timeout)) return;
                // Every rank's work is done and its notices are exchanged: ending here loses nothing, and the launcher
                // sees each rank exit with the code the program meant.
                Console.Error.WriteLine($"Rannc: MPI_Finalize did not return in {timeout.TotalSeconds:0} s (a known hang of MPICH 4.0 with " +
                    "UCX over TCP); the job's work is done, so this rank exits without it.");
                Console.Out.Flush();
                Console.Error.Flush();
                ExitImmediately(Environment.ExitCode);
            }) { IsBackground = true, Name = "Rannc finalize guard" };
            thread.Start();
        }

        public void Dispose() => _done.Set();
    }

    private static void InstallResolver()
    {
        if (s_resolverInstalled) return;
        NativeLibrary.SetDllImportResolver(typeof(MpiNative).Assembly, ResolveMpiLibrary);
        s_resolverInstalled = true;
    }

    /// <summary>MPI.NET's DllImports of <c>msmpi</c> go to the library <see cref="Initialize"/> loaded and checked.</summary>
    private static IntPtr ResolveMpiLibrary(string name, Assembly assembly, DllImportSearchPath? searchPath) =>
        name.StartsWith("msmpi", StringComparison.OrdinalIgnoreCase) ? s_library : IntPtr.Zero;

    /// <summary>
    /// MPI_Request_get_status: tests a request without freeing it (MPI.NET does not bind it). Returns true when done.
    /// </summary>
    internal static unsafe bool RequestIsComplete(int request)
    {
        if (request == MpiNative.MPI_REQUEST_NULL) return true;
        var getStatus = (delegate* unmanaged<int, int*, MpiNative.MPI_Status*, int>)
            NativeLibrary.GetExport(s_library, "MPI_Request_get_status");
        int flag = 0;
        MpiNative.MPI_Status status;
        Check(getStatus(request, &flag, &status), "MPI_Request_get_status");
        return flag != 0;
    }

    /// <summary>Throws a <see cref="CommunicationException"/> with MPI's own text when <paramref name="code"/> is an error.</summary>
    internal static void Check(int code, string call)
    {
        if (code == MpiNative.MPI_SUCCESS) return;
        var text = new byte[MpiNative.MPI_MAX_ERROR_STRING];
        int length = 0;
        string detail = MpiNative.MPI_Error_string(code, text, ref length) == MpiNative.MPI_SUCCESS
            ? System.Text.Encoding.ASCII.GetString(text, 0, length)
            : $"error code {code}";
        throw new CommunicationException($"{call} failed: {detail}");
    }
}
