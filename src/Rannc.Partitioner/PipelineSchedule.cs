using System.Globalization;
using System.Text;

namespace Rannc.Partitioner;

/// <summary>What a rank does in one step of a schedule.</summary>
public enum ActionKind
{
    /// <summary>Forward pass of one micro-batch (text <c>F</c>).</summary>
    Forward,

    /// <summary>Backward pass of one micro-batch, including recomputation when the stage recomputes (text <c>B</c>).</summary>
    Backward,

    /// <summary>Zero-bubble first half of a backward: only the gradient of the micro-batch's stage inputs, which the
    /// previous stage waits for; the graph is kept for the weight pass (text <c>I</c>).</summary>
    BackwardInput,

    /// <summary>Zero-bubble second half of a backward: the gradient of the stage's parameters, accumulated like a full
    /// backward's; frees the micro-batch (text <c>W</c>).</summary>
    BackwardWeight,

    /// <summary>Send this replica's share of a micro-batch's activations to a rank of the next stage (text <c>SA</c>).</summary>
    SendActivation,

    /// <summary>Receive activations of a micro-batch from a rank of the previous stage (text <c>RA</c>).</summary>
    RecvActivation,

    /// <summary>Send the gradient of a micro-batch's received activations to a rank of the previous stage (text <c>SG</c>).</summary>
    SendGradient,

    /// <summary>Receive the gradient of a micro-batch's sent activations from a rank of the next stage (text <c>RG</c>).</summary>
    RecvGradient,

    /// <summary>All-reduce the stage's parameter gradients among all its replicas (text <c>AR</c>).</summary>
    AllReduce,
}

/// <summary>
/// One action of one rank. Text form: stage, kind, micro-batch, and for transfers the peer rank:
/// <c>1F0</c>, <c>1B0</c>, <c>1SA0&gt;3</c> (send to rank 3), <c>1RA0&lt;2</c> (receive from rank 2), <c>1SG0&gt;2</c>,
/// <c>1RG0&lt;3</c>, <c>1AR</c>; the zero-bubble halves of a backward are <c>1I0</c> and <c>1W0</c>. Sends are asynchronous (the sender goes on); receives and all-reduces wait.
/// </summary>
/// <param name="Stage">The stage this rank runs.</param>
/// <param name="Kind">What to do.</param>
/// <param name="MicroBatch">The micro-batch (-1 for <see cref="ActionKind.AllReduce"/>).</param>
/// <param name="Peer">The other rank of a transfer (-1 otherwise).</param>
public readonly record struct PipelineAction(int Stage, ActionKind Kind, int MicroBatch = -1, int Peer = -1)
{
    /// <summary>The compact text form, e.g. <c>1F0</c> or <c>2SA3&gt;5</c>.</summary>
    public override string ToString()
    {
        string stage = Stage.ToString(CultureInfo.InvariantCulture);
        string mb = MicroBatch.ToString(CultureInfo.InvariantCulture);
        string peer = Peer.ToString(CultureInfo.InvariantCulture);
        return Kind switch
        {
            ActionKind.Forward => $"{stage}F{mb}",
            ActionKind.Backward => $"{stage}B{mb}",
            ActionKind.BackwardInput => $"{stage}I{mb}",
            ActionKind.BackwardWeight => $"{stage}W{mb}",
            ActionKind.SendActivation => $"{stage}SA{mb}>{peer}",
            ActionKind.RecvActivation => $"{stage}RA{mb}<{peer}",
            ActionKind.SendGradient => $"{stage}SG{mb}>{peer}",
            ActionKind.RecvGradient => $"{stage}RG{mb}<{peer}",
            ActionKind.AllReduce => $"{stage}AR",
            _ => throw new InvalidOperationException($"Unknown action kind {Kind}."),
        };
    }

    /// <summary>Parses the text form written by <see cref="ToString"/>.</summary>
    public static PipelineAction Parse(string text)
    {
        int i = 0;
        while (i < text.Length && char.IsAsciiDigit(text[i]))
        {
            i++;
        }

        if (i == 0)
        {
            throw new FormatException($"Action '{text}' does not start with a stage number.");
        }

        int stage = int.Parse(text.AsSpan(0, i), CultureInfo.InvariantCulture);
        string rest = text[i..];
        if (rest == "AR")
        {
            return new PipelineAction(stage, ActionKind.AllReduce);
        }

        (ActionKind kind, int codeLength, char? peerMark) = rest switch
        {
            _ when rest.StartsWith("SA", StringComparison.Ordinal) => (ActionKind.SendActivation, 2, '>'),
            _ when rest.StartsWith("RA", StringComparison.Ordinal) => (ActionKind.RecvActivation, 2, '<'),
            _ when rest.StartsWith("SG", StringComparison.Ordinal) => (ActionKind.SendGradient, 2, '>'),
            _ when rest.StartsWith("RG", StringComparison.Ordinal) => (ActionKind.RecvGradient, 2, '<'),
            _ when rest.StartsWith('F') => (ActionKind.Forward, 1, (char?)null),
            _ when rest.StartsWith('B') => (ActionKind.Backward, 1, (char?)null),
            _ when rest.StartsWith('I') => (ActionKind.BackwardInput, 1, (char?)null),
            _ when rest.StartsWith('W') => (ActionKind.BackwardWeight, 1, (char?)null),
            _ => throw new FormatException($"Action '{text}' has an unknown kind."),
        };
        string body = rest[codeLength..];
        int peer = -1;
        if (peerMark is char mark)
        {
            int at = body.IndexOf(mark, StringComparison.Ordinal);
            if (at < 0)
            {
                throw new FormatException($"Action '{text}' lacks its peer ('{mark}rank').");
            }

            peer = int.Parse(body.AsSpan(at + 1), CultureInfo.InvariantCulture);
            body = body[..at];
        }

        return new PipelineAction(stage, kind, int.Parse(body, CultureInfo.InvariantCulture), peer);
    }
}

