using Rannc.Partitioner;

namespace Rannc.Partitioner.Tests;

public class ScheduleTests
{
    public static TheoryData<int[], int, int> Shapes() => new()
    {
        { [1], 8, 4 },
        { [4], 8, 2 },
        { [1, 1], 4, 4 },
        { [2, 3], 12, 2 },
        { [3, 1, 2], 12, 3 },
        { [1, 2, 1, 4], 16, 4 },
        { [2, 2, 2, 2, 2], 10, 5 },
        { [5, 3], 17, 3 },
    };

    private static PipelineTopology Topology(int[] replicas, int batch, int microBatches)
    {
        var stageRanks = new List<IReadOnlyList<int>>();
        int rank = 0;
        foreach (int r in replicas)
        {
            stageRanks.Add(Enumerable.Range(rank, r).ToList());
            rank += r;
        }

        return new PipelineTopology(stageRanks, new MicroBatchLayout(batch, microBatches), rank + 1); // one idle rank
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    public void Build_GPipeAndOneFOneB_PassTheChecker(int[] replicas, int batch, int microBatches)
    {
        PipelineTopology topology = Topology(replicas, batch, microBatches);
        foreach (PipelineScheduleKind kind in new[] { PipelineScheduleKind.GPipe, PipelineScheduleKind.OneFOneB })
        {
            PipelineSchedule schedule = ScheduleBuilder.Build(kind, topology);

            Assert.Empty(ScheduleChecker.FindProblems(schedule, microBatches));
            Assert.Empty(schedule.Ranks[^1]);
        }
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    public void Build_OneFOneB_KeepsAtMostStagesFromHereInFlight(int[] replicas, int batch, int microBatches)
    {
        PipelineTopology topology = Topology(replicas, batch, microBatches);
        PipelineSchedule oneFOneB = ScheduleBuilder.OneFOneB(topology);
        PipelineSchedule gpipe = ScheduleBuilder.GPipe(topology);
        for (int s = 0; s < replicas.Length; s++)
        {
            int rank = topology.StageRanks[s][0];
            Assert.Equal(CostModel.InFlightMicroBatches(PipelineScheduleKind.OneFOneB, microBatches, replicas.Length - s), MaxInFlight(oneFOneB.Ranks[rank]));
            Assert.Equal(CostModel.InFlightMicroBatches(PipelineScheduleKind.GPipe, microBatches, replicas.Length - s), MaxInFlight(gpipe.Ranks[rank]));
        }
    }

    [Fact]
    public void OneFOneB_FourStagesEightMicroBatches_HasTheTextbookOrder()
    {
        PipelineSchedule schedule = ScheduleBuilder.OneFOneB(Topology([1, 1, 1, 1], 8, 8));

        Assert.Equal("0F0 0F1 0F2 0F3 0B0 0F4 0B1 0F5 0B2 0F6 0B3 0F7 0B4 0B5 0B6 0B7", ComputeOrder(schedule.Ranks[0]));
        Assert.Equal("3F0 3B0 3F1 3B1 3F2 3B2 3F3 3B3 3F4 3B4 3F5 3B5 3F6 3B6 3F7 3B7", ComputeOrder(schedule.Ranks[3]));
        Assert.Equal("1RA0<0 1F0 1SA0>2 1RA1<0 1F1 1SA1>2 1RA2<0 1F2 1SA2>2 1RG0<2 1B0 1SG0>0",
            string.Join(' ', schedule.Ranks[1].Take(12)));
    }

    [Fact]
    public void Build_UnequalReplicaCounts_SendsEachOverlappingSliceOnce()
    {
        // Stage 0 has 2 replicas (slices of 3), stage 1 has 3 (slices of 2) for a micro-batch of 6 samples.
        PipelineSchedule schedule = ScheduleBuilder.GPipe(Topology([2, 3], 6, 1));

        Assert.Equal("0F0 0SA0>2 0SA0>3 0RG0<2 0RG0<3 0B0 0AR", string.Join(' ', schedule.Ranks[0]));
        Assert.Equal("0F0 0SA0>3 0SA0>4 0RG0<3 0RG0<4 0B0 0AR", string.Join(' ', schedule.Ranks[1]));
        Assert.Equal("1RA0<0 1RA0<1 1F0 1B0 1SG0>0 1SG0>1 1AR", string.Join(' ', schedule.Ranks[3]));
    }

    [Fact]
    public void Text_RoundTrips()
    {
        PipelineSchedule schedule = ScheduleBuilder.OneFOneB(Topology([2, 1, 3], 12, 3));

        PipelineSchedule parsed = PipelineSchedule.Parse(schedule.ToString());

        Assert.Equal(schedule.ToString(), parsed.ToString());
        Assert.Equal(new PipelineAction(12, ActionKind.SendGradient, 7, 30), PipelineAction.Parse("12SG7>30"));
        Assert.Throws<FormatException>(() => PipelineAction.Parse("F0"));
        Assert.Throws<FormatException>(() => PipelineAction.Parse("1SA0"));
    }

    [Fact]
    public void Checker_MissingReceive_ReportsTheUnmatchedSend()
    {
        PipelineSchedule schedule = ScheduleBuilder.GPipe(Topology([1, 1], 2, 2));
        var ranks = schedule.Ranks.Select(r => r.ToList()).ToList();
        ranks[1].Remove(PipelineAction.Parse("1RA1<0"));

        IReadOnlyList<string> problems = ScheduleChecker.FindProblems(new PipelineSchedule(ranks), 2);

        Assert.Contains(problems, p => p.Contains("Sends without a matching receive", StringComparison.Ordinal)
            && p.Contains("activation message(s) of micro-batch 1 from rank 0 to rank 1", StringComparison.Ordinal));
    }

    [Fact]
    public void Checker_ReceiveBeforeTheSendItWaitsFor_ReportsDeadlockWithGrid()
    {
        PipelineSchedule schedule = ScheduleBuilder.GPipe(Topology([1, 1], 2, 1));
        var ranks = schedule.Ranks.Select(r => r.ToList()).ToList();
        // Rank 0 waits for the gradient of micro-batch 0 before sending its activation: nobody can move.
        ranks[0] = [.. ranks[0].Where(a => a.Kind == ActionKind.RecvGradient), .. ranks[0].Where(a => a.Kind != ActionKind.RecvGradient)];

        IReadOnlyList<string> problems = ScheduleChecker.FindProblems(new PipelineSchedule(ranks), 1);

        string deadlock = Assert.Single(problems, p => p.StartsWith("The schedule deadlocks", StringComparison.Ordinal));
        Assert.Contains("rank 0 waits at step 0: 0RG0<1", deadlock, StringComparison.Ordinal);
        Assert.Contains("rank 1 waits at step 0: 1RA0<0", deadlock, StringComparison.Ordinal);
        Assert.Contains("rank  0", deadlock, StringComparison.Ordinal);
    }

    [Fact]
    public void Checker_BackwardBeforeForward_IsReported()
    {
        var ranks = new List<IReadOnlyList<PipelineAction>> { new[] { PipelineAction.Parse("0B0"), PipelineAction.Parse("0F0") } };

        IReadOnlyList<string> problems = ScheduleChecker.FindProblems(new PipelineSchedule(ranks), 1);

        Assert.Contains("Rank 0 runs the backward of micro-batch 0 before its forward.", problems);
        InvalidOperationException error = Assert.Throws<InvalidOperationException>(() => ScheduleChecker.EnsureValid(new PipelineSchedule(ranks), 1));
        Assert.Contains("0B0", error.Message, StringComparison.Ordinal);
    }

    private static int MaxInFlight(IReadOnlyList<PipelineAction> actions)
    {
        int live = 0, peak = 0;
        foreach (PipelineAction a in actions)
        {
            live += a.Kind == ActionKind.Forward ? 1 : a.Kind == ActionKind.Backward ? -1 : 0;
            peak = Math.Max(peak, live);
        }

        return peak;
    }

    private static string ComputeOrder(IReadOnlyList<PipelineAction> actions) =>
        string.Join(' ', actions.Where(a => a.Kind is ActionKind.Forward or ActionKind.Backward));
}
