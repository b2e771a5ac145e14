namespace Rannc.Communication;

/// <summary>A transfer or collective was used inconsistently (sizes, dtypes, ranks) or failed in the transport.</summary>
public sealed class CommunicationException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>Thrown by the launcher when a rank failed; <see cref="Exception.InnerException"/> is that rank's exception.</summary>
public sealed class RankFailedException(int rank, int size, Exception inner)
    : Exception($"Rank {rank} of {size} failed: {inner.GetType().Name}: {inner.Message}", inner)
{
    public int Rank { get; } = rank;
    public int Size { get; } = size;
}

/// <summary>Thrown on a rank that called <see cref="ICommunicator.Abort"/> and on ranks stopped because another rank failed.</summary>
public sealed class JobAbortedException(string message, bool isOrigin = false) : Exception(message)
{
    /// <summary>True on the rank that called Abort; false on ranks stopped because of another rank.</summary>
    public bool IsOrigin { get; } = isOrigin;
}

/// <summary>
/// The MPI environment cannot work (Open MPI's launcher or library, no MPICH-ABI library, too low a thread level).
/// <see cref="RankLauncher"/> and <see cref="AmbientCommunicator"/> print its message and exit with code 1.
/// </summary>
public sealed class MpiEnvironmentException(string message) : Exception(message);
