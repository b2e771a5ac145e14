using System.Globalization;
using System.Text;

namespace Rannc.Partitioner;

/// <summary>Durations the execution engine asks for.</summary>
internal interface IActionTimer
{
    double ComputeSeconds(int rank, PipelineAction action);

    double TransferSeconds(int fromRank, PipelineAction send);

    double AllReduceSeconds(int stage, IReadOnlyList<int> ranks);
}

/// <summary>The outcome of running a schedule: per-rank finish and busy times, or the reason it got stuck.</summary>
internal sealed record ExecutionResult(double[] FinishSeconds, double[] ComputeSeconds, string? Failure);

/// <summary>
/// Runs a schedule as an event simulation. Every rank executes its actions in order. Compute takes the rank's
/// time; a send is posted and moves on a per-(sender, receiver) channel that carries one message at a time;
/// a receive waits for the matching message (same kind, micro-batch, sender); an all-reduce waits until every
/// replica of the stage reaches it, starts when the last of them began its final backward (gradients are reduced
/// in buckets as they are produced), and ends no earlier than every participant's last backward.
/// </summary>
internal static class ScheduleEngine
{
    /// <param name="record">When given, told each action's rank, start and end (a send: posted at start, arrives at end).</param>
    public static ExecutionResult Run(PipelineSchedule schedule, IActionTimer timer, Action<int, PipelineAction, double, double>? record = null)
    {
        int rankCount = schedule.Ranks.Count;
        int[] next = new int[rankCount];
        double[] clock = new double[rankCount];
        double[] busy = new double[rankCount];
        double[] lastBackwardStart = new double[rankCount];
        // Channels and messages are keyed by packed integers (see ChannelKey, MessageKey): at a thousand ranks and
        // micro-batches a step has millions of messages, and tuple keys with a queue per message dominated the run.
        int microBatchLimit = 1;
        var channelFree = new Dictionary<long, double>();
        var firstArrival = new Dictionary<long, double>();       // the oldest message not yet received, per key
        var laterArrivals = new Dictionary<long, Queue<double>>(); // further messages with the same key (a faulty schedule)
        var groups = new Dictionary<int, List<int>>();
        for (int r = 0; r < rankCount; r++)
        {
            foreach (PipelineAction action in schedule.Ranks[r])
            {
                microBatchLimit = Math.Max(microBatchLimit, action.MicroBatch + 1);
            }

            foreach (int stage in schedule.Ranks[r].Where(a => a.Kind == ActionKind.AllReduce).Select(a => a.Stage).Distinct())
            {
                (groups.TryGetValue(stage, out List<int>? g) ? g : groups[stage] = []).Add(r);
            }
        }

        bool progress = true;
        while (progress)
        {
            progress = false;
            for (int r = 0; r < rankCount; r++)
            {
                IReadOnlyList<PipelineAction> actions = schedule.Ranks[r];
                while (next[r] < actions.Count)
                {
                    PipelineAction action = actions[next[r]];
                    bool done = action.Kind switch
                    {
                        ActionKind.Forward or ActionKind.Backward or ActionKind.BackwardInput or ActionKind.BackwardWeight => Compute(r, action),
                        ActionKind.SendActivation or ActionKind.SendGradient => Send(r, action),
                        ActionKind.RecvActivation or ActionKind.RecvGradient => Receive(r, action),
                        ActionKind.AllReduce => AllReduce(r, action),
                        _ => throw new InvalidOperationException($"Unknown action kind {action.Kind}."),
                    };
                    if (!done)
                    {
                        break;
                    }

                    progress = true;
                }
            }
        }

        if (Enumerable.Range(0, rankCount).Any(r => next[r] < schedule.Ranks[r].Count))
        {
            var blocked = new StringBuilder();
            for (int r = 0; r < rankCount; r++)
            {
                if (next[r] < schedule.Ranks[r].Count)
                {
                    blocked.Append(CultureInfo.InvariantCulture, $"  rank {r} waits at step {next[r]}: {schedule.Ranks[r][next[r]]}\n");
                }
            }

            return new ExecutionResult(clock, busy, "The schedule deadlocks:\n" + blocked + schedule.FormatGrid());
        }

        var unreceived = firstArrival.Keys.Order().Select(key =>
        {
            (int from, int to, bool gradient, int microBatch) = DecodeMessageKey(key);
            int count = 1 + (laterArrivals.TryGetValue(key, out Queue<double>? later) ? later.Count : 0);
            return $"  {count} {(gradient ? "gradient" : "activation")} message(s) of micro-batch {microBatch} from rank {from} to rank {to}";
        }).ToList();
        if (unreceived.Count > 0)
        {
            return new ExecutionResult(clock, busy,
                "Sends without a matching receive:\n" + string.Join('\n', unreceived) + "\n" + schedule.FormatGrid());
        }

        return new ExecutionResult(clock, busy, null);

        bool Compute(int r, PipelineAction action)
        {
            if (action.Kind is ActionKind.Backward or ActionKind.BackwardWeight)
            {
                // The passes that produce parameter gradients (the all-reduce's buckets fill during the last one).
                lastBackwardStart[r] = clock[r];
            }

            double seconds = timer.ComputeSeconds(r, action);
            record?.Invoke(r, action, clock[r], clock[r] + seconds);
            clock[r] += seconds;
            busy[r] += seconds;
            next[r]++;
            return true;
        }

        bool Send(int r, PipelineAction action)
        {
            long channel = (long)r * rankCount + action.Peer;
            double start = Math.Max(clock[r], channelFree.GetValueOrDefault(channel));
            double arrival = start + timer.TransferSeconds(r, action);
            channelFree[channel] = arrival;
            record?.Invoke(r, action, clock[r], arrival);
            long key = MessageKey(r, action.Peer, action.Kind == ActionKind.SendGradient, action.MicroBatch);
            if (!firstArrival.TryAdd(key, arrival))
            {
                (laterArrivals.TryGetValue(key, out Queue<double>? q) ? q : laterArrivals[key] = new Queue<double>()).Enqueue(arrival);
            }

            next[r]++;
            return true;
        }

        bool Receive(int r, PipelineAction action)
        {
            long key = MessageKey(action.Peer, r, action.Kind == ActionKind.RecvGradient, action.MicroBatch);
            if (!firstArrival.Remove(key, out double arrival))
            {
                return false;
            }

            if (laterArrivals.TryGetValue(key, out Queue<double>? later))
            {
                // Messages with one key are received in the order they were sent.
                firstArrival[key] = later.Dequeue();
                if (later.Count == 0)
                {
                    laterArrivals.Remove(key);
                }
            }

            double waitedFrom = clock[r];
            clock[r] = Math.Max(clock[r], arrival);
            record?.Invoke(r, action, waitedFrom, clock[r]);
            next[r]++;
            return true;
        }

        long MessageKey(int from, int to, bool gradient, int microBatch) =>
            (((long)from * rankCount + to) * 2 + (gradient ? 1 : 0)) * microBatchLimit + microBatch;

        (int From, int To, bool Gradient, int MicroBatch) DecodeMessageKey(long key)
        {
            long pairAndKind = key / microBatchLimit;
            long pair = pairAndKind / 2;
            return ((int)(pair / rankCount), (int)(pair % rankCount), pairAndKind % 2 == 1, (int)(key % microBatchLimit));
        }

        bool AllReduce(int r, PipelineAction action)
        {
            List<int> group = groups[action.Stage];
            bool allArrived = group.All(p => next[p] < schedule.Ranks[p].Count
                && schedule.Ranks[p][next[p]] is { Kind: ActionKind.AllReduce } a && a.Stage == action.Stage);
            if (!allArrived)
            {
                return false;
            }

            double start = group.Max(p => lastBackwardStart[p]);
            double end = Math.Max(group.Max(p => clock[p]), start + timer.AllReduceSeconds(action.Stage, group));
            foreach (int p in group)
            {
                record?.Invoke(p, schedule.Ranks[p][next[p]], clock[p], end);
                clock[p] = end;
                next[p]++;
            }

            return true;
        }
    }
}

