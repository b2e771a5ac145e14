using System.Diagnostics;
using Rannc.Communication;
using Rannc.Execution;
using Rannc.Samples;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Tests.Faults;

/// <summary>
/// Watchdog and leave messages of a rank in the middle of training say where it was: the step, its stage and
/// replica, the schedule action with its micro-batch and peer, the transfer's tag, the ranks it waits on, and what it
/// last completed. In-process; the MPI counterparts are in <see cref="MpiWatchdogTests"/>.
/// </summary>
public sealed class WatchdogMessageTests
{
    private static readonly SampleTask Mlp = SampleTasks.Mlp(inputSize: 6, hiddenSize: 8, hiddenLayers: 3, classes: 3);
    private static readonly SampleTask Bert = SampleTasks.Bert(SampleTasks.BertConfig(layers: 2, hidden: 32), sequenceLength: 8, maskedPerSequence: 1);

    [Fact]
    public void ARankThatLeavesMidPipeline_IsNamedWithTheStepActionAndMicroBatchOfTheWaitingRank()
    {
        var failure = Assert.Throws<RankFailedException>(() => InProcessLauncher.Run(2, comm =>
        {
            using RanncModule rannc = Create(comm, Mlp, (2, 1));
            Train(rannc, Mlp, steps: comm.Rank == 1 ? 2 : 4);
        }, Launch(TimeSpan.FromSeconds(60))));
        string message = failure.ToString();
        Assert.Contains("rank 1 left the program (its delegate returned) while rank 0 waits for Receive from rank 1 tag", message);
        Assert.Matches(@"during step 2, stage 0 replica 0, receiving gradients of micro-batch [01] from rank 1;", message);
        Assert.Matches(@"last completed: .+ during step [12]\b", message);
    }

    [Fact]
    public void ARankStuckMidPipeline_TimesOutNamingTheStepActionMicroBatchAndTheRankWaitedOn()
    {
        var clock = Stopwatch.StartNew();
        var failure = Assert.Throws<RankFailedException>(() => InProcessLauncher.Run(2, comm =>
        {
            using RanncModule rannc = Create(comm, Mlp, (2, 1));
            Train(rannc, Mlp, steps: 2);
            comm.WaitTimeout = TimeSpan.FromSeconds(3); // after deployment, so a loaded machine cannot trip it while planning
            if (comm.Rank == 1) Thread.Sleep(TimeSpan.FromSeconds(60)); // stuck in user code
            Train(rannc, Mlp, steps: 2);
        }, Launch(TimeSpan.FromSeconds(100))));
        string message = failure.ToString();
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(60), $"took {clock.Elapsed}: {message}");
        Assert.Matches(@"watchdog: rank 0 waited 3(\.\d)? s \(RANNC_TIMEOUT=3\) for Receive from rank 1 tag \d+ \(\d+ bytes, group \d+\) " +
            @"during step 2, stage 0 replica 0, receiving gradients of micro-batch [01] from rank 1, waiting on rank\(s\) 1; last completed: ", message);
    }

    [Fact]
    public void ARankStuckBeforeTheGradientAllReduce_TimesOutNamingTheCollectiveAndTheMissingRank()
    {
        var failure = Assert.Throws<RankFailedException>(() => InProcessLauncher.Run(2, comm =>
        {
            using RanncModule rannc = Create(comm, Mlp, (1, 2));
            Train(rannc, Mlp, steps: 1);
            comm.WaitTimeout = TimeSpan.FromSeconds(3);
            if (comm.Rank == 1) Thread.Sleep(TimeSpan.FromSeconds(60));
            Train(rannc, Mlp, steps: 1);
        }, Launch(TimeSpan.FromSeconds(100))));
        Assert.Matches(@"watchdog: rank 0 waited 3(\.\d)? s \(RANNC_TIMEOUT=3\) for AllReduce \(collective of world ranks 0,1\) " +
            @"during step 1, stage 0 replica 0, all-reducing the stage's gradients among its replicas, waiting on rank\(s\) 1; ", failure.ToString());
    }

    [Fact]
    public void ABertRankThatReturnsEarlyOn2x2_EndsTheRunWithin10SecondsNamingIt()
    {
        long leftAt = 0;
        var clock = Stopwatch.StartNew();
        var failure = Assert.Throws<RankFailedException>(() => InProcessLauncher.Run(4, comm =>
        {
            using RanncModule rannc = Create(comm, Bert, (2, 2));
            Train(rannc, Bert, steps: 3);
            if (comm.Rank == 3)
            {
                Interlocked.Exchange(ref leftAt, clock.Elapsed.Ticks);
                return;
            }
            Train(rannc, Bert, steps: 1000, firstStep: 3);
        }, Launch(TimeSpan.FromSeconds(170))));
        TimeSpan afterLeaving = clock.Elapsed - TimeSpan.FromTicks(Interlocked.Read(ref leftAt));
        string message = failure.ToString();
        Assert.True(leftAt > 0, message);
        Assert.True(afterLeaving < TimeSpan.FromSeconds(10), $"ended {afterLeaving} after rank 3 left: {message}");
        Assert.Matches(@"rank 3 left the program \(its delegate returned\) while rank [0-2] waits for .+ during step 3, stage \d replica \d, ", message);
    }

    private static InProcessOptions Launch(TimeSpan timeout) => new(Timeout: timeout, WaitTimeout: TimeSpan.FromSeconds(60));

    private static RanncModule Create(ICommunicator comm, SampleTask task, (int Stages, int Replicas) shape)
    {
        nn.Module model = SeededModels.Create(task.CreateModel, 3);
        // Inputs are checked on the first step only, so the later waits are the schedule's own.
        return new RanncModule(model, torch.optim.SGD(model.parameters(), 0.1), comm, new RanncOptions
        {
            ForcedShape = shape, MicroBatches = shape.Stages > 1 ? 2 : 1, CheckInputSteps = 1, PlanCacheDirectory = "", ProfileRepeats = 1, Log = _ => { },
        });
    }

    private static void Train(RanncModule rannc, SampleTask task, int steps, int firstStep = 0)
    {
        for (int step = firstStep; step < firstStep + steps; step++)
        {
            Tensor[] batch = task.CreateBatch(8, step).Select(t => t.is_floating_point() ? t.to_type(ScalarType.Float64) : t).ToArray();
            rannc.Optimizer.zero_grad();
            using Tensor loss = rannc.forward(batch);
            loss.backward();
            rannc.Optimizer.step();
        }
    }
}
