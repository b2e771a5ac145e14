using System.Globalization;
using System.Text;
using System.Text.Json;
using Rannc.Partitioner;

namespace Rannc.Execution.Tracing;

/// <summary>The measured slices of one rank in a traced step, and when the rank finished the step.</summary>
internal sealed record RankTrace(int Rank, IReadOnlyList<TraceSlice> Slices, double EndMicroseconds);

/// <summary>
/// Writes a step as Chrome trace-event JSON (<c>{"traceEvents": [...]}</c>), which Perfetto and chrome://tracing load:
/// process 0 holds the measured tracks, one thread per rank; process 1 the simulator's prediction of the same plan,
/// one thread per rank. Every slice is a complete event (<c>ph: "X"</c>, <c>ts</c> and <c>dur</c> in microseconds);
/// metadata events (<c>ph: "M"</c>) name and order the processes and threads. Gaps on a track become <c>idle</c> slices.
/// </summary>
internal static class ChromeTrace
{
    /// <summary>Process id of the measured tracks.</summary>
    public const int MeasuredProcess = 0;

    /// <summary>Process id of the predicted tracks.</summary>
    public const int PredictedProcess = 1;

    /// <summary>
    /// Gaps shorter than this between two slices are bookkeeping between actions, not idle time worth a slice
    /// (they would clutter the view with thousands of slivers).
    /// </summary>
    private const double IdleThresholdMicroseconds = 20;

    /// <summary>The measured slices of every rank as tracks, each ending at the step's end (the last rank's).</summary>
    public static IReadOnlyList<IReadOnlyList<TraceSlice>> MeasuredTracks(IReadOnlyList<RankTrace> ranks)
    {
        double end = ranks.Max(r => Math.Max(r.EndMicroseconds, r.Slices.Select(s => s.StartMicroseconds + s.DurationMicroseconds).DefaultIfEmpty(0).Max()));
        return ranks.OrderBy(r => r.Rank).Select(r => WithIdle(r.Slices.OrderBy(s => s.StartMicroseconds).ToList(), end)).ToList();
    }

    /// <summary>The simulator's timeline as tracks of slices, in the same form as the measured ones.</summary>
    public static IReadOnlyList<IReadOnlyList<TraceSlice>> PredictedTracks(SimulatedTimeline timeline, PartitionPlan plan)
    {
        var tracks = new List<IReadOnlyList<TraceSlice>>();
        double end = timeline.Result.StepSeconds * 1e6;
        for (int r = 0; r < timeline.Schedule.Ranks.Count; r++)
        {
            var slices = new List<TraceSlice>();
            foreach (TimedAction timed in timeline.ActionsOf(r))
            {
                PipelineAction action = timed.Action;
                bool recompute = action.Kind == ActionKind.Backward && plan.Stages[action.Stage].Recompute;
                // A send holds its rank only while it is posted (the message then travels on its own): zero length here,
                // its arrival is in the arguments and ends the matching receive.
                bool send = action.Kind is ActionKind.SendActivation or ActionKind.SendGradient;
                double duration = send ? 0 : (timed.EndSeconds - timed.StartSeconds) * 1e6;
                slices.Add(new TraceSlice(StepRecorder.NameOf(action, recompute), StepRecorder.CategoryOf(action, recompute), action.ToString(),
                    action.Stage, action.MicroBatch, action.Peer, timed.Bytes, timed.StartSeconds * 1e6, duration));
            }
            foreach (TimedSharedSync sync in timeline.SharedSyncs.Where(s => s.Rank == r))
            {
                slices.Add(new TraceSlice($"all-reduce shared gradients (stages {string.Join(", ", sync.Stages)})", "all-reduce", null,
                    plan.RoleOf(r)?.Stage ?? -1, -1, -1, 0, sync.StartSeconds * 1e6, (sync.EndSeconds - sync.StartSeconds) * 1e6));
            }
            tracks.Add(WithIdle(slices.OrderBy(s => s.StartMicroseconds).ToList(), end));
        }
        return tracks;
    }

