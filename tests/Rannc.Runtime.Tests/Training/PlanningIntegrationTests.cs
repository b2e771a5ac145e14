using System.Text.Json;
using Rannc.Tests.SampleProgram;

namespace Rannc.Tests.Training;

/// <summary>Memory budgets and the plan cache, through the sample program (in-process ranks).</summary>
[Collection(MpiCollection.Name)]
public sealed class PlanningIntegrationTests
{
    private static readonly string[] SmallBert = ["--model", "bert", "--layers", "2", "--hidden", "32", "--seq", "8", "--batch", "8", "--steps", "2", "--dtype", "float64", "--ranks", "4", "--json"];

    [Fact]
    public void MemoryBudgetBelowTheModel_ForcesStages_AndTrainingStillMatches()
    {
        string[] args = [.. SmallBert, "--plan-cache", "", "--memory", "2MiB"];
        JsonElement report = SampleProgramTests.LastJson(SampleProgramTests.RunSample(args));
        Assert.True(report.GetProperty("stages").GetInt32() >= 2, report.ToString());
        JsonElement reference = SampleProgramTests.LastJson(SampleProgramTests.RunSample([.. SmallBert, "--reference"]));
        double[] expected = reference.GetProperty("losses").EnumerateArray().Select(e => e.GetDouble()).ToArray();
        double[] actual = report.GetProperty("losses").EnumerateArray().Select(e => e.GetDouble()).ToArray();
        for (int i = 0; i < expected.Length; i++) Assert.True(Math.Abs(expected[i] - actual[i]) <= 1e-9 * Math.Abs(expected[i]), $"step {i}");
    }

    [Fact]
    public void ModelTooLargeForTheCluster_FailsBeforeTrainingWithTheNumbers()
    {
        var failure = Assert.ThrowsAny<Exception>(() => SampleProgramTests.RunSample([.. SmallBert, "--plan-cache", "", "--memory", "1MiB"]));
        Assert.Contains("does not fit", failure.Message);
        Assert.Contains("needs", failure.Message);
        Assert.DoesNotContain("step 1", failure.Message);
    }

    [Fact]
    public void SecondRun_LoadsThePlanWithoutProfiling_AndACorruptCacheFileIsIgnoredWithAWarning()
    {
        string cache = Directory.CreateTempSubdirectory("rannc-plan-cache-").FullName;
        try
        {
            string[] args = [.. SmallBert, "--plan-cache", cache, "--plan", "2x2"];
            string first = SampleProgramTests.RunSample(args);
            Assert.Equal("miss", SampleProgramTests.LastJson(first).GetProperty("plan_cache").GetString());
            Assert.Contains("profiled", first);

            string second = SampleProgramTests.RunSample(args);
            Assert.Equal("hit", SampleProgramTests.LastJson(second).GetProperty("plan_cache").GetString());
            Assert.Contains("loaded the plan", second);
            Assert.DoesNotContain("profiled", second);
            AssertSameLosses(SampleProgramTests.LastJson(first), SampleProgramTests.LastJson(second));

            string file = Assert.Single(Directory.GetFiles(cache, "deployment-*.json"));
            File.WriteAllText(file, "{ this is not a plan");
            string third = SampleProgramTests.RunSample(args);
            Assert.Equal("miss", SampleProgramTests.LastJson(third).GetProperty("plan_cache").GetString());
            Assert.Contains("Ignoring plan file", third);
            Assert.Contains("profiled", third);
        }
        finally
        {
            Directory.Delete(cache, recursive: true);
        }
    }

    [Fact]
    public void SavedDeployment_IsForcedOnALaterRun_WithoutProfiling()
    {
        string folder = Directory.CreateTempSubdirectory("rannc-deployment-").FullName;
        string file = Path.Combine(folder, "plan.json");
        try
        {
            string first = SampleProgramTests.RunSample([.. SmallBert, "--plan-cache", "", "--plan", "2x2"],
                new Dictionary<string, string> { ["RANNC_SAVE_DEPLOYMENT"] = file });
            Assert.True(File.Exists(file));
            string second = SampleProgramTests.RunSample([.. SmallBert, "--plan-cache", ""],
                new Dictionary<string, string> { ["RANNC_LOAD_DEPLOYMENT"] = file });
            JsonElement report = SampleProgramTests.LastJson(second);
            Assert.Equal([2, 2], report.GetProperty("replicas").EnumerateArray().Select(e => e.GetInt32()));
            Assert.DoesNotContain("profiled", second);
            AssertSameLosses(SampleProgramTests.LastJson(first), report);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    /// <summary>Two runs of the same plan: equal up to the last bits that libtorch's kernels may vary from run to run.</summary>
    private static void AssertSameLosses(JsonElement first, JsonElement second)
    {
        double[] a = first.GetProperty("losses").EnumerateArray().Select(e => e.GetDouble()).ToArray();
        double[] b = second.GetProperty("losses").EnumerateArray().Select(e => e.GetDouble()).ToArray();
        Assert.Equal(a.Length, b.Length);
        for (int i = 0; i < a.Length; i++) Assert.True(Math.Abs(a[i] - b[i]) <= 1e-12 * Math.Abs(a[i]), $"step {i}: {a[i]:R} vs {b[i]:R}");
    }
}
