using System.Diagnostics;
using System.Globalization;

namespace Rannc.Execution.Profiling;

/// <summary>
/// Progress lines while the nodes are profiled (<c>Rannc: profiling: 120/288 nodes, 4.1 s</c>): at most one every
/// <see cref="Interval"/> so a large model does not flood the log, and always a final line.
/// </summary>
internal sealed class ProfilingProgress(int total, Action<string> log, Func<TimeSpan>? elapsed = null)
{
    /// <summary>The least time between two progress lines.</summary>
    public static readonly TimeSpan Interval = TimeSpan.FromSeconds(2);

    private readonly Func<TimeSpan> _elapsed = elapsed ?? StartClock();
    private TimeSpan _lastLine;
    private int _done;

    /// <summary>One more node measured (nodes are counted once per profiled batch size).</summary>
    public void NodeDone()
    {
        _done++;
        TimeSpan now = _elapsed();
        if (now - _lastLine < Interval || _done >= total) return;
        _lastLine = now;
        log(Line(now));
    }

    /// <summary>The final line, whatever the time since the last.</summary>
    public void Finish() => log(Line(_elapsed()));

    private static Func<TimeSpan> StartClock()
    {
        var clock = Stopwatch.StartNew();
        return () => clock.Elapsed;
    }

    private string Line(TimeSpan now) =>
        string.Create(CultureInfo.InvariantCulture, $"Rannc: profiling: {_done}/{total} nodes, {now.TotalSeconds:0.0} s");
}
