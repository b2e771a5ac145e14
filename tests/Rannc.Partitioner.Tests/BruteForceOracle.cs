using Rannc.Partitioner;

namespace Rannc.Partitioner.Tests;

/// <summary>
/// Enumerates every plan shape the options allow — contiguous partitions of the nodes × replica counts ×
/// recomputation per stage × micro-batch counts × schedules — and evaluates each with <see cref="PlanObjective"/>.
/// Only for graphs whose nodes are each their own atomic unit and need no coarsening.
/// </summary>
internal static class BruteForceOracle
{
    public sealed record Result(double BestObjective, PlanShape? BestShape, long SmallestPeak, int ShapesEvaluated);

    public static Result Solve(PlanningCase input)
    {
        (Graph graph, CostTable costs, Cluster cluster, PlanningOptions options) = input;
        int n = graph.Nodes.Count;
        int devices = cluster.DeviceCount;
        double best = double.PositiveInfinity;
        PlanShape? bestShape = null;
        long smallestPeak = long.MaxValue;
        int evaluated = 0;
        int maxStages = Math.Min(n, options.MaxStages);
        for (int m = options.MinMicroBatches; m <= Math.Min(options.MaxMicroBatches, options.GlobalBatchSize); m++)
        {
            int replicaLimit = Math.Min(devices, options.GlobalBatchSize / m);
            foreach (PipelineScheduleKind schedule in options.Schedules.Distinct())
            {
                for (int stages = options.MinStages; stages <= maxStages; stages++)
                {
                    foreach (List<IReadOnlyList<int>> partition in Partitions(n, stages))
                    {
                        foreach (List<int> replicas in Replicas(stages, replicaLimit, devices))
                        {
                            if (options.ForcedReplicasPerStage is { } forced && !forced.SequenceEqual(replicas))
                            {
                                continue;
                            }

                            foreach (List<bool> recompute in Recompute(stages, options.AllowRecompute))
                            {
                                var shape = new PlanShape(partition, replicas, recompute, m, schedule);
                                PlanEstimate estimate = PlanObjective.Evaluate(graph, costs, cluster, options, shape);
                                evaluated++;
                                smallestPeak = Math.Min(smallestPeak, estimate.PeakBytesPerStage.Max());
                                if (estimate.FitsMemory && estimate.ObjectiveSeconds < best)
                                {
                                    best = estimate.ObjectiveSeconds;
                                    bestShape = shape;
                                }
                            }
                        }
                    }
                }
            }
        }

        return new Result(best, bestShape, smallestPeak, evaluated);
    }

    private static IEnumerable<List<IReadOnlyList<int>>> Partitions(int n, int stages)
    {
        // Choose stages-1 cut points among the n-1 gaps.
        foreach (int[] cuts in Combinations(n - 1, stages - 1))
        {
            var result = new List<IReadOnlyList<int>>();
            int start = 0;
            foreach (int cut in cuts.Append(n - 1))
            {
                result.Add(Enumerable.Range(start, cut + 1 - start).ToList());
                start = cut + 1;
            }

            yield return result;
        }
    }

    private static IEnumerable<int[]> Combinations(int items, int choose)
    {
        int[] chosen = new int[choose];
        return Recurse(0, 0);

        IEnumerable<int[]> Recurse(int position, int from)
        {
            if (position == choose)
            {
                yield return (int[])chosen.Clone();
                yield break;
            }

            for (int i = from; i < items; i++)
            {
                chosen[position] = i;
                foreach (int[] c in Recurse(position + 1, i + 1))
                {
                    yield return c;
                }
            }
        }
    }

    private static IEnumerable<List<int>> Replicas(int stages, int limit, int devices)
    {
        if (stages == 0)
        {
            yield return [];
            yield break;
        }

        for (int r = 1; r <= Math.Min(limit, devices - (stages - 1)); r++)
        {
            foreach (List<int> rest in Replicas(stages - 1, limit, devices - r))
            {
                rest.Insert(0, r);
                yield return rest;
            }
        }
    }

    private static IEnumerable<List<bool>> Recompute(int stages, bool allowed)
    {
        int combinations = allowed ? 1 << stages : 1;
        for (int mask = 0; mask < combinations; mask++)
        {
            yield return Enumerable.Range(0, stages).Select(s => (mask >> s & 1) == 1).ToList();
        }
    }
}
