using System.Diagnostics;
using Rannc.Partitioner;

namespace Rannc.Execution.Tracing;

/// <summary>One slice of a rank's track: what ran, from when, for how long (microseconds from the step's start).</summary>
/// <param name="Name">What the trace viewer shows, e.g. <c>forward m0</c> or <c>send activation m1 → rank 2</c>.</param>
/// <param name="Category">forward, backward, recompute, send, receive, all-reduce, wait or idle.</param>
/// <param name="Action">The schedule action's text form (<c>0F1</c>); null for slices that are not schedule actions.</param>
/// <param name="Stage">The stage the rank runs (-1 when none).</param>
/// <param name="MicroBatch">The micro-batch (-1 when none).</param>
/// <param name="Peer">The other rank of a send or receive (-1 otherwise).</param>
/// <param name="Bytes">Bytes a send or receive moves (0 otherwise).</param>
/// <param name="StartMicroseconds">Start, from the step's start.</param>
/// <param name="DurationMicroseconds">Duration.</param>
internal sealed record TraceSlice(string Name, string Category, string? Action, int Stage, int MicroBatch, int Peer, long Bytes,
    double StartMicroseconds, double DurationMicroseconds);

/// <summary>
/// Collects the slices of one traced step on one rank. The executor asks for it only while a step is traced, so an
/// untraced step pays one null check per action.
/// </summary>
internal sealed class StepRecorder
{
    private readonly long _origin = Stopwatch.GetTimestamp();
    private readonly List<TraceSlice> _slices = [];

    public IReadOnlyList<TraceSlice> Slices => _slices;

    public static long Now() => Stopwatch.GetTimestamp();

    /// <summary>Microseconds from the recorder's start (the step's start) to <paramref name="timestamp"/>.</summary>
    public double Microseconds(long timestamp) => (timestamp - _origin) * 1e6 / Stopwatch.Frequency;

    /// <summary>Records a schedule action that ran from <paramref name="started"/> until now.</summary>
    public void Action(PipelineAction action, long started, long bytes)
    {
        double start = Microseconds(started);
        _slices.Add(new TraceSlice(NameOf(action), CategoryOf(action, recompute: false), action.ToString(), action.Stage, action.MicroBatch,
            action.Peer, bytes, start, Microseconds(Now()) - start));
    }

    /// <summary>Records work outside the schedule's actions (waiting for sends, the shared-gradient sum) from <paramref name="started"/> until now.</summary>
    public void Extra(string name, string category, int stage, long started)
    {
        double start = Microseconds(started);
        _slices.Add(new TraceSlice(name, category, null, stage, -1, -1, 0, start, Microseconds(Now()) - start));
    }

    /// <summary>The viewer's name of an action: kind, micro-batch, and for transfers the direction and peer.</summary>
    public static string NameOf(PipelineAction action, bool recompute = false) => action.Kind switch
    {
        ActionKind.Forward => $"forward m{action.MicroBatch}",
        ActionKind.Backward => recompute ? $"recompute+backward m{action.MicroBatch}" : $"backward m{action.MicroBatch}",
        ActionKind.BackwardInput => $"input gradients m{action.MicroBatch}",
        ActionKind.BackwardWeight => $"weight gradients m{action.MicroBatch}",
        ActionKind.SendActivation => $"send activation m{action.MicroBatch} → rank {action.Peer}",
        ActionKind.RecvActivation => $"receive activation m{action.MicroBatch} ← rank {action.Peer}",
        ActionKind.SendGradient => $"send gradient m{action.MicroBatch} → rank {action.Peer}",
        ActionKind.RecvGradient => $"receive gradient m{action.MicroBatch} ← rank {action.Peer}",
        ActionKind.AllReduce => $"all-reduce stage {action.Stage}",
        _ => action.ToString(),
    };

    /// <summary>The colour group of an action; a backward that recomputes its forward first is <c>recompute</c>.</summary>
    public static string CategoryOf(PipelineAction action, bool recompute) => action.Kind switch
    {
        ActionKind.Forward => "forward",
        ActionKind.Backward => recompute ? "recompute" : "backward",
        ActionKind.BackwardInput or ActionKind.BackwardWeight => "backward",
        ActionKind.SendActivation or ActionKind.SendGradient => "send",
        ActionKind.RecvActivation or ActionKind.RecvGradient => "receive",
        ActionKind.AllReduce => "all-reduce",
        _ => "other",
    };
}