/// <summary>Helpers on <see cref="ActionKind"/>.</summary>
public static class ActionKinds
{
    /// <summary>Whether the action computes (a forward, a backward or one of the zero-bubble halves of a backward).</summary>
    public static bool IsCompute(this ActionKind kind) =>
        kind is ActionKind.Forward or ActionKind.Backward or ActionKind.BackwardInput or ActionKind.BackwardWeight;
}

/// <summary>The actions of every rank, in order; ranks without a role have an empty list.</summary>
/// <param name="Ranks">Actions per rank, indexed by rank.</param>
public sealed record PipelineSchedule(IReadOnlyList<IReadOnlyList<PipelineAction>> Ranks)
{
    /// <summary>One line per rank: <c>rank 0: 0F0 0SA0&gt;1 …</c>.</summary>
    public override string ToString()
    {
        var text = new StringBuilder();
        for (int r = 0; r < Ranks.Count; r++)
        {
            text.Append(CultureInfo.InvariantCulture, $"rank {r}:");
            foreach (PipelineAction action in Ranks[r])
            {
                text.Append(' ').Append(action);
            }

            text.Append('\n');
        }

        return text.ToString();
    }

    /// <summary>Parses the form written by <see cref="ToString"/>.</summary>
    public static PipelineSchedule Parse(string text)
    {
        var ranks = new List<IReadOnlyList<PipelineAction>>();
        foreach (string line in text.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            int colon = line.IndexOf(':', StringComparison.Ordinal);
            string[] tokens = line[(colon + 1)..].Split(' ', StringSplitOptions.RemoveEmptyEntries);
            ranks.Add(tokens.Select(PipelineAction.Parse).ToList());
        }

        return new PipelineSchedule(ranks);
    }

