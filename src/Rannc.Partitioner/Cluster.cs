namespace Rannc.Partitioner;

/// <summary>
/// The machines a plan is made for: <see cref="Nodes"/> hosts with <see cref="DevicesPerNode"/> identical devices
/// each. Rank <c>r</c> lives on host <c>r / DevicesPerNode</c>. Bandwidths are bytes per second of one
/// point-to-point link; latencies are seconds per message.
/// </summary>
public sealed record Cluster(
    int Nodes,
    int DevicesPerNode,
    long MemoryBytesPerDevice,
    double IntraNodeBandwidth,
    double IntraNodeLatencySeconds,
    double InterNodeBandwidth,
    double InterNodeLatencySeconds)
{
    /// <summary>Total number of devices (ranks).</summary>
    public int DeviceCount => Nodes * DevicesPerNode;

    /// <summary>The host that holds <paramref name="rank"/>.</summary>
    public int NodeOf(int rank) => rank / DevicesPerNode;

    /// <summary>Seconds to move <paramref name="bytes"/> from one rank to another (zero between a rank and itself).</summary>
    public double TransferSeconds(int fromRank, int toRank, long bytes)
    {
        if (fromRank == toRank)
        {
            return 0;
        }

        return NodeOf(fromRank) == NodeOf(toRank)
            ? IntraNodeLatencySeconds + bytes / IntraNodeBandwidth
            : InterNodeLatencySeconds + bytes / InterNodeBandwidth;
    }

    /// <summary>Whether all ranks in <c>[firstRank, firstRank + count)</c> are on one host.</summary>
    public bool OnOneNode(int firstRank, int count) => NodeOf(firstRank) == NodeOf(firstRank + count - 1);

    /// <summary>Throws when a field is out of range.</summary>
    public void EnsureValid()
    {
        if (Nodes < 1 || DevicesPerNode < 1)
        {
            throw new ArgumentException($"A cluster needs at least one node and one device per node, got {Nodes}×{DevicesPerNode}.");
        }

        if (MemoryBytesPerDevice <= 0 || IntraNodeBandwidth <= 0 || InterNodeBandwidth <= 0
            || IntraNodeLatencySeconds < 0 || InterNodeLatencySeconds < 0)
        {
            throw new ArgumentException($"Cluster memory and bandwidths must be positive and latencies non-negative: {this}.");
        }
    }

    /// <summary>A cluster of <paramref name="nodes"/> hosts with <paramref name="devicesPerNode"/> devices each, with
    /// NVLink-class links inside a host (150 GB/s, 5 µs) and InfiniBand-class links between hosts (25 GB/s, 10 µs).</summary>
    public static Cluster Typical(int nodes, int devicesPerNode, long memoryBytesPerDevice) =>
        new(nodes, devicesPerNode, memoryBytesPerDevice, 150e9, 5e-6, 25e9, 10e-6);
}
