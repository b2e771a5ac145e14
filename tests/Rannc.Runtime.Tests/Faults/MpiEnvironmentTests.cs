using System.Diagnostics;
using Rannc.Communication;

namespace Rannc.Tests.Faults;

/// <summary>
/// An MPI environment that cannot work ends the program with its explanation and exit code 1, not an unhandled
/// exception: from the sample, from a program using <see cref="RankLauncher"/> (the worker's watchdog scenarios) and
/// from one that relies on the ambient communicator (the worker's ambient-training scenario). The programs run as
/// plain processes with the environment a launcher would give them.
/// </summary>
[Collection(MpiCollection.Name)]
public sealed class MpiEnvironmentTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(90);

    /// <summary>The three ways a program reaches MPI.</summary>
    public static TheoryData<string> Programs => new() { "sample", "rank-launcher", "ambient" };

    // What Open MPI's mpiexec sets for every process it starts.
    private static readonly Dictionary<string, string> OpenMpiLaunch = new() { ["OMPI_COMM_WORLD_SIZE"] = "2", ["OMPI_COMM_WORLD_RANK"] = "0" };

    // What MPICH's launcher sets, with the library pointed at one that is not there.
    private static Dictionary<string, string> MpichLaunch(string library) =>
        new() { ["PMI_RANK"] = "0", ["PMI_SIZE"] = "1", [MpiEnvironment.LibraryVariable] = library };

    [Theory]
    [MemberData(nameof(Programs))]
    public void OpenMpiLauncher_ExplainsAndExitsWithCode1(string program)
    {
        (int exitCode, string output) = Run(program, OpenMpiLaunch);
        Assert.True(exitCode == 1, $"exit code {exitCode}:\n{output}");
        Assert.Contains("Rannc: This process was started by Open MPI's mpiexec", output);
        Assert.Contains("Install MPICH and launch with mpiexec.mpich (or mpiexec.hydra)", output);
        AssertNoStackTrace(output);
    }

    [Theory]
    [MemberData(nameof(Programs))]
    public void MissingMpich_ExplainsAndExitsWithCode1(string program)
    {
        (int exitCode, string output) = Run(program, MpichLaunch("/nonexistent/libmpich.so.12"));
        Assert.True(exitCode == 1, $"exit code {exitCode}:\n{output}");
        Assert.Contains("Rannc: No MPICH-ABI MPI library found: RANNC_MPI_LIBRARY='/nonexistent/libmpich.so.12' could not be loaded", output);
        Assert.Contains("apt-get install mpich", output);
        AssertNoStackTrace(output);
    }

    [Fact]
    public void ALibraryThatIsNotMpi_ExplainsAndExitsWithCode1()
    {
        (int exitCode, string output) = Run("rank-launcher", MpichLaunch("libc.so.6"));
        Assert.True(exitCode == 1, $"exit code {exitCode}:\n{output}");
        Assert.Contains("Rannc: 'libc.so.6' is not an MPI library (it has no MPI_Init_thread)", output);
        AssertNoStackTrace(output);
    }

    [Fact]
    public void TheLibraryVariable_ChoosesTheLibraryUnderMpiexec()
    {
        MpiJobResult result = MpiJob.RunWorker(2, "all-reduce", TimeSpan.FromSeconds(60),
            new Dictionary<string, string> { [MpiEnvironment.LibraryVariable] = "libmpich.so.12" });
        Assert.False(result.TimedOut, $"timed out:\n{result.Output}");
        Assert.True(result.ExitCode == 0, $"exit code {result.ExitCode}:\n{result.Output}");
        Assert.Equal([0, 0], result.RankExitCodes);
    }

    private static void AssertNoStackTrace(string output)
    {
        Assert.DoesNotContain("Unhandled exception", output);
        Assert.DoesNotMatch(@"\n\s+at [\w.]+", output);
    }

    private static (int ExitCode, string Output) Run(string program, IReadOnlyDictionary<string, string> environment)
    {
        string[] args = program switch
        {
            "sample" => [Path.Combine(AppContext.BaseDirectory, "Rannc.Samples.dll"), "--model", "mlp", "--steps", "1", "--plan-cache", ""],
            "rank-launcher" => [MpiJob.WorkerPath, "leave-early"],
            "ambient" => [MpiJob.WorkerPath, "ambient-training"],
            _ => throw new ArgumentException(program),
        };
        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string arg in args) start.ArgumentList.Add(arg);
        start.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        foreach ((string name, string value) in environment) start.Environment[name] = value;
        using Process process = Process.Start(start)!;
        Task<string> output = process.StandardOutput.ReadToEndAsync();
        Task<string> errors = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(Timeout))
        {
            process.Kill(entireProcessTree: true);
            process.WaitForExit();
            return (-1, $"timed out after {Timeout}\n{output.Result}{errors.Result}");
        }
        process.WaitForExit();
        return (process.ExitCode, output.Result + errors.Result);
    }
}