    /// <summary>
    /// A rank × step grid (one column per action index, aligned), used in error messages. With
    /// <paramref name="computeOnly"/>, transfers are left out so the pipeline shape is easy to see.
    /// </summary>
    public string FormatGrid(bool computeOnly = false, int maxColumns = 48)
    {
        var rows = Ranks
            .Select(actions => actions
                .Where(a => !computeOnly || a.Kind.IsCompute() || a.Kind == ActionKind.AllReduce)
                .Select(a => a.ToString()).ToList())
            .ToList();
        int columns = rows.Count == 0 ? 0 : rows.Max(r => r.Count);
        int shown = Math.Min(columns, maxColumns);
        int width = Math.Max(4, rows.SelectMany(r => r.Take(shown)).Select(t => t.Length).DefaultIfEmpty(0).Max());
        var text = new StringBuilder();
        text.Append("rank".PadRight(6));
        for (int c = 0; c < shown; c++)
        {
            text.Append(c.ToString(CultureInfo.InvariantCulture).PadRight(width + 1));
        }

        text.Append(columns > shown ? "…\n" : "\n");
        for (int r = 0; r < rows.Count; r++)
        {
            text.Append(r.ToString(CultureInfo.InvariantCulture).PadRight(6));
            for (int c = 0; c < shown; c++)
            {
                text.Append((c < rows[r].Count ? rows[r][c] : ".").PadRight(width + 1));
            }

            text.Append(rows[r].Count > shown ? "…\n" : "\n");
        }

        return text.ToString();
    }
}

/// <summary>Which ranks run which stage, and how samples map onto micro-batches and replicas.</summary>
/// <param name="StageRanks">Rank of each replica of each stage.</param>
/// <param name="Layout">The micro-batch and slice rule.</param>
/// <param name="WorldSize">Number of ranks (some may be idle).</param>
public sealed record PipelineTopology(IReadOnlyList<IReadOnlyList<int>> StageRanks, MicroBatchLayout Layout, int WorldSize)
{
    /// <summary>The topology of a plan.</summary>
    public static PipelineTopology FromPlan(PartitionPlan plan) =>
        new(plan.Stages.Select(s => s.ReplicaRanks).ToList(), plan.Layout, plan.DeviceCount);
}

