using System.Diagnostics;

namespace Rannc.Capture;

/// <summary>
/// Renders a DOT file to SVG with Graphviz's <c>dot -Tsvg</c> when it is installed: Rannc does not draw graphs itself,
/// and a missing Graphviz leaves the DOT file, with one line saying how to get the picture.
/// </summary>
internal static class GraphvizRenderer
{
    private static readonly TimeSpan Timeout = TimeSpan.FromMinutes(2);

    /// <summary>
    /// Writes <c><paramref name="dotPath"/>.svg</c>; returns its path, or null (with the reason in
    /// <paramref name="note"/>) when <c>dot</c> is not on <paramref name="searchPath"/> (the <c>PATH</c> variable).
    /// </summary>
    public static string? TryRenderSvg(string dotPath, string? searchPath, out string? note)
    {
        string svgPath = dotPath + ".svg";
        if (FindExecutable("dot", searchPath) is not { } dot)
        {
            note = $"Graphviz 'dot' is not on PATH, so only {dotPath} was written; install Graphviz (e.g. apt-get install graphviz) for {svgPath}.";
            return null;
        }
        var start = new ProcessStartInfo(dot) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        foreach (string arg in new[] { "-Tsvg", dotPath, "-o", svgPath }) start.ArgumentList.Add(arg);
        using Process process = Process.Start(start) ?? throw new InvalidOperationException($"Could not start {dot}.");
        Task<string> errors = process.StandardError.ReadToEndAsync();
        process.StandardOutput.ReadToEnd();
        if (!process.WaitForExit(Timeout))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"{dot} -Tsvg {dotPath} did not finish within {Timeout.TotalMinutes} minutes.");
        }
        if (process.ExitCode != 0)
            throw new InvalidOperationException($"{dot} -Tsvg {dotPath} failed with exit code {process.ExitCode}: {errors.Result.Trim()}");
        note = null;
        return svgPath;
    }

    private static string? FindExecutable(string name, string? searchPath) =>
        (searchPath ?? "").Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries)
            .Select(folder => Path.Combine(folder, name))
            .FirstOrDefault(File.Exists);
}
