using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Communication;

/// <summary>How <see cref="ICommunicator.AllReduce(Tensor, ReduceOp)"/> combines the ranks' tensors.</summary>
public enum ReduceOp
{
    Sum,
    /// <summary>Sum divided by the group size (floating-point tensors only).</summary>
    Average,
    Max,
}

/// <summary>A transfer started by <see cref="ICommunicator.StartSend"/> or <see cref="ICommunicator.StartReceive"/>.</summary>
/// <remarks>The tensor passed to the transfer must stay alive and unmodified until <see cref="Wait"/> returns.</remarks>
public interface ICommRequest
{
    /// <summary>True once the transfer has finished (successfully or not); never blocks.</summary>
    bool IsCompleted { get; }

    /// <summary>Blocks until the transfer has finished; throws if it failed (e.g. a size or dtype mismatch).</summary>
    void Wait();
}

/// <summary>
/// A group of ranks that exchange tensors. Every runtime part talks to other ranks only through this interface;
/// implementations: <see cref="InProcessCommunicator"/> (ranks are threads of one process) and
/// <see cref="MpiCommunicator"/> (ranks are processes started by an MPICH launcher).
/// </summary>
/// <remarks>
/// Tensors must be contiguous CPU tensors of a supported dtype (<see cref="TensorBuffers.SupportedTypes"/>).
/// Point-to-point messages between the same pair of ranks with the same tag arrive in the order they were sent
/// from one thread. Collectives must be called by every rank of the group in the same order, from one thread
/// per rank at a time. Tags are in [0, <see cref="TensorBuffers.MaxTag"/>].
/// </remarks>
public interface ICommunicator : IDisposable
{
    /// <summary>This rank's index in the group, 0 ≤ Rank &lt; Size.</summary>
    int Rank { get; }

    /// <summary>Number of ranks in the group.</summary>
    int Size { get; }

    /// <summary>
    /// The watchdog's deadline for every blocking wait (<c>RANNC_TIMEOUT</c> seconds when the communicator was made,
    /// else 600 s). It belongs to the job: setting it on any communicator also changes the groups split from the same
    /// world (in-process: every rank's; under MPI: this process's).
    /// </summary>
    TimeSpan WaitTimeout { get; set; }

    /// <summary>Sends <paramref name="tensor"/> to <paramref name="destination"/>; returns when the tensor may be reused.</summary>
    void Send(Tensor tensor, int destination, int tag);

    /// <summary>Receives into the preallocated <paramref name="into"/>, whose dtype and element count must equal the sender's.</summary>
    void Receive(Tensor into, int source, int tag);

    /// <summary>Starts a send; the tensor must stay unmodified until the request completes.</summary>
    ICommRequest StartSend(Tensor tensor, int destination, int tag);

    /// <summary>Starts a receive into <paramref name="into"/>; read it only after the request completes.</summary>
    ICommRequest StartReceive(Tensor into, int source, int tag);

    /// <summary>Replaces <paramref name="tensor"/> on every rank with the reduction over all ranks.</summary>
    void AllReduce(Tensor tensor, ReduceOp op);

    /// <summary>All-reduces each tensor in order (e.g. all gradients of one stage).</summary>
    void AllReduce(IReadOnlyList<Tensor> tensors, ReduceOp op);

    /// <summary>Copies <paramref name="tensor"/> of rank <paramref name="root"/> into the same-shaped tensor of every other rank.</summary>
    void Broadcast(Tensor tensor, int root);

    /// <summary>Returns once every rank of the group has called it.</summary>
    void Barrier();

    /// <summary>
    /// Gives every rank the values of all ranks, indexed by rank. For small objects (a status, a measured number):
    /// between processes they travel as JSON, so <typeparamref name="T"/> must round-trip through System.Text.Json.
    /// </summary>
    T[] AllGather<T>(T value);

    /// <summary>
    /// Splits the group: ranks passing the same <paramref name="color"/> form a new group, ordered by
    /// (<paramref name="key"/>, rank). Every rank must call it. Dispose the result when done.
    /// </summary>
    ICommunicator Split(int color, int key);

    /// <summary>Ends the whole job (every rank of every group) with <paramref name="message"/>; does not return.</summary>
    [System.Diagnostics.CodeAnalysis.DoesNotReturn]
    void Abort(string message);
}

/// <summary>Helpers over <see cref="ICommRequest"/>.</summary>
public static class CommRequests
{
    /// <summary>Waits for every request; if several fail, the first failure is thrown after all have finished.</summary>
    public static void WaitAll(IEnumerable<ICommRequest> requests)
    {
        Exception? first = null;
        foreach (ICommRequest request in requests)
        {
            try
            {
                request.Wait();
            }
            catch (Exception e) when (first is null)
            {
                first = e;
            }
        }
        if (first is not null) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(first);
    }
}
