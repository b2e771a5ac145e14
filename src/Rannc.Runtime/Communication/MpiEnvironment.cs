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

    /// <summary>Initialises MPI with MPI_THREAD_MULTIPLE (once per process) and makes errors return codes.</summary>
    internal static void Initialize()
    {
        lock (InitLock)
        {
            if (Has("OMPI_COMM_WORLD_SIZE"))
            {
                throw new PlatformNotSupportedException(
                    "This process was started by Open MPI's mpiexec, but Rannc's MPI layer needs an MPICH-ABI library " +
                    "(MPI.NET uses MPICH handles). Install MPICH and launch with mpiexec.mpich (or mpiexec.hydra).");
            }
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
                    throw new CommunicationException(
                        $"The MPI library provides thread level {provided}, but Rannc needs MPI_THREAD_MULTIPLE (3).");
                }
            }
            Check(MpiNative.MPI_Errhandler_set(MpiNative.MPI_COMM_WORLD, MpiNative.MPI_ERRORS_RETURN), "MPI_Errhandler_set");
            MpiCollectives.Bind(s_library);
            MpiWatchdog.Start(s_library);
        }
    }

    internal static void FinalizeMpi()
    {
        lock (InitLock)
        {
            Check(MpiNative.MPI_Finalized(out int finalized), "MPI_Finalized");
            if (finalized != 0) return;
            MpiWatchdog.AnnounceLeaving(); // also withdraws the pending notice receive, which must not outlive MPI
            MpiNative.MPI_Finalize();
        }
    }

    private static void InstallResolver()
    {
        if (s_resolverInstalled) return;
        NativeLibrary.SetDllImportResolver(typeof(MpiNative).Assembly, ResolveMpiLibrary);
        s_resolverInstalled = true;
    }

    private static IntPtr ResolveMpiLibrary(string name, Assembly assembly, DllImportSearchPath? searchPath)
    {
        if (!name.StartsWith("msmpi", StringComparison.OrdinalIgnoreCase)) return IntPtr.Zero;
        foreach (string candidate in MpichAbiLibraries)
        {
            if (NativeLibrary.TryLoad(candidate, out IntPtr handle))
            {
                s_library = handle;
                return handle;
            }
        }
        throw new DllNotFoundException(
            $"No MPICH-ABI MPI library found (tried {string.Join(", ", MpichAbiLibraries)}). " +
            "Install MPICH (Debian/Ubuntu: apt-get install mpich).");
    }

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