/// <summary>Checks a schedule before anyone runs it: each micro-batch runs forward once and then backward once (or,
/// zero bubble, its input-gradient pass once and then its weight-gradient pass once) on every rank with a role, every
/// send has its receive, and nothing deadlocks.</summary>
public static class ScheduleChecker
{
    private sealed class ZeroTimer : IActionTimer
    {
        public double ComputeSeconds(int rank, PipelineAction action) => 0;

        public double TransferSeconds(int fromRank, PipelineAction send) => 0;

        public double AllReduceSeconds(int stage, IReadOnlyList<int> ranks) => 0;
    }

    /// <summary>Every problem found, as readable text with the rank × step grid; empty when the schedule is sound.</summary>
    public static IReadOnlyList<string> FindProblems(PipelineSchedule schedule, int microBatchCount)
    {
        var problems = new List<string>();
        for (int r = 0; r < schedule.Ranks.Count; r++)
        {
            IReadOnlyList<PipelineAction> actions = schedule.Ranks[r];
            if (actions.Count == 0)
            {
                continue;
            }

            int stage = actions[0].Stage;
            if (actions.Any(a => a.Stage != stage))
            {
                problems.Add($"Rank {r} runs actions of more than one stage.");
            }

            for (int m = 0; m < microBatchCount; m++)
            {
                int forward = IndexOfOnly(actions, ActionKind.Forward, m, out int forwardCount);
                int backward = IndexOfOnly(actions, ActionKind.Backward, m, out int backwardCount);
                int input = IndexOfOnly(actions, ActionKind.BackwardInput, m, out int inputCount);
                int weight = IndexOfOnly(actions, ActionKind.BackwardWeight, m, out int weightCount);
                bool whole = backwardCount == 1 && inputCount == 0 && weightCount == 0;
                bool split = backwardCount == 0 && inputCount == 1 && weightCount == 1;
                if (forwardCount != 1 || !(whole || split))
                {
                    problems.Add($"Rank {r} runs micro-batch {m} forward {forwardCount}, backward {backwardCount}, input-gradient "
                        + $"{inputCount} and weight-gradient {weightCount} times (expected forward once and either backward once "
                        + "or each zero-bubble half once).");
                }
                else if (whole && backward < forward)
                {
                    problems.Add($"Rank {r} runs the backward of micro-batch {m} before its forward.");
                }
                else if (split && !(forward < input && input < weight))
                {
                    problems.Add($"Rank {r} does not run micro-batch {m} in the order forward, input gradient, weight gradient.");
                }
            }
        }

        ExecutionResult result = ScheduleEngine.Run(schedule, new ZeroTimer());
        if (result.Failure is not null)
        {
            problems.Add(result.Failure);
        }

        return problems;
    }

    /// <summary>Throws <see cref="InvalidOperationException"/> with every problem and the grid.</summary>
    public static void EnsureValid(PipelineSchedule schedule, int microBatchCount)
    {
        IReadOnlyList<string> problems = FindProblems(schedule, microBatchCount);
        if (problems.Count > 0)
        {
            throw new InvalidOperationException(
                "The pipeline schedule is invalid:\n" + string.Join('\n', problems) + "\n" + schedule.FormatGrid(computeOnly: true));
        }
    }

    private static int IndexOfOnly(IReadOnlyList<PipelineAction> actions, ActionKind kind, int microBatch, out int count)
    {
        int index = -1;
        count = 0;
        for (int i = 0; i < actions.Count; i++)
        {
            if (actions[i].Kind == kind && actions[i].MicroBatch == microBatch)
            {
                index = i;
                count++;
            }
        }

        return index;
    }
}