/// <summary>Pure builders of the schedules the planner knows.</summary>
public static class ScheduleBuilder
{
    /// <summary>Builds the schedule of <paramref name="kind"/> for <paramref name="topology"/>.</summary>
    public static PipelineSchedule Build(PipelineScheduleKind kind, PipelineTopology topology) => kind switch
    {
        PipelineScheduleKind.GPipe => GPipe(topology),
        PipelineScheduleKind.OneFOneB => OneFOneB(topology),
        PipelineScheduleKind.ZeroBubble => ZeroBubble(topology),
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, "Unknown schedule."),
    };

    /// <summary>Fill-drain: every rank runs all forwards (micro-batch order), then all backwards (same order),
    /// then the all-reduce of its stage.</summary>
    public static PipelineSchedule GPipe(PipelineTopology topology) =>
        Assemble(topology, (stage, stageCount, microBatches) =>
            Enumerable.Range(0, microBatches).Select(m => (ActionKind.Forward, m))
                .Concat(Enumerable.Range(0, microBatches).Select(m => (ActionKind.Backward, m))));

    /// <summary>1F1B (PipeDream-flush): stage <c>s</c> of <c>S</c> runs <c>min(M, S−s−1)</c> warm-up forwards,
    /// then alternates one forward and one backward, then drains the remaining backwards.</summary>
    public static PipelineSchedule OneFOneB(PipelineTopology topology) =>
        Assemble(topology, (stage, stageCount, microBatches) => OneFOneBOrder(stage, stageCount, microBatches));

    /// <summary>
    /// Zero bubble (ZB-H1 style): each backward is split into its input-gradient pass (<c>I</c>, what the previous
    /// stage waits for) and its weight-gradient pass (<c>W</c>), and the <c>W</c> passes fill the idle time that 1F1B
    /// spends waiting for gradients. Memory is 1F1B's: stage <c>s</c> holds at most <c>min(M, S−s)</c> micro-batches
    /// from their forward to their <c>W</c> (see <see cref="ZeroBubbleOrder"/>).
    /// </summary>
    public static PipelineSchedule ZeroBubble(PipelineTopology topology)
    {
        int stageCount = topology.StageRanks.Count;
        IReadOnlyList<IReadOnlyList<(ActionKind, int)>> orders = ZeroBubbleOrder(stageCount, topology.Layout.MicroBatchCount);
        return Assemble(topology, (stage, _, _) => orders[stage]);
    }

    /// <summary>
    /// The compute order of every stage of the zero-bubble schedule, made by list scheduling on unit times (a forward,
    /// an input-gradient and a weight-gradient pass take one unit each; transfers none): whenever a stage is free it
    /// starts the action that can start earliest; on a tie, first an input-gradient pass (it is on the critical path),
    /// then a forward (only while the stage holds fewer than <c>min(M, S−s)</c> micro-batches, 1F1B's in-flight count,
    /// counted from a forward to its weight pass), then a weight-gradient pass; on a tie between stages, the lower stage
    /// first. An order taken from a run that respected every dependency cannot deadlock whatever the real durations are:
    /// each receive waits for a send that its peer runs earlier in its own order. Deterministic; O(3·M·S²).
    /// </summary>
    public static IReadOnlyList<IReadOnlyList<(ActionKind Kind, int MicroBatch)>> ZeroBubbleOrder(int stageCount, int microBatches)
    {
        var orders = Enumerable.Range(0, stageCount).Select(_ => new List<(ActionKind, int)>()).ToList();
        var forwardEnd = new double[stageCount, microBatches];
        var inputEnd = new double[stageCount, microBatches];
        int[] nextForward = new int[stageCount], nextInput = new int[stageCount], nextWeight = new int[stageCount];
        double[] free = new double[stageCount];
        for (int done = 0; done < 3 * stageCount * microBatches; done++)
        {
            (double Start, int Priority, int Stage, ActionKind Kind) best = (double.PositiveInfinity, int.MaxValue, -1, ActionKind.Forward);
            for (int s = 0; s < stageCount; s++)
            {
                int limit = CostModel.InFlightMicroBatches(PipelineScheduleKind.ZeroBubble, microBatches, stageCount - s);
                var candidates = new List<(double Start, int Priority, ActionKind Kind)>();
                int m = nextInput[s];
                if (m < nextForward[s] && (s == stageCount - 1 || m < nextInput[s + 1]))
                {
                    double ready = s == stageCount - 1 ? forwardEnd[s, m] : inputEnd[s + 1, m];
                    candidates.Add((Math.Max(free[s], ready), 0, ActionKind.BackwardInput));
                }

                m = nextForward[s];
                if (m < microBatches && m - nextWeight[s] < limit && (s == 0 || m < nextForward[s - 1]))
                {
                    candidates.Add((Math.Max(free[s], s == 0 ? 0 : forwardEnd[s - 1, m]), 1, ActionKind.Forward));
                }

                if (nextWeight[s] < nextInput[s])
                {
                    candidates.Add((free[s], 2, ActionKind.BackwardWeight));
                }

                foreach ((double start, int priority, ActionKind kind) in candidates)
                {
                    if (start < best.Start || (start == best.Start && s == best.Stage && priority < best.Priority))
                    {
                        best = (start, priority, s, kind);
                    }
                }
            }

            if (best.Stage < 0)
            {
                throw new InvalidOperationException($"The zero-bubble order of {stageCount} stages and {microBatches} micro-batches got stuck.");
            }

            int stage = best.Stage;
            double end = best.Start + 1;
            free[stage] = end;
            int microBatch = best.Kind switch
            {
                ActionKind.Forward => nextForward[stage]++,
                ActionKind.BackwardInput => nextInput[stage]++,
                _ => nextWeight[stage]++,
            };
            if (best.Kind == ActionKind.Forward)
            {
                forwardEnd[stage, microBatch] = end;
            }
            else if (best.Kind == ActionKind.BackwardInput)
            {
                inputEnd[stage, microBatch] = end;
            }

            orders[stage].Add((best.Kind, microBatch));
        }

        return orders;
    }

    private static IEnumerable<(ActionKind Kind, int MicroBatch)> OneFOneBOrder(int stage, int stageCount, int microBatches)
    {
        int warmup = Math.Min(microBatches, stageCount - stage - 1);
        for (int m = 0; m < warmup; m++)
        {
            yield return (ActionKind.Forward, m);
        }

        for (int m = 0; m + warmup < microBatches; m++)
        {
            yield return (ActionKind.Forward, m + warmup);
            yield return (ActionKind.Backward, m);
        }

        for (int m = microBatches - warmup; m < microBatches; m++)
        {
            yield return (ActionKind.Backward, m);
        }
    }

    /// <summary>Expands an order of compute steps into actions with their transfers: a forward receives activations
    /// before and sends them after; a backward (or its input-gradient half) receives gradients before and sends the
    /// inputs' gradients after; a weight-gradient pass exchanges nothing.</summary>
    private static PipelineSchedule Assemble(
        PipelineTopology topology, Func<int, int, int, IEnumerable<(ActionKind Kind, int MicroBatch)>> order)
    {
        var ranks = Enumerable.Range(0, topology.WorldSize).Select(_ => new List<PipelineAction>()).ToList();
        int stageCount = topology.StageRanks.Count;
        int microBatches = topology.Layout.MicroBatchCount;
        for (int s = 0; s < stageCount; s++)
        {
            IReadOnlyList<int> ranksOfStage = topology.StageRanks[s];
            int replicas = ranksOfStage.Count;
            List<int>[,] upstream = PeersPerReplica(topology, s - 1, s, microBatches, receiving: true);
            List<int>[,] downstream = PeersPerReplica(topology, s, s + 1, microBatches, receiving: false);
            var stageOrder = order(s, stageCount, microBatches).ToList();
            for (int j = 0; j < replicas; j++)
            {
                List<PipelineAction> actions = ranks[ranksOfStage[j]];
                foreach ((ActionKind kind, int m) in stageOrder)
                {
                    // Plain loops, not LINQ: at a thousand ranks and micro-batches this runs millions of times.
                    if (kind == ActionKind.Forward)
                    {
                        AddTransfers(actions, upstream[j, m], s, ActionKind.RecvActivation, m);
                        actions.Add(new PipelineAction(s, kind, m));
                        AddTransfers(actions, downstream[j, m], s, ActionKind.SendActivation, m);
                    }
                    else if (kind is ActionKind.Backward or ActionKind.BackwardInput)
                    {
                        AddTransfers(actions, downstream[j, m], s, ActionKind.RecvGradient, m);
                        actions.Add(new PipelineAction(s, kind, m));
                        AddTransfers(actions, upstream[j, m], s, ActionKind.SendGradient, m);
                    }
                    else
                    {
                        actions.Add(new PipelineAction(s, kind, m));
                    }
                }

                if (replicas > 1)
                {
                    actions.Add(new PipelineAction(s, ActionKind.AllReduce));
                }
            }
        }

        return new PipelineSchedule(ranks);
    }

    private static void AddTransfers(List<PipelineAction> actions, List<int> peers, int stage, ActionKind kind, int microBatch)
    {
        foreach (int peer in peers)
        {
            actions.Add(new PipelineAction(stage, kind, microBatch, peer));
        }
    }

    /// <summary>For each replica of one side of the boundary between stages <paramref name="from"/> and
    /// <paramref name="to"/> and each micro-batch, the ranks of the other side it exchanges slices with, in sample order.
    /// Empty lists at the ends of the pipeline.</summary>
    private static List<int>[,] PeersPerReplica(PipelineTopology topology, int from, int to, int microBatches, bool receiving)
    {
        int side = receiving ? to : from;
        int replicas = side >= 0 && side < topology.StageRanks.Count ? topology.StageRanks[side].Count : 0;
        var peers = new List<int>[replicas, microBatches];
        bool pipelineEnd = from < 0 || to >= topology.StageRanks.Count;
        var none = new List<int>(); // shared by every slot at the ends of the pipeline, which stay empty
        for (int j = 0; j < replicas; j++)
        {
            for (int m = 0; m < microBatches; m++)
            {
                peers[j, m] = pipelineEnd ? none : [];
            }
        }

        if (pipelineEnd)
        {
            return peers;
        }

        IReadOnlyList<int> fromRanks = topology.StageRanks[from], toRanks = topology.StageRanks[to];
        for (int m = 0; m < microBatches; m++)
        {
            foreach (SliceTransfer transfer in topology.Layout.Transfers(m, fromRanks.Count, toRanks.Count))
            {
                if (receiving)
                {
                    peers[transfer.ToReplica, m].Add(fromRanks[transfer.FromReplica]);
                }
                else
                {
                    peers[transfer.FromReplica, m].Add(toRanks[transfer.ToReplica]);
                }
            }
        }

        return peers;
    }
}
