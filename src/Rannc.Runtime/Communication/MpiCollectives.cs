using System.Runtime.InteropServices;

namespace Rannc.Communication;

/// <summary>
/// MPI-3 non-blocking collectives (MPI.NET binds only MPI-2), so collectives can be polled under the watchdog's
/// deadline. Handles and signatures are MPICH's ABI (integer handles).
/// </summary>
internal static unsafe class MpiCollectives
{
    public static delegate* unmanaged<IntPtr, IntPtr, int, int, int, int, int*, int> Iallreduce;
    public static delegate* unmanaged<IntPtr, int, int, int, int, int*, int> Ibcast;
    public static delegate* unmanaged<int, int*, int> Ibarrier;
    public static delegate* unmanaged<IntPtr, int, int, IntPtr, int, int, int, int*, int> Iallgather;
    public static delegate* unmanaged<IntPtr, int, int, IntPtr, int*, int*, int, int, int*, int> Iallgatherv;
    // MPI-3's MPI_Comm_split_type (comm, split_type, key, info, newcomm*): finds the ranks that share a host.
    public static delegate* unmanaged<int, int, int, int, int*, int> CommSplitType;

    /// <summary>MPICH's MPI_COMM_TYPE_SHARED and MPI_INFO_NULL.</summary>
    public const int CommTypeShared = 1;
    public const int InfoNull = 0x1c000000;

    public static void Bind(IntPtr library)
    {
        Iallreduce = (delegate* unmanaged<IntPtr, IntPtr, int, int, int, int, int*, int>)NativeLibrary.GetExport(library, "MPI_Iallreduce");
        Ibcast = (delegate* unmanaged<IntPtr, int, int, int, int, int*, int>)NativeLibrary.GetExport(library, "MPI_Ibcast");
        Ibarrier = (delegate* unmanaged<int, int*, int>)NativeLibrary.GetExport(library, "MPI_Ibarrier");
        Iallgather = (delegate* unmanaged<IntPtr, int, int, IntPtr, int, int, int, int*, int>)NativeLibrary.GetExport(library, "MPI_Iallgather");
        Iallgatherv = (delegate* unmanaged<IntPtr, int, int, IntPtr, int*, int*, int, int, int*, int>)NativeLibrary.GetExport(library, "MPI_Iallgatherv");
        CommSplitType = (delegate* unmanaged<int, int, int, int, int*, int>)NativeLibrary.GetExport(library, "MPI_Comm_split_type");
    }
}
