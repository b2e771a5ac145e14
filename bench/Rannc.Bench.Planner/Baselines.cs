using Rannc.Partitioner;

namespace Rannc.Bench.Planning;

/// <summary>
/// The DeepSpeed-style baselines of the library (<see cref="Rannc.Partitioner.Baselines"/>: uniform and
/// parameter-balanced splits with <c>D / S</c> replicas per stage, and pure data parallelism), each at its best stage
/// count, micro-batch count and schedule under J, then simulated, so the bench compares the planner with exactly the
/// plans it must never lose to.
/// </summary>
internal static class BaselineRuns
{
    public sealed record Result(double Objective, double Simulated);

    public static Result Best(Graph graph, CostTable costs, Cluster cluster, PlanningOptions options, BaselineSplit split)
    {
        PlanShape? shape = Rannc.Partitioner.Baselines.BestShape(graph, costs, cluster, options, split);
        if (shape is null)
        {
            return new Result(double.PositiveInfinity, double.PositiveInfinity);
        }

        PartitionPlan plan = Planner.PlanFromShape(graph, costs, cluster, options, shape);
        return new Result(plan.ObjectiveSeconds, plan.PredictedStepSeconds);
    }
}