    /// <summary>
    /// The trace-event JSON of a step: the measured tracks, and the predicted ones when given (a note in the process
    /// name says why they are missing otherwise).
    /// </summary>
    public static string Format(PartitionPlan plan, long trainingStep, IReadOnlyList<IReadOnlyList<TraceSlice>> measured,
        IReadOnlyList<IReadOnlyList<TraceSlice>>? predicted, string? predictionNote)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer))
        {
            json.WriteStartObject();
            json.WriteStartArray("traceEvents");
            WriteProcess(json, MeasuredProcess, $"Measured: training step {trainingStep.ToString(CultureInfo.InvariantCulture)}", plan, measured);
            WriteProcess(json, PredictedProcess,
                predicted is null ? $"Predicted: not available ({predictionNote})" : "Predicted: PipelineSimulator, same plan", plan, predicted ?? []);
            json.WriteEndArray();
            json.WriteString("displayTimeUnit", "ms");
            json.WriteStartObject("otherData");
            json.WriteString("rannc_plan", PlanJson.Serialize(plan));
            json.WriteNumber("training_step", trainingStep);
            json.WriteNumber("measured_step_ms", EndOf(measured) / 1e3);
            if (predicted is not null) json.WriteNumber("predicted_step_ms", EndOf(predicted) / 1e3);
            json.WriteEndObject();
            json.WriteEndObject();
        }
        return Encoding.UTF8.GetString(buffer.ToArray());
    }

    private static double EndOf(IReadOnlyList<IReadOnlyList<TraceSlice>> tracks) =>
        tracks.SelectMany(t => t).Select(s => s.StartMicroseconds + s.DurationMicroseconds).DefaultIfEmpty(0).Max();

    private static void WriteProcess(Utf8JsonWriter json, int pid, string name, PartitionPlan plan, IReadOnlyList<IReadOnlyList<TraceSlice>> tracks)
    {
        Metadata(json, "process_name", pid, 0, "name", name);
        Metadata(json, "process_sort_index", pid, 0, "sort_index", pid);
        for (int rank = 0; rank < tracks.Count; rank++)
        {
            string role = plan.RoleOf(rank) is { } r ? $"stage {r.Stage}, replica {r.Replica}" : "idle";
            Metadata(json, "thread_name", pid, rank, "name", $"rank {rank} ({role})");
            Metadata(json, "thread_sort_index", pid, rank, "sort_index", rank);
            foreach (TraceSlice slice in tracks[rank]) Complete(json, pid, rank, slice);
        }
    }

    private static void Metadata(Utf8JsonWriter json, string name, int pid, int tid, string key, object value)
    {
        json.WriteStartObject();
        json.WriteString("name", name);
        json.WriteString("ph", "M");
        json.WriteNumber("pid", pid);
        json.WriteNumber("tid", tid);
        json.WriteStartObject("args");
        if (value is int number) json.WriteNumber(key, number);
        else json.WriteString(key, (string)value);
        json.WriteEndObject();
        json.WriteEndObject();
    }

    private static void Complete(Utf8JsonWriter json, int pid, int tid, TraceSlice slice)
    {
        json.WriteStartObject();
        json.WriteString("name", slice.Name);
        json.WriteString("cat", slice.Category);
        json.WriteString("ph", "X");
        json.WriteNumber("ts", Math.Round(slice.StartMicroseconds, 3));
        json.WriteNumber("dur", Math.Round(slice.DurationMicroseconds, 3));
        json.WriteNumber("pid", pid);
        json.WriteNumber("tid", tid);
        json.WriteStartObject("args");
        if (slice.Action is not null) json.WriteString("action", slice.Action);
        if (slice.Stage >= 0) json.WriteNumber("stage", slice.Stage);
        if (slice.MicroBatch >= 0) json.WriteNumber("micro_batch", slice.MicroBatch);
        if (slice.Peer >= 0) json.WriteNumber("peer", slice.Peer);
        if (slice.Bytes > 0) json.WriteNumber("bytes", slice.Bytes);
        json.WriteEndObject();
        json.WriteEndObject();
    }

    /// <summary>The track with an <c>idle</c> slice in every gap of at least the threshold, up to <paramref name="end"/>.</summary>
    private static List<TraceSlice> WithIdle(List<TraceSlice> slices, double end)
    {
        var track = new List<TraceSlice>();
        double clock = 0;
        foreach (TraceSlice slice in slices)
        {
            if (slice.StartMicroseconds - clock >= IdleThresholdMicroseconds) track.Add(Idle(clock, slice.StartMicroseconds));
            // Rounding to the nanosecond in the file must not make neighbours overlap: a slice never starts before the last ended.
            TraceSlice placed = slice.StartMicroseconds < clock ? slice with { StartMicroseconds = clock } : slice;
            track.Add(placed);
            clock = Math.Max(clock, placed.StartMicroseconds + placed.DurationMicroseconds);
        }
        if (end - clock >= IdleThresholdMicroseconds) track.Add(Idle(clock, end));
        return track;
    }

    private static TraceSlice Idle(double from, double to) => new("idle", "idle", null, -1, -1, -1, 0, from, to - from);
}
