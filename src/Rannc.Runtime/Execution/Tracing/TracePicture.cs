using System.Globalization;
using System.Security;
using System.Text;
using System.Text.Json;

namespace Rannc.Execution.Tracing;

/// <summary>
/// Draws a Chrome trace written by Rannc as an SVG in the style of Perfetto's timeline, for places without a browser
/// (docs, CI artefacts): a time axis, one horizontal track per rank and process (each rank's measured track with its
/// predicted one right below it), coloured slices per category, a tooltip per slice, and a legend.
/// </summary>
public static class TracePicture
{
    private const double Width = 1400;
    private const double LabelWidth = 250;
    private const double RightMargin = 20;
    private const double TrackHeight = 22;
    private const double TrackGap = 4;
    private const double RankGap = 12;
    private const double Top = 64;

    /// <summary>The fill of each slice category.</summary>
    public static readonly IReadOnlyDictionary<string, string> Colours = new Dictionary<string, string>
    {
        ["forward"] = "#4e79a7",
        ["backward"] = "#f28e2b",
        ["recompute"] = "#e15759",
        ["send"] = "#59a14f",
        ["receive"] = "#76b7b2",
        ["all-reduce"] = "#b07aa1",
        ["wait"] = "#edc948",
        ["idle"] = "#e4e4e4",
    };

    private sealed record Slice(string Name, string Category, double Start, double Duration);

