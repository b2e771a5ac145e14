using System.Text.Json;
using Rannc.Partitioner;

namespace Rannc.Tests.Tools;

/// <summary>
/// Reads a Chrome trace written by Rannc and checks it: trace-event JSON Perfetto and chrome://tracing load (complete
/// and metadata events with their fields), named measured and predicted processes with one named thread per rank, and
/// on every track the schedule's actions of that rank exactly once each, in order, with non-overlapping increasing times.
/// </summary>
internal static class TraceChecks
{
    public const int Measured = 0;
    public const int Predicted = 1;

    /// <summary>One complete event of the file.</summary>
    public sealed record Slice(string Name, string Category, double Start, double Duration, string? Action, int? Peer, long? Bytes);

    /// <summary>The checked trace: the plan it was taken with and each (process, rank) track's slices in file order.</summary>
    public sealed record Trace(PartitionPlan Plan, Dictionary<(int Pid, int Tid), List<Slice>> Tracks, Dictionary<int, string> ProcessNames);

    public static Trace Check(string path)
    {
        using JsonDocument document = JsonDocument.Parse(File.ReadAllText(path));
        JsonElement root = document.RootElement;
        Assert.Equal(JsonValueKind.Object, root.ValueKind);
        JsonElement events = root.GetProperty("traceEvents");
        Assert.Equal(JsonValueKind.Array, events.ValueKind);
        PartitionPlan plan = PlanJson.Deserialize(root.GetProperty("otherData").GetProperty("rannc_plan").GetString()!);

        var tracks = new Dictionary<(int, int), List<Slice>>();
        var processNames = new Dictionary<int, string>();
        var threadNames = new Dictionary<(int, int), string>();
        foreach (JsonElement e in events.EnumerateArray())
        {
            string name = e.GetProperty("name").GetString()!;
            string ph = e.GetProperty("ph").GetString()!;
            int pid = e.GetProperty("pid").GetInt32();
            int tid = e.GetProperty("tid").GetInt32();
            Assert.False(string.IsNullOrEmpty(name));
            if (ph == "M")
            {
                JsonElement args = e.GetProperty("args");
                if (name == "process_name") processNames[pid] = args.GetProperty("name").GetString()!;
                else if (name == "thread_name") threadNames[(pid, tid)] = args.GetProperty("name").GetString()!;
                else Assert.Contains(name, new[] { "process_sort_index", "thread_sort_index" });
                continue;
            }
            Assert.Equal("X", ph);
            double ts = e.GetProperty("ts").GetDouble();
            double dur = e.GetProperty("dur").GetDouble();
            Assert.True(ts >= 0 && dur >= 0, $"negative time in {e}");
            JsonElement a = e.GetProperty("args");
            var slice = new Slice(name, e.GetProperty("cat").GetString()!, ts, dur,
                a.TryGetProperty("action", out JsonElement action) ? action.GetString() : null,
                a.TryGetProperty("peer", out JsonElement peer) ? peer.GetInt32() : null,
                a.TryGetProperty("bytes", out JsonElement bytes) ? bytes.GetInt64() : null);
            (tracks.TryGetValue((pid, tid), out List<Slice>? list) ? list : tracks[(pid, tid)] = []).Add(slice);
        }

        PipelineSchedule schedule = ScheduleBuilder.Build(plan.Schedule, PipelineTopology.FromPlan(plan));
        Assert.StartsWith("Measured", processNames[Measured]);
        Assert.StartsWith("Predicted: PipelineSimulator", processNames[Predicted]);
        foreach (int pid in new[] { Measured, Predicted })
        {
            for (int rank = 0; rank < plan.DeviceCount; rank++)
            {
                Assert.StartsWith($"rank {rank} ", threadNames[(pid, rank)]);
                List<Slice> track = tracks.GetValueOrDefault((pid, rank)) ?? [];
                string where = $"{processNames[pid]}, rank {rank}";
                // Per rank: the schedule's actions, each once, in order.
                Assert.Equal(schedule.Ranks[rank].Select(x => x.ToString()), track.Where(s => s.Action is not null).Select(s => s.Action!));
                double end = 0;
                foreach (Slice slice in track)
                {
                    // Times are written to the nanosecond: neighbours may touch within that rounding.
                    Assert.True(slice.Start >= end - 2e-3, $"{where}: '{slice.Name}' starts at {slice.Start} before the previous slice ended at {end}");
                    end = slice.Start + slice.Duration;
                    Assert.Contains(slice.Category, new[] { "forward", "backward", "recompute", "send", "receive", "all-reduce", "wait", "idle" });
                    if (slice.Action is null) continue;
                    PipelineAction action = PipelineAction.Parse(slice.Action);
                    bool transfer = action.Kind is ActionKind.SendActivation or ActionKind.RecvActivation or ActionKind.SendGradient or ActionKind.RecvGradient;
                    if (transfer)
                    {
                        Assert.Equal(action.Peer, slice.Peer);
                        Assert.True(slice.Bytes > 0, $"{where}: {slice.Name} has no bytes");
                        Assert.Contains($"rank {action.Peer}", slice.Name);
                    }
                }
            }
        }
        return new Trace(plan, tracks, processNames);
    }
}
