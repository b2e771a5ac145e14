using Rannc.Partitioner;

namespace Rannc.Bench.Planning;

/// <summary>
/// Where the objective J misleads (issue #12): for each configuration, the planner's candidates (search, baselines,
/// cycle-balanced split) and, where simulating them is cheap, the shapes its local search considers around the returned
/// plan; each with J and the simulated step. Reported: the range of simulated ÷ J, the pairs J ranks the other way round
/// from the simulator (inversions, among pairs whose simulated times differ by more than 0.1 %), the largest such
/// disagreement, and how much slower the J-best shape simulates than the fastest one.
/// </summary>
internal static class ObjectiveTable
{
    /// <summary>Neighbours are simulated only when one simulation is this small (ranks used × micro-batches).</summary>
    private const long NeighbourSimulationLimit = 20_000;

    public static void Print(TextWriter output, string title, IEnumerable<(string Name, SyntheticModel Model, Cluster Cluster, PlanningOptions Options)> cases)
    {
        output.WriteLine($"### J versus the simulator: {title}");
        output.WriteLine();
        output.WriteLine("| config | shapes | simulated ÷ J, 1F1B | simulated ÷ J, GPipe | inversions / pairs | largest inversion | J-best ÷ fastest, simulated |");
        output.WriteLine("|---|---:|---|---|---:|---:|---:|");
        foreach ((string name, SyntheticModel model, Cluster cluster, PlanningOptions options) in cases)
        {
            Graph graph = model.Graph;
            CostTable costs = model.Costs;
            var points = Planner.Candidates(graph, costs, cluster, options)
                .Select(p => (Objective: p.ObjectiveSeconds, Simulated: p.PredictedStepSeconds, p.Schedule)).ToList();
            PartitionPlan plan = Planner.Plan(graph, costs, cluster, options);
            if ((long)plan.RanksUsed * plan.MicroBatchCount <= NeighbourSimulationLimit)
            {
                foreach ((PlanShape shape, double objective) in SimulatedRefinement.NeighbourShapes(graph, costs, cluster, options, plan))
                {
                    PartitionPlan built = Planner.PlanFromShape(graph, costs, cluster, options, shape);
                    points.Add((objective, built.PredictedStepSeconds, shape.Schedule));
                }
            }

            int pairs = 0, inversions = 0;
            double worst = 0;
            for (int a = 0; a < points.Count; a++)
            {
                for (int b = a + 1; b < points.Count; b++)
                {
                    (var x, var y) = points[a].Objective <= points[b].Objective ? (points[a], points[b]) : (points[b], points[a]);
                    if (Math.Abs(x.Simulated - y.Simulated) <= 1e-3 * y.Simulated || x.Objective == y.Objective)
                    {
                        continue; // a tie in either measure says nothing about the ranking
                    }

                    pairs++;
                    if (x.Simulated > y.Simulated)
                    {
                        inversions++;
                        worst = Math.Max(worst, x.Simulated / y.Simulated - 1);
                    }
                }
            }

            var jBest = points.MinBy(p => p.Objective);
            double fastest = points.Min(p => p.Simulated);
            output.WriteLine($"| {name} | {points.Count} | {Range(points, PipelineScheduleKind.OneFOneB)} | {Range(points, PipelineScheduleKind.GPipe)} | "
                + $"{inversions} / {pairs} | {(inversions == 0 ? "–" : $"{worst:P1}")} | {jBest.Simulated / fastest:0.000} |");
            output.Flush();
        }

        output.WriteLine();
    }

    private static string Range(List<(double Objective, double Simulated, PipelineScheduleKind Schedule)> points, PipelineScheduleKind schedule)
    {
        var ratios = points.Where(p => p.Schedule == schedule).Select(p => p.Simulated / p.Objective).ToList();
        return ratios.Count == 0 ? "–" : $"{ratios.Min():0.000}–{ratios.Max():0.000}";
    }
}
