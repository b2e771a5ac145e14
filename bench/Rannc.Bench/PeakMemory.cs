using System.Globalization;

namespace Rannc.Bench;

/// <summary>
/// The peak resident memory of this process during an action, above what it held when the action started. Linux
/// resets the process's high-water mark (VmHWM) when "5" is written to /proc/self/clear_refs; after the action VmHWM
/// is the peak during it, which includes libtorch's native allocations (no sampling, so no peak is missed).
/// </summary>
internal static class PeakMemory
{
    /// <summary>Runs <paramref name="action"/>; returns the bytes by which the peak RSS during it exceeded the RSS before it.</summary>
    public static long Above(Action action)
    {
        long before = Read("VmRSS");
        File.WriteAllText("/proc/self/clear_refs", "5");
        action();
        return Math.Max(0, Read("VmHWM") - before);
    }

    /// <summary>A /proc/self/status field in bytes.</summary>
    private static long Read(string field)
    {
        foreach (string line in File.ReadLines("/proc/self/status"))
        {
            if (!line.StartsWith(field + ":", StringComparison.Ordinal)) continue;
            string kilobytes = line[(field.Length + 1)..].Trim().Split(' ')[0];
            return long.Parse(kilobytes, CultureInfo.InvariantCulture) * 1024;
        }
        throw new InvalidOperationException($"/proc/self/status has no {field}.");
    }
}
