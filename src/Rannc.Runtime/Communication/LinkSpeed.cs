using System.Globalization;

namespace Rannc.Communication;

/// <summary>The speed of one point-to-point link: bytes per second and seconds per message.</summary>
public readonly record struct LinkSpeed(double BytesPerSecond, double LatencySeconds)
{
    /// <summary>Seconds to move <paramref name="bytes"/> over the link.</summary>
    public double TransferSeconds(long bytes) => LatencySeconds + bytes / BytesPerSecond;

    /// <summary>Parses <c>BANDWIDTH,LATENCY</c>, e.g. <c>25GB/s,10us</c>, <c>4GiB/s,5us</c>, <c>1000000000,0.00002</c> (bytes per second, seconds).</summary>
    public static LinkSpeed Parse(string text)
    {
        string[] parts = text.Split(',', StringSplitOptions.TrimEntries);
        if (parts.Length != 2)
            throw new FormatException($"'{text}' is not a link speed; write BANDWIDTH,LATENCY, e.g. 25GB/s,10us.");
        string bandwidthText = parts[0].EndsWith("/s", StringComparison.OrdinalIgnoreCase) ? parts[0][..^2] : parts[0];
        double bandwidth = Execution.RanncOptions.ParseBytes(bandwidthText);
        double latency = ParseSeconds(parts[1]);
        if (bandwidth <= 0) throw new FormatException($"'{text}': the bandwidth must be above zero.");
        return new LinkSpeed(bandwidth, latency);
    }

    private static double ParseSeconds(string text)
    {
        int split = 0;
        while (split < text.Length && (char.IsAsciiDigit(text[split]) || text[split] is '.' or 'e' or 'E' or '-' or '+')) split++;
        if (split == 0 || !double.TryParse(text[..split], NumberStyles.Float, CultureInfo.InvariantCulture, out double number) || number < 0)
            throw new FormatException($"'{text}' is not a latency; write e.g. 10us, 0.5ms or 0.00001.");
        double unit = text[split..].Trim().ToLowerInvariant() switch
        {
            "" or "s" => 1,
            "ms" => 1e-3,
            "us" or "µs" => 1e-6,
            "ns" => 1e-9,
            string other => throw new FormatException($"'{text}' has an unknown time unit '{other}'; use s, ms, us or ns."),
        };
        return number * unit;
    }

    /// <summary>"4.2 GB/s, 12 µs".</summary>
    public override string ToString() =>
        string.Create(CultureInfo.InvariantCulture, $"{BytesPerSecond / 1e9:0.##} GB/s, {LatencySeconds * 1e6:0.#} µs");
}
