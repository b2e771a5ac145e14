namespace Rannc.Partitioner;

/// <summary>One action of one rank in a simulated step.</summary>
/// <param name="Rank">The rank that runs it.</param>
/// <param name="Action">The schedule's action.</param>
/// <param name="StartSeconds">When the rank starts it (a receive: when the rank starts waiting).</param>
/// <param name="EndSeconds">When it ends; for a send, when the message arrives (the sender goes on at the start).</param>
/// <param name="Bytes">Bytes a send or receive moves; 0 for other actions.</param>
public sealed record TimedAction(int Rank, PipelineAction Action, double StartSeconds, double EndSeconds, long Bytes);

/// <summary>The sum of shared parameters' gradients among their holder stages at the end of a step, on one rank.</summary>
/// <param name="Rank">A rank of a holder stage.</param>
/// <param name="Stages">The holder stages.</param>
/// <param name="StartSeconds">When the rank is done with its schedule.</param>
/// <param name="EndSeconds">When the sum ends (the same for every holder rank).</param>
public sealed record TimedSharedSync(int Rank, IReadOnlyList<int> Stages, double StartSeconds, double EndSeconds);

/// <summary>
/// The predicted timeline of one step of a plan (<see cref="PipelineSimulator.Timeline"/>): every action of every rank
/// with its simulated start and end, in the order the ranks run them, and the simulation's summary.
/// </summary>
/// <param name="Schedule">The schedule that was simulated.</param>
/// <param name="Actions">Every action of every rank; per rank in schedule order.</param>
/// <param name="SharedSyncs">The shared-gradient sums that end the step (empty when no parameter is shared between stages).</param>
/// <param name="Result">The same numbers <see cref="PipelineSimulator.Simulate(PartitionPlan, Graph, CostTable, Cluster, PlanningOptions)"/> gives.</param>
public sealed record SimulatedTimeline(
    PipelineSchedule Schedule,
    IReadOnlyList<TimedAction> Actions,
    IReadOnlyList<TimedSharedSync> SharedSyncs,
    SimulationResult Result)
{
    /// <summary>The actions of <paramref name="rank"/>, in the order it runs them.</summary>
    public IReadOnlyList<TimedAction> ActionsOf(int rank) => Actions.Where(a => a.Rank == rank).ToList();
}
