using System.Diagnostics;
using System.Text;
using System.Text.RegularExpressions;

namespace Rannc.Tests;

/// <summary>The outcome of one mpiexec launch.</summary>
/// <param name="ExitCode">mpiexec's exit code (-1 when it was killed on timeout).</param>
/// <param name="Output">stdout and stderr of all ranks, lines prefixed "[rank] " by the launcher.</param>
/// <param name="RankOutput">Each rank's own lines, prefix removed.</param>
/// <param name="RankExitCodes">Each rank's exit code as reported by its last line, or null if it never got there.</param>
public sealed record MpiJobResult(int ExitCode, bool TimedOut, TimeSpan Elapsed, string Output,
    IReadOnlyList<string> RankOutput, IReadOnlyList<int?> RankExitCodes);

/// <summary>
/// Launches a program on N MPI ranks with MPICH's mpiexec, with a timeout that kills the whole process tree.
/// Ranks may outnumber cores (oversubscription is slow but correct).
/// </summary>
public static partial class MpiJob
{
    public static readonly string WorkerPath = Path.Combine(AppContext.BaseDirectory, "Rannc.Mpi.Worker.dll");

    /// <summary>The MPICH launcher, or null when MPICH is not installed.</summary>
    public static string? Launcher { get; } = new[] { "mpiexec.hydra", "mpiexec.mpich" }.Select(FindOnPath).FirstOrDefault(p => p is not null);

    /// <param name="environment">Extra variables for every rank.</param>
    /// <param name="onLine">Sees each output line as it arrives (e.g. to act on a rank's pid while the job runs).</param>
    /// <param name="wrapper">A command that runs the launcher (e.g. <c>ip netns exec NAME</c>).</param>
    /// <param name="launcherOptions">Options for mpiexec itself (e.g. <c>-hosts</c>), before <c>-n</c>.</param>
    /// <param name="rankWrapper">A command that runs each rank's <c>dotnet</c> (e.g. <c>prlimit --data=…</c>).</param>
    public static MpiJobResult Run(int ranks, IEnumerable<string> programAndArgs, TimeSpan timeout,
        IReadOnlyDictionary<string, string>? environment = null, Action<string>? onLine = null,
        IReadOnlyList<string>? wrapper = null, IReadOnlyList<string>? launcherOptions = null, IReadOnlyList<string>? rankWrapper = null)
    {
        if (Launcher is null)
            throw new InvalidOperationException("MPICH's mpiexec (mpiexec.hydra / mpiexec.mpich) is not installed: run ./test.sh as root, or apt-get install mpich.");
        string[] command = [.. wrapper ?? [], Launcher, .. launcherOptions ?? [], "-n", ranks.ToString(), "-prepend-rank", .. rankWrapper ?? [], "dotnet", .. programAndArgs];
        var start = new ProcessStartInfo(command[0])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (string arg in command.Skip(1))
            start.ArgumentList.Add(arg);
        start.Environment["TERM"] = "dumb";
        start.Environment["MALLOC_MMAP_THRESHOLD_"] = "131072";
        start.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        foreach ((string name, string value) in environment ?? new Dictionary<string, string>()) start.Environment[name] = value;

        var output = new StringBuilder();
        var clock = Stopwatch.StartNew();
        using var process = new Process { StartInfo = start };
        process.OutputDataReceived += (_, e) => Append(output, e.Data, onLine);
        process.ErrorDataReceived += (_, e) => Append(output, e.Data, onLine);
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        bool exited = process.WaitForExit(timeout);
        if (!exited)
        {
            process.Kill(entireProcessTree: true);
            process.WaitForExit(10_000);
        }
        process.WaitForExit(); // drains the asynchronous readers
        string text;
        lock (output) text = output.ToString();
        return new MpiJobResult(exited ? process.ExitCode : -1, !exited, clock.Elapsed, text, SplitByRank(text, ranks), ExitCodes(text, ranks));
    }

    /// <summary>Runs a scenario of the worker program.</summary>
    public static MpiJobResult RunWorker(int ranks, string scenario, TimeSpan timeout,
        IReadOnlyDictionary<string, string>? environment = null, Action<string>? onLine = null) =>
        Run(ranks, [WorkerPath, scenario], timeout, environment, onLine);

    private static void Append(StringBuilder output, string? line, Action<string>? onLine)
    {
        if (line is null) return;
        lock (output) output.AppendLine(line);
        onLine?.Invoke(line);
    }

    private static string[] SplitByRank(string text, int ranks)
    {
        var perRank = Enumerable.Range(0, ranks).Select(_ => new StringBuilder()).ToArray();
        foreach (string line in text.Split('\n'))
        {
            Match m = RankPrefix().Match(line);
            if (m.Success && int.Parse(m.Groups[1].Value) is int r && r < ranks) perRank[r].AppendLine(m.Groups[2].Value.TrimEnd('\r'));
        }
        return perRank.Select(b => b.ToString()).ToArray();
    }

    private static int?[] ExitCodes(string text, int ranks)
    {
        var codes = new int?[ranks];
        foreach (Match m in ExitLine().Matches(text))
        {
            int r = int.Parse(m.Groups[1].Value);
            if (r < ranks) codes[r] = int.Parse(m.Groups[2].Value);
        }
        return codes;
    }

    private static string? FindOnPath(string name) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':')
            .Select(dir => Path.Combine(dir, name)).FirstOrDefault(File.Exists);

    [GeneratedRegex(@"^\[(\d+)\] ?(.*)$")]
    private static partial Regex RankPrefix();

    [GeneratedRegex(@"rannc-worker: rank (\d+) exit (-?\d+)")]
    private static partial Regex ExitLine();
}

/// <summary>MPI launches run one at a time: each already uses every core.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class MpiCollection
{
    public const string Name = "mpiexec launches";
}
