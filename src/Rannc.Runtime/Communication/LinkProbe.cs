using System.Diagnostics;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Communication;

/// <summary>
/// Measures a link between two ranks by ping-pong through the communicator itself (so its per-message header is
/// counted, as in training): many small round trips give the latency, a few large ones the bandwidth. Each is the
/// fastest round, not the mean: a busy machine only ever slows a round down, and the result is cached for later runs.
/// </summary>
internal static class LinkProbe
{
    private const int Tag = 1;
    private const int SmallRounds = 20;
    private const int LargeRounds = 3;
    private const long LargeBytes = 8L << 20;

    /// <summary>
    /// Every rank of <paramref name="group"/> calls this; ranks <paramref name="first"/> and <paramref name="second"/>
    /// exchange messages and the others return at once. Returns the speed on <paramref name="first"/>, null elsewhere.
    /// </summary>
    public static LinkSpeed? Measure(ICommunicator group, int first, int second)
    {
        if (group.Rank != first && group.Rank != second) return null;
        int peer = group.Rank == first ? second : first;
        bool starts = group.Rank == first;
        using var small = torch.zeros(2, dtype: ScalarType.Float32);
        using var large = torch.zeros(LargeBytes / sizeof(float), dtype: ScalarType.Float32);

        FastestRound(group, small, peer, starts, 2); // warm-up: connections are set up on first use
        double smallRound = FastestRound(group, small, peer, starts, SmallRounds);
        FastestRound(group, large, peer, starts, 1);
        double largeRound = FastestRound(group, large, peer, starts, LargeRounds);
        if (!starts) return null;

        double latency = smallRound / 2;
        double oneWay = largeRound / 2;
        // What is left of a large transfer after its latency is bandwidth; a floor keeps a noisy run finite.
        double bandwidth = LargeBytes / Math.Max(oneWay - latency, oneWay / 10);
        return new LinkSpeed(bandwidth, latency);
    }

    /// <summary>Seconds of the fastest of <paramref name="rounds"/> round trips.</summary>
    private static double FastestRound(ICommunicator group, Tensor buffer, int peer, bool starts, int rounds)
    {
        double fastest = double.PositiveInfinity;
        for (int i = 0; i < rounds; i++)
        {
            long start = Stopwatch.GetTimestamp();
            if (starts)
            {
                group.Send(buffer, peer, Tag);
                group.Receive(buffer, peer, Tag);
            }
            else
            {
                group.Receive(buffer, peer, Tag);
                group.Send(buffer, peer, Tag);
            }
            fastest = Math.Min(fastest, Stopwatch.GetElapsedTime(start).TotalSeconds);
        }
        return fastest;
    }
}
