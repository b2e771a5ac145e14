using System.Diagnostics;

namespace Rannc.Tests.SampleProgram;

/// <summary>The sample behaves like a .NET command-line tool: help with every option, usage errors with exit code 2.</summary>
public sealed class SampleCommandLineTests
{
    private static readonly string SamplePath = Path.Combine(AppContext.BaseDirectory, "Rannc.Samples.dll");

    private static readonly string[] Options =
    [
        "--model", "--ranks", "--steps", "--batch", "--layers", "--hidden", "--seq", "--seed", "--dtype", "--plan", "--schedule",
        "--micro-batches", "--memory", "--lr", "--plan-cache", "--reference", "--json", "--dot", "--trace", "--trace-step", "--dry-run", "--devices", "--devices-per-node", "--render-trace", "--help",
    ];

    [Fact]
    public void Help_ListsEveryOption_AndExitsZero()
    {
        (int exitCode, string output, _) = Run("--help");
        Assert.Equal(0, exitCode);
        foreach (string option in Options) Assert.Contains(option + " ", output);
    }

    [Theory]
    [InlineData(new[] { "--bogus" }, "--bogus")]
    [InlineData(new[] { "--ranks", "abc" }, "--ranks abc: needs a positive integer")]
    [InlineData(new[] { "--model", "gpt" }, "--model gpt: use mlp, bert or resnet")]
    [InlineData(new[] { "--plan", "2y" }, "'2y' is not a plan shape")]
    [InlineData(new[] { "--memory", "12QB" }, "unknown unit 'QB'")]
    [InlineData(new[] { "--steps" }, "--steps")]
    public void BadOptions_ExitTwo_WithTheErrorAndTheUsage(string[] args, string expected)
    {
        (int exitCode, string output, string errors) = Run(args);
        Assert.Equal(2, exitCode);
        Assert.Contains(expected, errors);
        Assert.Contains("Usage:", errors);
        Assert.Contains("--plan-cache", errors);
        Assert.DoesNotContain("step 1", output);
    }

    private static (int ExitCode, string Output, string Errors) Run(params string[] args)
    {
        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        start.ArgumentList.Add(SamplePath);
        foreach (string arg in args) start.ArgumentList.Add(arg);
        using Process process = Process.Start(start)!;
        Task<string> output = process.StandardOutput.ReadToEndAsync();
        Task<string> errors = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(TimeSpan.FromSeconds(60)))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"the sample did not finish: {string.Join(" ", args)}");
        }
        return (process.ExitCode, output.Result, errors.Result);
    }
}
