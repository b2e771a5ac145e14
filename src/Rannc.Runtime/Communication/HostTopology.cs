namespace Rannc.Communication;

/// <summary>Which host each rank of a group runs on, found when training starts.</summary>
/// <param name="HostOfRank">The host of every rank; hosts are numbered in the order of their first rank.</param>
public sealed record HostTopology(IReadOnlyList<int> HostOfRank)
{
    /// <summary>Number of hosts.</summary>
    public int HostCount => HostOfRank.Count == 0 ? 0 : HostOfRank.Max() + 1;

    /// <summary>
    /// When every host holds the same number of ranks in one consecutive block (how mpiexec places ranks by default,
    /// and the layout the partitioner's <c>Cluster</c> describes), the hosts and ranks per host; null otherwise.
    /// </summary>
    public (int Hosts, int RanksPerHost)? Blocks
    {
        get
        {
            int hosts = HostCount;
            if (hosts == 0 || HostOfRank.Count % hosts != 0) return null;
            int perHost = HostOfRank.Count / hosts;
            for (int rank = 0; rank < HostOfRank.Count; rank++)
            {
                if (HostOfRank[rank] != rank / perHost) return null;
            }
            return (hosts, perHost);
        }
    }

    /// <summary>
    /// Finds the hosts of <paramref name="group"/>'s ranks (every rank must call it). Between MPI processes the library
    /// says which ranks share memory (MPI_Comm_split_type), which follows where the launcher started them; ranks of
    /// one process (in-process communicators) share a host.
    /// </summary>
    public static HostTopology Discover(ICommunicator group)
    {
        int firstRankHere = group is MpiCommunicator mpi ? mpi.FirstRankOnThisHost() : 0;
        return FromFirstRanks(group.AllGather(firstRankHere));
    }

    /// <summary>The topology from each rank's lowest rank on the same host.</summary>
    public static HostTopology FromFirstRanks(IReadOnlyList<int> firstRankOnHost)
    {
        var hostOfFirst = new Dictionary<int, int>();
        var hosts = new int[firstRankOnHost.Count];
        for (int rank = 0; rank < hosts.Length; rank++)
        {
            int first = firstRankOnHost[rank];
            if (!hostOfFirst.TryGetValue(first, out int host))
            {
                host = hostOfFirst.Count;
                hostOfFirst.Add(first, host);
            }
            hosts[rank] = host;
        }
        return new HostTopology(hosts);
    }

    /// <summary>"2 hosts of 2 ranks" or "hosts of ranks 0,1,0,1".</summary>
    public override string ToString() => Blocks is var (hosts, perHost)
        ? $"{hosts} host{(hosts == 1 ? "" : "s")} of {perHost} rank{(perHost == 1 ? "" : "s")}"
        : $"{HostCount} hosts (host of each rank: {string.Join(",", HostOfRank)})";
}
