using System.Globalization;
using Rannc.Communication;
using Rannc.Mpi.Worker;
using TorchSharp;

namespace Rannc.Tests.Communication;

/// <summary>
/// The one added line, <c>new RanncModule(model, optimizer)</c>: it finds its communicator inside
/// <see cref="RankLauncher.Run"/>, under mpiexec without the launcher, and alone; in each case float64 training equals
/// plain TorchSharp's (1e-9 relative) with SGD and with Adam.
/// </summary>
public sealed class AmbientCommunicatorTests
{
    private const double Tolerance = 1e-9;
    private const long Seed = 1234;

    public static TheoryData<string> Optimizers() => new(AmbientTraining.Optimizers);

    [Theory]
    [MemberData(nameof(Optimizers))]
    public void TwoArgumentConstructor_OnTwoInProcessRanks_TrainsLikePlainTorchSharp(string optimizer)
    {
        double[] reference = AmbientTraining.Train(SeededModels.Create(AmbientTraining.CreateModel, Seed), optimizer, rannc: false);
        var losses = new double[2][];
        var current = new ICommunicator[2];
        RankLauncher.Run(2, comm =>
        {
            current[comm.Rank] = AmbientCommunicator.Current;
            Assert.Same(comm, current[comm.Rank]);
            // Every rank builds the same model until RanncModule broadcasts rank 0's weights itself.
            losses[comm.Rank] = AmbientTraining.Train(SeededModels.Create(AmbientTraining.CreateModel, Seed), optimizer, rannc: true);
        }, new InProcessOptions(Timeout: TimeSpan.FromMinutes(2)));

        for (int rank = 0; rank < 2; rank++) AssertLosses(reference, losses[rank], $"in-process rank {rank}");
        // The launcher's ranks are current only inside it.
        ICommunicator after = AmbientCommunicator.Current;
        Assert.Equal(1, after.Size);
        Assert.DoesNotContain(after, current);
    }

    [Theory]
    [MemberData(nameof(Optimizers))]
    public void TwoArgumentConstructor_OutsideAnyLauncher_TrainsAsOneRankLikePlainTorchSharp(string optimizer)
    {
        double[] reference = AmbientTraining.Train(SeededModels.Create(AmbientTraining.CreateModel, Seed), optimizer, rannc: false);
        double[] losses = AmbientTraining.Train(SeededModels.Create(AmbientTraining.CreateModel, Seed), optimizer, rannc: true, stages: 1);
        Assert.Equal(0, AmbientCommunicator.Current.Rank);
        Assert.Equal(1, AmbientCommunicator.Current.Size);
        AssertLosses(reference, losses, "single rank");
    }

    internal static void AssertLosses(double[] expected, double[] actual, string where)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int step = 0; step < expected.Length; step++)
        {
            double difference = Math.Abs(expected[step] - actual[step]);
            Assert.True(difference <= Tolerance * Math.Abs(expected[step]),
                $"{where}, step {step}: plain TorchSharp {expected[step]:R}, Rannc {actual[step]:R}");
        }
    }
}

/// <summary>The same program under <c>mpiexec -n 2</c>, with no launcher: the module must use the MPI world.</summary>
[Collection(MpiCollection.Name)]
public sealed class AmbientCommunicatorMpiTests
{
    [Fact]
    public void TwoArgumentConstructor_UnderMpiexecWithoutLauncher_TrainsLikePlainTorchSharp()
    {
        MpiJobResult result = MpiJob.RunWorker(2, AmbientTraining.Scenario, TimeSpan.FromMinutes(3));
        Assert.False(result.TimedOut, $"timed out after {result.Elapsed}:\n{result.Output}");
        Assert.True(result.ExitCode == 0, $"exit code {result.ExitCode}:\n{result.Output}");
        Assert.All(result.RankExitCodes, code => Assert.Equal(0, code));
        foreach (string optimizer in AmbientTraining.Optimizers)
        {
            double[] reference = AmbientTraining.Train(SeededModels.Create(AmbientTraining.CreateModel, 1234), optimizer, rannc: false);
            for (int rank = 0; rank < 2; rank++)
            {
                string prefix = $"ambient: rank {rank} of 2 {optimizer} ";
                string? line = result.RankOutput[rank].Split('\n').Select(l => l.TrimEnd('\r')).FirstOrDefault(l => l.StartsWith(prefix, StringComparison.Ordinal));
                Assert.True(line is not null, $"rank {rank} printed no '{prefix}' line:\n{result.Output}");
                double[] losses = line[prefix.Length..].Split(' ').Select(v => double.Parse(v, CultureInfo.InvariantCulture)).ToArray();
                AmbientCommunicatorTests.AssertLosses(reference, losses, $"mpiexec rank {rank}, {optimizer}");
            }
        }
    }
}
