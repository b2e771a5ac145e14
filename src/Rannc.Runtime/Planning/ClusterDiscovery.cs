using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Rannc.Communication;
using Rannc.Execution;
using Rannc.Partitioner;

namespace Rannc.Planning;

/// <summary>
/// The cluster a run plans for: which ranks share a host (<see cref="HostTopology"/>) and how fast the links inside
/// and between hosts are: given as options, else read from the link cache, else measured now by a short ping-pong
/// (<see cref="LinkProbe"/>) and cached, so later runs plan with the same numbers and find their cached plans.
/// Rank 0 decides and every rank takes its decision.
/// </summary>
internal sealed record ClusterDiscovery(HostTopology Topology, LinkSpeed IntraHost, LinkSpeed InterHost, string Description)
{
    /// <summary>Ranks that are threads of one process copy memory between each other (measured at 4–7 GB/s; bench/RESULTS.md).</summary>
    public static readonly LinkSpeed InProcessLink = new(4e9, 5e-6);

    private sealed record LinkChoice(LinkSpeed? IntraHost, LinkSpeed? InterHost, bool MeasureIntraHost, bool MeasureInterHost, string Source);

    private sealed record CachedLinks(string Key, LinkSpeed IntraHost, LinkSpeed InterHost);

    /// <summary>The partitioner's cluster with <paramref name="memoryBytesPerDevice"/> per rank.</summary>
    public Cluster ClusterFor(long memoryBytesPerDevice) => Topology.Blocks is var (hosts, perHost)
        ? new Cluster(hosts, perHost, memoryBytesPerDevice, IntraHost.BytesPerSecond, IntraHost.LatencySeconds, InterHost.BytesPerSecond, InterHost.LatencySeconds)
        // The partitioner's cluster is hosts of equal, consecutive blocks of ranks; any other placement is planned
        // as if every link crossed hosts, which never overestimates a link.
        : new Cluster(1, Topology.HostOfRank.Count, memoryBytesPerDevice, InterHost.BytesPerSecond, InterHost.LatencySeconds, InterHost.BytesPerSecond, InterHost.LatencySeconds);

    /// <summary>Every rank of <paramref name="world"/> calls this at the same point.</summary>
    public static ClusterDiscovery Discover(ICommunicator world, RanncOptions options, string? cacheDirectory, Action<string> log)
    {
        HostTopology topology = HostTopology.Discover(world);
        int? intraPeer = FirstPeer(topology, onRankZerosHost: true);
        int? interPeer = FirstPeer(topology, onRankZerosHost: false);
        bool betweenProcesses = world is MpiCommunicator;
        string[] machines = world.AllGather(Environment.MachineName);
        string key = CacheKey(topology, machines);
        string? cachePath = cacheDirectory is null ? null : Path.Combine(cacheDirectory, $"links-{key[..16]}.json");

        LinkChoice? choice = null;
        if (world.Rank == 0)
        {
            CachedLinks? cached = cachePath is null ? null : ReadCache(cachePath, key, log);
            LinkSpeed? intra = options.IntraHostLink ?? cached?.IntraHost ?? (betweenProcesses && intraPeer is not null ? null : InProcessLink);
            LinkSpeed? inter = options.InterHostLink ?? cached?.InterHost ?? (interPeer is not null ? null : intra ?? InProcessLink);
            string from = options.IntraHostLink is not null || options.InterHostLink is not null ? "given"
                : cached is not null ? $"cached in {cachePath}"
                : intra is null || inter is null ? "measured now" : "in-process";
            choice = new LinkChoice(intra, inter, intra is null, inter is null, from);
        }
        choice = world.AllGather(choice)[0]!;

        LinkSpeed? measuredIntra = choice.MeasureIntraHost ? world.AllGather(LinkProbe.Measure(world, 0, intraPeer!.Value))[0] : null;
        LinkSpeed? measuredInter = choice.MeasureInterHost ? world.AllGather(LinkProbe.Measure(world, 0, interPeer!.Value))[0] : null;
        LinkSpeed intraHost = choice.IntraHost ?? measuredIntra!.Value;
        LinkSpeed interHost = choice.InterHost ?? measuredInter ?? intraHost;
        string source = choice.Source;
        if (world.Rank == 0 && (choice.MeasureIntraHost || choice.MeasureInterHost) && cachePath is not null)
        {
            if (WriteCache(cachePath, new CachedLinks(key, intraHost, interHost), log)) source += $", cached in {cachePath}";
        }

        string links = topology.HostCount > 1
            ? $"inside a host {intraHost}, between hosts {interHost}"
            : $"{intraHost}";
        string layout = topology.Blocks is null
            ? $" Ranks are not placed in equal consecutive blocks per host, so every link is planned as one between hosts (launch with e.g. mpiexec -ppn {Math.Max(1, world.Size / Math.Max(1, topology.HostCount))})."
            : "";
        string description = $"Rannc: {world.Size} rank(s) on {topology}; links {links} ({source}).{layout}";
        return new ClusterDiscovery(topology, intraHost, interHost, description);
    }

    /// <summary>The lowest rank other than 0 that is (or is not) on rank 0's host.</summary>
    private static int? FirstPeer(HostTopology topology, bool onRankZerosHost)
    {
        for (int rank = 1; rank < topology.HostOfRank.Count; rank++)
        {
            if ((topology.HostOfRank[rank] == topology.HostOfRank[0]) == onRankZerosHost) return rank;
        }
        return null;
    }

    private static string CacheKey(HostTopology topology, string[] machines)
    {
        string text = $"rannc-links|{string.Join(",", topology.HostOfRank)}|{string.Join(",", machines)}";
        return Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(text)));
    }

    private static CachedLinks? ReadCache(string path, string key, Action<string> log)
    {
        if (!File.Exists(path)) return null;
        try
        {
            CachedLinks? cached = JsonSerializer.Deserialize<CachedLinks>(File.ReadAllText(path));
            if (cached is null || cached.Key != key || !Valid(cached.IntraHost) || !Valid(cached.InterHost))
            {
                log($"Rannc: warning: ignoring link cache {path}: it is for other hosts or holds invalid speeds; measuring again.");
                return null;
            }
            return cached;
        }
        catch (Exception e) when (e is JsonException or IOException or UnauthorizedAccessException or NotSupportedException)
        {
            log($"Rannc: warning: ignoring link cache {path}: it cannot be read ({e.Message}); measuring again.");
            return null;
        }
    }

    private static bool Valid(LinkSpeed speed) =>
        double.IsFinite(speed.BytesPerSecond) && speed.BytesPerSecond > 0 && double.IsFinite(speed.LatencySeconds) && speed.LatencySeconds >= 0;

    private static bool WriteCache(string path, CachedLinks links, Action<string> log)
    {
        string folder = Path.GetDirectoryName(Path.GetFullPath(path))!;
        string temporary = Path.Combine(folder, $".{Path.GetFileName(path)}.{Guid.NewGuid():N}.tmp");
        try
        {
            Directory.CreateDirectory(folder);
            File.WriteAllText(temporary, JsonSerializer.Serialize(links, new JsonSerializerOptions { WriteIndented = true }));
            File.Move(temporary, path, overwrite: true);
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or NotSupportedException)
        {
            log($"Rannc: warning: could not write the link cache {path} ({e.Message}); the next run measures again.");
            return false;
        }
        finally
        {
            try { File.Delete(temporary); } catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        }
    }
}
