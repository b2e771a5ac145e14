namespace Rannc.Tests.Correctness;

/// <summary>Training scenarios of the MPI worker (tests/Rannc.Mpi.Worker/TrainingScenarios.cs), one process per rank.</summary>
[Collection(MpiCollection.Name)]
public sealed class MpiTrainingTests
{
    [Theory]
    [InlineData("tied-gpt-sgd", 2)]
    [InlineData("tied-gpt-sgd", 3)]
    [InlineData("tied-gpt-adam", 2)]
    [InlineData("deferred-mlp-sgd", 2)]
    [InlineData("deferred-bert-sgd", 2)]
    [InlineData("deferred-bert-adam", 2)]
    [InlineData("deferred-gpt-sgd", 2)]
    [InlineData("deferred-gpt-adam", 2)]
    [InlineData("deferred-vgg-adam", 2)]
    public void Scenario_TrainsLikePlainTorchSharp(string scenario, int ranks)
    {
        MpiJobResult result = MpiJob.RunWorker(ranks, scenario, TimeSpan.FromSeconds(180));
        Assert.False(result.TimedOut, $"timed out after {result.Elapsed}:\n{result.Output}");
        Assert.True(result.ExitCode == 0, $"exit code {result.ExitCode}:\n{result.Output}");
        Assert.All(result.RankExitCodes, code => Assert.Equal(0, code));
    }
}
