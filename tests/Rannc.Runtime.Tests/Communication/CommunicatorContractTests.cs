using Rannc.Communication;
using Rannc.Mpi.Worker;

namespace Rannc.Tests.Communication;

/// <summary>
/// The same scenarios (<see cref="CommunicatorScenarios"/>) against both communicator implementations:
/// threads of this process, and processes under MPICH's mpiexec.
/// </summary>
public abstract class CommunicatorContractTests
{
    public static TheoryData<string, int> PassingCases()
    {
        var data = new TheoryData<string, int>();
        foreach (string name in CommunicatorScenarios.Passing.Keys)
        {
            data.Add(name, 2);
            data.Add(name, 4);
        }
        return data;
    }

    public static TheoryData<string> FailingCases() => new(CommunicatorScenarios.Failing.Keys);
}

public sealed class InProcessCommunicatorContractTests : CommunicatorContractTests
{
    private static readonly InProcessOptions Options = new(Timeout: TimeSpan.FromMinutes(2), StallTimeout: TimeSpan.FromSeconds(5));

    [Theory]
    [MemberData(nameof(PassingCases))]
    public void Scenario_Passes(string scenario, int ranks) =>
        InProcessLauncher.Run(ranks, CommunicatorScenarios.Passing[scenario], Options);

    [Theory]
    [MemberData(nameof(FailingCases))]
    public void Scenario_FailsTheJobWithItsError(string scenario)
    {
        (Action<ICommunicator> run, string expectedError) = CommunicatorScenarios.Failing[scenario];
        var failure = Assert.Throws<RankFailedException>(() => InProcessLauncher.Run(2, run, Options));
        Assert.Contains(expectedError, failure.Message);
        Assert.Equal(1, failure.Rank);
    }
}

[Collection(MpiCollection.Name)]
public sealed class MpiCommunicatorContractTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(120);

    [Theory]
    [MemberData(nameof(CommunicatorContractTests.PassingCases), MemberType = typeof(CommunicatorContractTests))]
    public void Scenario_Passes(string scenario, int ranks)
    {
        MpiJobResult result = MpiJob.RunWorker(ranks, scenario, Timeout);
        Assert.False(result.TimedOut, $"timed out after {result.Elapsed}:\n{result.Output}");
        Assert.True(result.ExitCode == 0, $"exit code {result.ExitCode}:\n{result.Output}");
        Assert.All(result.RankExitCodes, code => Assert.Equal(0, code));
    }

    [Theory]
    [MemberData(nameof(CommunicatorContractTests.FailingCases), MemberType = typeof(CommunicatorContractTests))]
    public void Scenario_FailsTheJobWithin30Seconds(string scenario)
    {
        MpiJobResult result = MpiJob.RunWorker(2, scenario, TimeSpan.FromSeconds(60));
        Assert.False(result.TimedOut, $"hung until killed after {result.Elapsed}:\n{result.Output}");
        Assert.NotEqual(0, result.ExitCode);
        Assert.True(result.Elapsed < TimeSpan.FromSeconds(30), $"took {result.Elapsed}");
        Assert.Contains(CommunicatorScenarios.Failing[scenario].ExpectedError, result.RankOutput[1]);
        Assert.Contains("rank 1 of 2 failed", result.RankOutput[1]);
    }
}
