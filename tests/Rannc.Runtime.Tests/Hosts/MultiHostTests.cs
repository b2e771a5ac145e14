using System.Diagnostics;
using System.Text.Json;
using Rannc.Tests.SampleProgram;

namespace Rannc.Tests.Hosts;

/// <summary>A test that needs root (network namespaces); skipped, with the reason, otherwise.</summary>
public sealed class RootFactAttribute : FactAttribute
{
    public RootFactAttribute()
    {
        if (Environment.UserName != "root") Skip = "needs root to make network namespaces (ip netns); run ./test.sh as root";
    }
}

/// <summary>
/// Runs across hosts: the runtime finds which ranks share a host, measures the links once and caches them, and the
/// BERT sample on two "hosts" (Linux network namespaces joined by a veth pair, MPICH over TCP between them) trains
/// exactly like the same job on one host and like plain TorchSharp.
/// </summary>
[Collection(MpiCollection.Name)]
public sealed class MultiHostTests
{
    private static readonly string SamplePath = Path.Combine(AppContext.BaseDirectory, "Rannc.Samples.dll");
    private static readonly string NetnsScript = Path.Combine(AppContext.BaseDirectory, "netns-hosts.sh");
    private static readonly TimeSpan Timeout = TimeSpan.FromMinutes(3);
    private static readonly string[] SmallBert = ["--model", "bert", "--layers", "2", "--hidden", "32", "--seq", "8", "--batch", "8", "--steps", "3", "--dtype", "float64", "--json"];

    [Fact]
    public void UnderMpiexec_LinksAreMeasuredOnce_ThenReadFromTheCache()
    {
        string cache = Directory.CreateTempSubdirectory("rannc-links-").FullName;
        try
        {
            MpiJobResult first = MpiJob.Run(2, [SamplePath, .. SmallBert, "--plan-cache", cache, "--plan", "2x1"], Timeout);
            Assert.True(first.ExitCode == 0, $"exit code {first.ExitCode}:\n{first.Output}");
            Assert.Contains("2 rank(s) on 1 host of 2 ranks; links ", first.RankOutput[0]);
            Assert.Contains("(measured now, cached in ", first.RankOutput[0]);
            Assert.Single(Directory.GetFiles(cache, "links-*.json"));

            MpiJobResult second = MpiJob.Run(2, [SamplePath, .. SmallBert, "--plan-cache", cache, "--plan", "2x1"], Timeout);
            Assert.True(second.ExitCode == 0, $"exit code {second.ExitCode}:\n{second.Output}");
            Assert.DoesNotContain("measured now", second.RankOutput[0]);
            Assert.Contains("(cached in ", second.RankOutput[0]);
            // Same links, same cluster: the second run also finds its plan in the cache.
            Assert.Contains("loaded the plan", second.RankOutput[0]);
        }
        finally
        {
            Directory.Delete(cache, recursive: true);
        }
    }

    [RootFact]
    public void BertOnTwoHosts_LossesEqualOneHostAndPlainTorchSharp()
    {
        string prefix = $"rannc{Environment.ProcessId % 100000}";
        // The build copies the script without its executable bit; hydra runs it as its launcher.
        if (!OperatingSystem.IsWindows()) File.SetUnixFileMode(NetnsScript, File.GetUnixFileMode(NetnsScript) | UnixFileMode.UserExecute);
        RunScript("down", prefix);
        RunScript("up", prefix);
        try
        {
            string[] args = [SamplePath, .. SmallBert, "--plan-cache", "", "--plan", "2x2", "--schedule", "1f1b"];
            var environment = new Dictionary<string, string>
            {
                ["RANNC_NETNS_PREFIX"] = prefix,
                // UCX would otherwise reach the other namespace through shared memory (it is the same machine).
                ["UCX_TLS"] = "tcp,self",
            };
            MpiJobResult twoHosts = MpiJob.Run(4, args, Timeout, environment,
                wrapper: ["ip", "netns", "exec", $"{prefix}-a"],
                launcherOptions: ["-launcher", "ssh", "-launcher-exec", NetnsScript, "-hosts", "10.213.0.1:2,10.213.0.2:2", "-localhost", "10.213.0.1"]);
            Assert.False(twoHosts.TimedOut, $"timed out:\n{twoHosts.Output}");
            Assert.True(twoHosts.ExitCode == 0, $"exit code {twoHosts.ExitCode}:\n{twoHosts.Output}");
            Assert.Contains("4 rank(s) on 2 hosts of 2 ranks; links inside a host ", twoHosts.RankOutput[0]);
            Assert.Contains(", between hosts ", twoHosts.RankOutput[0]);

            MpiJobResult oneHost = MpiJob.Run(4, args, Timeout);
            Assert.True(oneHost.ExitCode == 0, $"exit code {oneHost.ExitCode}:\n{oneHost.Output}");
            Assert.Contains("4 rank(s) on 1 host of 4 ranks", oneHost.RankOutput[0]);

            double[] reference = Losses(SampleProgramTests.LastJson(SampleProgramTests.RunSample([.. SmallBert, "--plan-cache", "", "--reference"])));
            double[] across = Losses(SampleProgramTests.LastJson(twoHosts.RankOutput[0]));
            double[] within = Losses(SampleProgramTests.LastJson(oneHost.RankOutput[0]));
            AssertClose(within, across, "one host", "two hosts");
            AssertClose(reference, across, "plain TorchSharp", "two hosts");
        }
        finally
        {
            RunScript("down", prefix);
        }
    }

    private static double[] Losses(JsonElement report) =>
        report.GetProperty("losses").EnumerateArray().Select(e => e.GetDouble()).ToArray();

    private static void AssertClose(double[] expected, double[] actual, string expectedName, string actualName)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
        {
            Assert.True(Math.Abs(expected[i] - actual[i]) <= 1e-9 * Math.Abs(expected[i]),
                $"step {i}: {expectedName} {expected[i]:R}, {actualName} {actual[i]:R}");
        }
    }

    private static void RunScript(string command, string prefix)
    {
        var start = new ProcessStartInfo(NetnsScript) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        start.ArgumentList.Add(command);
        start.ArgumentList.Add(prefix);
        using Process process = Process.Start(start)!;
        string errors = process.StandardError.ReadToEnd();
        if (!process.WaitForExit(TimeSpan.FromSeconds(30)))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"netns-hosts.sh {command} did not finish in 30 s.");
        }
        if (process.ExitCode != 0)
            throw new InvalidOperationException($"netns-hosts.sh {command} {prefix} failed ({process.ExitCode}); this test needs iproute2 and the right to make network namespaces:\n{errors}");
    }
}
