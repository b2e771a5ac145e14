using Rannc.Communication;
using Rannc.Execution;
using Rannc.Partitioner;
using Rannc.Planning;

namespace Rannc.Tests.Hosts;

/// <summary>Which ranks share a host, the cluster the planner is given for it, and link speeds from options.</summary>
public sealed class HostTopologyTests
{
    private static readonly LinkSpeed Fast = new(10e9, 2e-6);
    private static readonly LinkSpeed Slow = new(1e9, 50e-6);

    [Fact]
    public void ConsecutiveEqualBlocks_BecomeHostsOfTheCluster()
    {
        HostTopology topology = HostTopology.FromFirstRanks([0, 0, 2, 2]);
        Assert.Equal([0, 0, 1, 1], topology.HostOfRank);
        Assert.Equal((2, 2), topology.Blocks);
        Cluster cluster = new ClusterDiscovery(topology, Fast, Slow, "").ClusterFor(1 << 30);
        Assert.Equal(2, cluster.Nodes);
        Assert.Equal(2, cluster.DevicesPerNode);
        Assert.Equal(Fast.BytesPerSecond, cluster.IntraNodeBandwidth);
        Assert.Equal(Slow.BytesPerSecond, cluster.InterNodeBandwidth);
        Assert.Equal(Slow.LatencySeconds, cluster.InterNodeLatencySeconds);
        // The planner's view: ranks 1 and 2 are on different hosts, so a transfer between them uses the slow link.
        Assert.Equal(Slow.TransferSeconds(1000), cluster.TransferSeconds(1, 2, 1000), 12);
        Assert.Equal(Fast.TransferSeconds(1000), cluster.TransferSeconds(2, 3, 1000), 12);
        Assert.Equal("2 hosts of 2 ranks", topology.ToString());
    }

    [Theory]
    [InlineData(new[] { 0, 1, 0, 1 })] // round-robin placement
    [InlineData(new[] { 0, 0, 2 })]    // uneven hosts
    public void OtherPlacements_ArePlannedAsIfEveryLinkCrossedHosts(int[] firstRanks)
    {
        HostTopology topology = HostTopology.FromFirstRanks(firstRanks);
        Assert.Null(topology.Blocks);
        Assert.Equal(2, topology.HostCount);
        Cluster cluster = new ClusterDiscovery(topology, Fast, Slow, "").ClusterFor(1 << 30);
        Assert.Equal(1, cluster.Nodes);
        Assert.Equal(firstRanks.Length, cluster.DevicesPerNode);
        Assert.Equal(Slow.BytesPerSecond, cluster.IntraNodeBandwidth);
        Assert.Equal(Slow.LatencySeconds, cluster.IntraNodeLatencySeconds);
    }

    [Fact]
    public void OneHost_IsOneNode()
    {
        HostTopology topology = HostTopology.FromFirstRanks([0, 0, 0]);
        Assert.Equal((1, 3), topology.Blocks);
        Assert.Equal("1 host of 3 ranks", topology.ToString());
    }

    [Theory]
    [InlineData("25GB/s,10us", 25e9, 10e-6)]
    [InlineData("4GiB/s, 0.5ms", 4.0 * (1L << 30), 0.5e-3)]
    [InlineData("1000000000,0.00002", 1e9, 2e-5)]
    [InlineData("100MB/s,1s", 1e8, 1)]
    public void LinkSpeeds_Parse(string text, double bytesPerSecond, double latency)
    {
        LinkSpeed speed = LinkSpeed.Parse(text);
        Assert.Equal(bytesPerSecond, speed.BytesPerSecond, 6);
        Assert.Equal(latency, speed.LatencySeconds, 12);
    }

    [Theory]
    [InlineData("25GB/s")]
    [InlineData("fast,10us")]
    [InlineData("25GB/s,10 fortnights")]
    [InlineData("0,10us")]
    public void BadLinkSpeeds_NameTheVariable(string text)
    {
        var e = Assert.Throws<FormatException>(() => new RanncOptions().WithVariables(n => n == "RANNC_INTER_HOST_LINK" ? text : null));
        Assert.Contains("RANNC_INTER_HOST_LINK", e.Message);
    }

    [Fact]
    public void InProcessRanks_ShareOneHost_AndUseTheMemoryCopyLink()
    {
        ClusterDiscovery[] found = InProcessLauncher.Run(4, comm => ClusterDiscovery.Discover(comm, new RanncOptions(), null, _ => { }));
        foreach (ClusterDiscovery f in found)
        {
            Assert.Equal([0, 0, 0, 0], f.Topology.HostOfRank);
            Assert.Equal(ClusterDiscovery.InProcessLink, f.IntraHost);
        }
        Assert.Contains("1 host of 4 ranks", found[0].Description);
    }

    [Fact]
    public void GivenLinks_AreUsed_OnRankZerosWord()
    {
        var given = new RanncOptions { IntraHostLink = Fast, InterHostLink = Slow };
        // Only rank 0's options count, so ranks cannot disagree on the cluster.
        ClusterDiscovery[] found = InProcessLauncher.Run(2, comm =>
            ClusterDiscovery.Discover(comm, comm.Rank == 0 ? given : new RanncOptions(), null, _ => { }));
        Assert.All(found, f => Assert.Equal(Fast, f.IntraHost));
        Assert.Contains("(given)", found[1].Description);
    }
}