    /// <summary>The SVG of the trace-event JSON <paramref name="traceJson"/>.</summary>
    public static string Svg(string traceJson)
    {
        using JsonDocument document = JsonDocument.Parse(traceJson);
        var processNames = new SortedDictionary<int, string>();
        var threadNames = new Dictionary<(int Pid, int Tid), string>();
        var tracks = new SortedDictionary<(int Tid, int Pid), List<Slice>>();
        foreach (JsonElement e in document.RootElement.GetProperty("traceEvents").EnumerateArray())
        {
            string name = e.GetProperty("name").GetString() ?? "";
            int pid = e.GetProperty("pid").GetInt32();
            int tid = e.TryGetProperty("tid", out JsonElement t) ? t.GetInt32() : 0;
            string ph = e.GetProperty("ph").GetString() ?? "";
            if (ph == "M" && name == "process_name") processNames[pid] = e.GetProperty("args").GetProperty("name").GetString() ?? "";
            else if (ph == "M" && name == "thread_name") threadNames[(pid, tid)] = e.GetProperty("args").GetProperty("name").GetString() ?? "";
            else if (ph == "X")
            {
                var slice = new Slice(name, e.TryGetProperty("cat", out JsonElement c) ? c.GetString() ?? "" : "",
                    e.GetProperty("ts").GetDouble(), e.GetProperty("dur").GetDouble());
                (tracks.TryGetValue((tid, pid), out List<Slice>? list) ? list : tracks[(tid, pid)] = []).Add(slice);
            }
        }
        foreach ((int pid, int tid) in threadNames.Keys) tracks.TryAdd((tid, pid), []);

        double end = Math.Max(1, tracks.Values.SelectMany(s => s).Select(s => s.Start + s.Duration).DefaultIfEmpty(1).Max());
        double scale = (Width - LabelWidth - RightMargin) / end;
        int rankCount = tracks.Keys.Select(k => k.Tid).Distinct().Count();
        double height = Top + tracks.Count * (TrackHeight + TrackGap) + rankCount * RankGap + 70;

        var svg = new StringBuilder();
        svg.Append(Invariant($"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{Width}\" height=\"{height:0}\" viewBox=\"0 0 {Width} {height:0}\" font-family=\"sans-serif\" font-size=\"11\">\n"));
        svg.Append(Invariant($"<rect x=\"0\" y=\"0\" width=\"{Width}\" height=\"{height:0}\" fill=\"#ffffff\"/>\n"));
        svg.Append(Invariant($"<text x=\"10\" y=\"20\" font-size=\"14\" font-weight=\"bold\">{Escape(string.Join("  |  ", processNames.Values))}</text>\n"));
        AppendAxis(svg, end, scale, height);

        double y = Top;
        int? previousRank = null;
        foreach (((int tid, int pid), List<Slice> slices) in tracks)
        {
            if (previousRank is int p && p != tid) y += RankGap;
            previousRank = tid;
            string kind = processNames.TryGetValue(pid, out string? processName) ? processName.Split(':')[0].ToLowerInvariant() : $"process {pid}";
            string label = $"{(threadNames.TryGetValue((pid, tid), out string? thread) ? thread : $"thread {tid}")}, {kind}";
            svg.Append(Invariant($"<rect x=\"0\" y=\"{y:0.#}\" width=\"{Width}\" height=\"{TrackHeight}\" fill=\"{(pid == 0 ? "#f7f7f7" : "#eef3fa")}\"/>\n"));
            svg.Append(Invariant($"<text x=\"8\" y=\"{y + 15:0.#}\">{Escape(label)}</text>\n"));
            foreach (Slice slice in slices.OrderBy(s => s.Start))
            {
                double x = LabelWidth + slice.Start * scale;
                double w = Math.Max(1, slice.Duration * scale);
                string fill = Colours.TryGetValue(slice.Category, out string? colour) ? colour : "#999999";
                svg.Append(Invariant($"<rect class=\"slice\" data-category=\"{Escape(slice.Category)}\" x=\"{x:0.##}\" y=\"{y + 2:0.#}\" width=\"{w:0.##}\" height=\"{TrackHeight - 4}\" fill=\"{fill}\" stroke=\"#ffffff\" stroke-width=\"0.5\">"));
                svg.Append(Invariant($"<title>{Escape(slice.Name)}: {slice.Duration / 1e3:0.###} ms at {slice.Start / 1e3:0.###} ms</title></rect>\n"));
                // A name fits when the slice is wider than the text (about 6 px per character at this size).
                if (slice.Category != "idle" && w > 6 * slice.Name.Length + 6)
                    svg.Append(Invariant($"<text x=\"{x + 3:0.##}\" y=\"{y + 15:0.#}\" fill=\"#ffffff\">{Escape(slice.Name)}</text>\n"));
            }
            y += TrackHeight + TrackGap;
        }
        AppendLegend(svg, y + 20);
        svg.Append("</svg>\n");
        return svg.ToString();
    }

    /// <summary>Ticks every 1, 2 or 5 × 10^k milliseconds, about ten across, with light grid lines down the tracks.</summary>
    private static void AppendAxis(StringBuilder svg, double endMicroseconds, double scale, double height)
    {
        double endMs = endMicroseconds / 1e3;
        double raw = endMs / 10;
        double magnitude = Math.Pow(10, Math.Floor(Math.Log10(raw)));
        double step = new[] { 1, 2, 5, 10 }.Select(f => f * magnitude).First(s => s >= raw);
        svg.Append(Invariant($"<line x1=\"{LabelWidth}\" y1=\"{Top - 12}\" x2=\"{Width - RightMargin}\" y2=\"{Top - 12}\" stroke=\"#333333\"/>\n"));
        for (double ms = 0; ms <= endMs + step * 1e-9; ms += step)
        {
            double x = LabelWidth + ms * 1e3 * scale;
            svg.Append(Invariant($"<line x1=\"{x:0.##}\" y1=\"{Top - 16}\" x2=\"{x:0.##}\" y2=\"{height - 60:0}\" stroke=\"#dddddd\"/>\n"));
            svg.Append(Invariant($"<text x=\"{x:0.##}\" y=\"{Top - 20}\" text-anchor=\"middle\">{ms:0.###} ms</text>\n"));
        }
    }

    private static void AppendLegend(StringBuilder svg, double y)
    {
        double x = LabelWidth;
        foreach ((string category, string colour) in Colours)
        {
            svg.Append(Invariant($"<rect class=\"legend\" x=\"{x:0}\" y=\"{y - 10:0}\" width=\"12\" height=\"12\" fill=\"{colour}\"/>"));
            svg.Append(Invariant($"<text x=\"{x + 16:0}\" y=\"{y:0}\">{category}</text>\n"));
            x += 24 + 7 * category.Length + 20;
        }
    }

    private static string Escape(string text) => SecurityElement.Escape(text) ?? "";

    private static string Invariant(FormattableString text) => text.ToString(CultureInfo.InvariantCulture);
}
