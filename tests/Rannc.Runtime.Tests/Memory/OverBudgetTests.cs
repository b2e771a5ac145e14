namespace Rannc.Tests.Memory;

/// <summary>
/// A model whose training state (parameters, gradients, Adam's two moments) is more than 1.6× what each process may
/// allocate trains on 4 MPI ranks under that hard limit (<c>prlimit --data</c>, which counts the heap and anonymous
/// mappings, so libtorch's tensors), with the optimizer from RanncModule's factory, and its losses equal plain
/// TorchSharp's without a limit. The same job with an optimizer over the whole model fails under the limit (so the limit
/// binds), and one rank alone fails before training, naming the memory it needs and the memory it has.
/// </summary>
[Collection(MpiCollection.Name)]
public sealed class OverBudgetTests
{
    private const int Layers = 24;
    private const int Hidden = 1448;
    private const long LimitBytes = 900L << 20;
    private static readonly string SamplePath = Path.Combine(AppContext.BaseDirectory, "Rannc.Samples.dll");
    private static readonly string[] Model =
        ["--model", "mlp", "--layers", $"{Layers}", "--hidden", $"{Hidden}", "--dtype", "float64", "--batch", "16", "--steps", "3", "--json"];
    private static readonly string[] Budget = ["--memory", "700MiB", "--plan-cache", ""];
    private static readonly string[] Limit = ["prlimit", $"--data={LimitBytes}"];
    private static readonly TimeSpan Timeout = TimeSpan.FromMinutes(3);

    [Fact]
    public void TrainingStateAboveEachRanksLimit_TrainsOnFourRanks_LikePlainTorchSharp()
    {
        // At least the hidden-to-hidden weights: parameters, gradients and Adam's two moments, 8 bytes each.
        long trainingStateBytes = 4L * (Layers - 1) * Hidden * Hidden * sizeof(double);
        Assert.True(trainingStateBytes > 1.6 * LimitBytes, $"the model's training state ({trainingStateBytes >> 20} MiB) should exceed the limit well");

        MpiJobResult limited = MpiJob.Run(4, [SamplePath, .. Model, .. Budget, "--optimizer-factory"], Timeout,
            new Dictionary<string, string> { ["RANNC_PROFILE_REPEATS"] = "1" }, rankWrapper: Limit);
        Assert.True(limited.ExitCode == 0, $"exit code {limited.ExitCode} under a limit of {LimitBytes >> 20} MiB per rank:\n{limited.Output}");
        var report = SampleProgramTests.LastJson(limited.RankOutput[0]);
        Assert.Equal(4, report.GetProperty("stages").GetInt32());

        double[] expected = Losses(SampleProgramTests.LastJson(SampleProgramTests.RunSample([.. Model, "--reference"])));
        double[] actual = Losses(report);
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(expected[i] - actual[i]) <= 1e-9 * Math.Abs(expected[i]), $"step {i}: plain TorchSharp {expected[i]:R}, Rannc {actual[i]:R}");
    }

    [Fact]
    public void OptimizerOverTheWholeModel_ExceedsTheSameLimit()
    {
        // Every rank's Adam allocates both moments of every parameter before Rannc frees the other stages' share.
        MpiJobResult job = MpiJob.Run(4, [SamplePath, .. Model, .. Budget], Timeout,
            new Dictionary<string, string> { ["RANNC_PROFILE_REPEATS"] = "1" }, rankWrapper: Limit);
        Assert.False(job.TimedOut, $"timed out:\n{job.Output}");
        Assert.True(job.ExitCode != 0, $"the job fit in {LimitBytes >> 20} MiB per rank with Adam over the whole model, so the limit does not bind:\n{job.Output}");
        Assert.Contains("allocate", job.Output);
    }

    [Fact]
    public void OneRank_FailsBeforeTraining_WithTheMemoryItNeedsAndHas()
    {
        (int exitCode, string output, string errors) = PlanToolsTests.RunSample([.. Model, .. Budget, "--ranks", "1", "--optimizer-factory"]);
        Assert.True(exitCode == 1, $"exit code {exitCode}:\n{output}\n{errors}");
        Assert.Contains("The model does not fit: the smallest plan needs ", errors);
        Assert.Contains("has 700.0 MiB", errors);
        Assert.DoesNotContain("step 1/", output);
    }

    private static double[] Losses(System.Text.Json.JsonElement report) =>
        report.GetProperty("losses").EnumerateArray().Select(e => e.GetDouble()).ToArray();
}
