using System.Diagnostics;
using System.Text.Json;

namespace Rannc.Tests.SampleProgram;

/// <summary>
/// The sample program end to end: under mpiexec (one process per rank) and with in-process ranks, in float64, its
/// per-step losses equal those of <c>--reference</c> (plain TorchSharp on one process) to 1e-9 relative.
/// </summary>
[Collection(MpiCollection.Name)]
public sealed class SampleProgramTests
{
    private static readonly string SamplePath = Path.Combine(AppContext.BaseDirectory, "Rannc.Samples.dll");
    private static readonly TimeSpan Timeout = TimeSpan.FromMinutes(3);
    private static readonly string[] SmallBert = ["--model", "bert", "--layers", "2", "--hidden", "32", "--seq", "8", "--batch", "8", "--steps", "3", "--dtype", "float64", "--plan-cache", "", "--json"];

    [Theory]
    [InlineData("2x1", "gpipe")]
    [InlineData("2x2", "1f1b")]
    public void UnderMpiexec_LossesMatchReference(string plan, string schedule)
    {
        int ranks = plan == "2x1" ? 2 : 4;
        MpiJobResult result = MpiJob.Run(ranks, [SamplePath, .. SmallBert, "--plan", plan, "--schedule", schedule], Timeout);
        Assert.False(result.TimedOut, $"timed out:\n{result.Output}");
        Assert.True(result.ExitCode == 0, $"exit code {result.ExitCode}:\n{result.Output}");
        JsonElement report = LastJson(result.RankOutput[0]);
        Assert.Equal(ranks, report.GetProperty("ranks").GetInt32());
        Assert.Equal(2, report.GetProperty("stages").GetInt32());
        AssertLossesMatch(Reference(), report);
    }

    [Fact]
    public void InProcess_FourRanks_LossesMatchReference()
    {
        JsonElement report = LastJson(RunSample([.. SmallBert, "--ranks", "4", "--plan", "2x2"]));
        Assert.Equal(4, report.GetProperty("ranks").GetInt32());
        Assert.Equal([2, 2], report.GetProperty("replicas").EnumerateArray().Select(e => e.GetInt32()));
        AssertLossesMatch(Reference(), report);
    }

    private static JsonElement Reference() => LastJson(RunSample([.. SmallBert, "--reference"]));

    private static void AssertLossesMatch(JsonElement expected, JsonElement actual)
    {
        double[] a = expected.GetProperty("losses").EnumerateArray().Select(e => e.GetDouble()).ToArray();
        double[] b = actual.GetProperty("losses").EnumerateArray().Select(e => e.GetDouble()).ToArray();
        Assert.Equal(a.Length, b.Length);
        for (int i = 0; i < a.Length; i++)
            Assert.True(Math.Abs(a[i] - b[i]) <= 1e-9 * Math.Abs(a[i]), $"step {i}: reference {a[i]:R}, Rannc {b[i]:R}");
    }

    /// <summary>Runs the sample program as a plain process (in-process ranks) and returns its standard output.</summary>
    internal static string RunSample(IEnumerable<string> args, IDictionary<string, string>? environment = null)
    {
        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        start.ArgumentList.Add(SamplePath);
        foreach (string arg in args) start.ArgumentList.Add(arg);
        foreach (var (name, value) in environment ?? new Dictionary<string, string>()) start.Environment[name] = value;
        using Process process = Process.Start(start)!;
        Task<string> output = process.StandardOutput.ReadToEndAsync();
        Task<string> errors = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(Timeout))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"The sample did not finish in {Timeout}.");
        }
        if (process.ExitCode != 0) throw new InvalidOperationException($"exit code {process.ExitCode}:\n{output.Result}\n{errors.Result}");
        return output.Result + errors.Result;
    }

    internal static JsonElement LastJson(string output) =>
        JsonDocument.Parse(output.Split('\n').Last(line => line.TrimStart().StartsWith('{'))).RootElement;
}
