using Rannc.Communication;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Tests.Communication;

/// <summary>Behaviour of the in-process implementation beyond the shared contract: misuse and hangs become errors.</summary>
public sealed class InProcessCommunicatorTests
{
    private static readonly InProcessOptions Fast = new(Timeout: TimeSpan.FromSeconds(60), StallTimeout: TimeSpan.FromSeconds(1));

    [Fact]
    public void Run_ReturnsEachRanksResult()
    {
        int[] results = InProcessLauncher.Run(3, comm => comm.Rank * 10 + comm.Size, Fast);
        Assert.Equal([3, 13, 23], results);
    }

    [Fact]
    public void Receive_BeforeAnySend_IsReportedAsDeadlockNamingWhatEachRankWaitsFor()
    {
        var failure = Assert.ThrowsAny<Exception>(() => InProcessLauncher.Run(2, comm =>
        {
            using Tensor t = torch.empty(3);
            comm.Receive(t, 1 - comm.Rank, tag: 2);
        }, Fast));
        Assert.Contains("deadlock", failure.Message);
        Assert.Contains("rank 0 waits for Receive from rank 1 tag 2", failure.Message);
        Assert.Contains("rank 1 waits for Receive from rank 0 tag 2", failure.Message);
    }

    [Fact]
    public void Collective_MissedByOneRank_NamesTheRankThatLeft()
    {
        // The rank that returned tells the waiting one at once (no need to wait for the deadlock detector).
        var failure = Assert.ThrowsAny<Exception>(() => InProcessLauncher.Run(2, comm =>
        {
            if (comm.Rank == 0) comm.Barrier();
        }, Fast));
        Assert.Contains("rank 1 left the program", failure.Message);
        Assert.Contains("rank 0 waits for Barrier", failure.Message);
    }

    [Fact]
    public void Send_OfNonContiguousTensor_SaysToCallContiguous()
    {
        var failure = Assert.Throws<RankFailedException>(() => InProcessLauncher.Run(2, comm =>
        {
            using Tensor square = torch.ones(4, 3);
            if (comm.Rank == 0) comm.Send(square.t(), 1, tag: 0);
        }, Fast));
        Assert.IsType<ArgumentException>(failure.InnerException);
        Assert.Contains("contiguous", failure.Message);
        Assert.Equal(0, failure.Rank);
    }

    [Fact]
    public void Send_ToRankOutsideTheGroup_Throws()
    {
        var failure = Assert.Throws<RankFailedException>(() => InProcessLauncher.Run(2, comm =>
        {
            using Tensor t = torch.ones(1);
            if (comm.Rank == 1) comm.Send(t, 2, tag: 0);
        }, Fast));
        Assert.IsType<ArgumentOutOfRangeException>(failure.InnerException);
    }

    [Fact]
    public void AllReduce_WithDifferentSizesOnRanks_FailsOnEveryRankWithTheSizes()
    {
        var failure = Assert.Throws<RankFailedException>(() => InProcessLauncher.Run(2, comm =>
        {
            using Tensor t = torch.ones(comm.Rank + 2);
            comm.AllReduce(t, ReduceOp.Sum);
        }, Fast));
        Assert.Contains("2 element(s) on rank 0 but Float32 with 3 element(s) on rank 1", failure.Message);
    }

    [Fact]
    public void Abort_StopsEveryRankWithTheMessage()
    {
        var failure = Assert.Throws<RankFailedException>(() => InProcessLauncher.Run(3, comm =>
        {
            if (comm.Rank == 2) comm.Abort("out of patience");
            comm.Barrier();
        }, Fast));
        Assert.Equal(2, failure.Rank);
        Assert.Contains("out of patience", failure.Message);
    }

    [Fact]
    public void Timeout_StopsALongRun()
    {
        var options = new InProcessOptions(Timeout: TimeSpan.FromMilliseconds(300), StallTimeout: TimeSpan.FromMinutes(1));
        var failure = Assert.ThrowsAny<Exception>(() => InProcessLauncher.Run(2, comm =>
        {
            // Rank 1 keeps working (never blocked), so only the overall timeout can end this.
            if (comm.Rank == 1) { for (int i = 0; i < 200; i++) Thread.Sleep(10); comm.Barrier(); }
            else comm.Barrier();
        }, options));
        Assert.Contains("timeout", failure.Message);
    }

    [Fact]
    public void StartReceive_PostedBeforeTheSend_CompletesOnlyThen()
    {
        InProcessLauncher.Run(2, comm =>
        {
            using Tensor t = torch.zeros(2, dtype: ScalarType.Float64);
            if (comm.Rank == 1)
            {
                ICommRequest receive = comm.StartReceive(t, 0, tag: 1);
                Assert.False(receive.IsCompleted);
                comm.Barrier();
                receive.Wait();
                Assert.Equal([1.5, 2.5], t.data<double>().ToArray());
            }
            else
            {
                comm.Barrier();
                using Tensor payload = torch.tensor(new[] { 1.5, 2.5 });
                comm.Send(payload, 1, tag: 1);
            }
        }, Fast);
    }
}
