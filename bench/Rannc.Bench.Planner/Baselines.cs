using Rannc.Partitioner;

namespace Rannc.Bench.Planning;

/// <summary>
/// DeepSpeed-style baselines (<c>PipelineModule(partition_method=...)</c>): the layers (here: atomic units) are
/// split into <c>S</c> contiguous parts either by count (<c>uniform</c>) or balancing parameter counts
/// (<c>parameters</c>); every stage gets the same number of replicas <c>D / S</c> (data parallelism across the
/// pipeline, as DeepSpeed's topology). Each baseline is then given its best stage count (divisors of D), micro-batch
/// count and schedule, and stages recompute only where they would not fit otherwise; plans are scored with the
/// same objective and simulator as ours.
/// </summary>
internal static class Baselines
{
    public enum Split
    {
        Uniform,
        Parameters,
    }

    public sealed record Result(double Objective, double Simulated);

    public static Result Best(SyntheticModel model, Cluster cluster, PlanningOptions options, Split split)
    {
        IReadOnlyList<IReadOnlyList<int>> units = GraphBlocks.AtomicUnits(model.Graph);
        int devices = cluster.DeviceCount;
        long usable = CostModel.UsableBytes(cluster, options);
        double best = double.PositiveInfinity;
        PlanShape? bestShape = null;
        for (int stages = 1; stages <= Math.Min(devices, units.Count); stages++)
        {
            if (devices % stages != 0)
            {
                continue;
            }

            int replicas = devices / stages;
            List<IReadOnlyList<int>> parts = split == Split.Uniform ? UniformParts(units, stages) : ParameterParts(model.Graph, units, stages);
            for (int m = 1; m <= Math.Min(options.MaxMicroBatches, options.GlobalBatchSize); m++)
            {
                if (replicas > options.GlobalBatchSize / m)
                {
                    break;
                }

                foreach (PipelineScheduleKind schedule in options.Schedules)
                {
                    var plain = new PlanShape(parts, Enumerable.Repeat(replicas, stages).ToList(), Enumerable.Repeat(false, stages).ToList(), m, schedule);
                    PlanEstimate estimate = PlanObjective.Evaluate(model.Graph, model.Costs, cluster, options, plain);
                    PlanShape shape = plain;
                    if (!estimate.FitsMemory)
                    {
                        shape = plain with { Recompute = estimate.PeakBytesPerStage.Select(p => p > usable).ToList() };
                        estimate = PlanObjective.Evaluate(model.Graph, model.Costs, cluster, options, shape);
                    }

                    if (estimate.FitsMemory && estimate.ObjectiveSeconds < best)
                    {
                        best = estimate.ObjectiveSeconds;
                        bestShape = shape;
                    }
                }
            }
        }

        if (bestShape is null)
        {
            return new Result(double.PositiveInfinity, double.PositiveInfinity);
        }

        return new Result(best, Simulate(model, cluster, options, bestShape));
    }

    private static double Simulate(SyntheticModel model, Cluster cluster, PlanningOptions options, PlanShape shape)
    {
        var layout = new MicroBatchLayout(options.GlobalBatchSize, shape.MicroBatchCount);
        var stages = new List<StagePlan>();
        int rank = 0;
        for (int s = 0; s < shape.Stages.Count; s++)
        {
            int replicas = shape.Replicas[s];
            stages.Add(new StagePlan(s, shape.Stages[s].Order().ToList(), Enumerable.Range(rank, replicas).ToList(), shape.Recompute[s], layout.LargestSlice(replicas), 0));
            rank += replicas;
        }

        var plan = new PartitionPlan(
            "baseline", cluster.DeviceCount, options.GlobalBatchSize,
            Enumerable.Range(0, shape.MicroBatchCount).Select(layout.MicroBatchSize).ToList(), shape.Schedule, stages, 0, 0, SearchWasExhaustive: true);
        return PipelineSimulator.Simulate(plan, model.Graph, model.Costs, cluster, options).StepSeconds;
    }

    private static List<IReadOnlyList<int>> UniformParts(IReadOnlyList<IReadOnlyList<int>> units, int stages)
    {
        var parts = new List<IReadOnlyList<int>>();
        int start = 0;
        for (int s = 0; s < stages; s++)
        {
            int size = units.Count / stages + (s < units.Count % stages ? 1 : 0);
            parts.Add(units.Skip(start).Take(size).SelectMany(u => u).ToList());
            start += size;
        }

        return parts;
    }

    /// <summary>Contiguous parts minimising the largest part's parameter bytes (exact linear-partition DP).</summary>
    private static List<IReadOnlyList<int>> ParameterParts(Graph graph, IReadOnlyList<IReadOnlyList<int>> units, int stages)
    {
        int n = units.Count;
        double[] prefix = new double[n + 1];
        for (int i = 0; i < n; i++)
        {
            prefix[i + 1] = prefix[i] + units[i].SelectMany(node => graph.Nodes[node].Parameters).Distinct().Sum(p => (double)graph.Parameters[p].Bytes);
        }

        // best[s, i] = smallest possible largest part when the first i units form s parts.
        var best = new double[stages + 1, n + 1];
        var cut = new int[stages + 1, n + 1];
        for (int s = 0; s <= stages; s++)
        {
            for (int i = 0; i <= n; i++)
            {
                best[s, i] = double.PositiveInfinity;
            }
        }

        best[0, 0] = 0;
        for (int s = 1; s <= stages; s++)
        {
            for (int i = s; i <= n; i++)
            {
                for (int j = s - 1; j < i; j++)
                {
                    double value = Math.Max(best[s - 1, j], prefix[i] - prefix[j]);
                    if (value < best[s, i])
                    {
                        best[s, i] = value;
                        cut[s, i] = j;
                    }
                }
            }
        }

        var parts = new List<IReadOnlyList<int>>();
        int end = n;
        for (int s = stages; s >= 1; s--)
        {
            int start = cut[s, end];
            parts.Insert(0, units.Skip(start).Take(end - start).SelectMany(u => u).ToList());
            end = start;
        }

        return parts;
    }
}
