using Rannc.Communication;
using Rannc.Partitioner;
using PlanningGraph = Rannc.Partitioner.Graph;

namespace Rannc.Execution.Tracing;

/// <summary>What the simulator needs to predict the traced step: the inputs the plan was made from.</summary>
internal sealed record PredictionInputs(PlanningGraph Graph, CostTable Costs, Cluster Cluster, PlanningOptions Options);

/// <summary>
/// Traces one training step (<see cref="RanncOptions.TracePath"/>, <see cref="RanncOptions.TraceStep"/>): every rank
/// records its actions, sends them to rank 0 through the communicator after the step, and rank 0 writes the Chrome
/// trace with the simulator's prediction of the same plan beside the measurement.
/// </summary>
internal sealed class StepTracing(string path, int step, ICommunicator world, Action<string> log)
{
    private bool _written;

    /// <summary>The plan's inputs (set when the plan is deployed); without them the trace has no predicted tracks.</summary>
    public PredictionInputs? Prediction { get; set; }

    /// <summary>The 1-based training step that is traced.</summary>
    public int Step => step;

    /// <summary>
    /// Starts recording when <paramref name="trainingStep"/> (1-based) is the traced one: all ranks meet first, so their
    /// clocks start together. Every rank calls it every training step (they agree on the step number).
    /// </summary>
    public StepRecorder? Begin(long trainingStep, PipelineExecutor executor)
    {
        if (trainingStep != step || _written)
        {
            executor.Recorder = null;
            return null;
        }
        world.Barrier();
        var recorder = new StepRecorder();
        executor.Recorder = recorder;
        return recorder;
    }

    /// <summary>Gathers every rank's slices on rank 0, which writes the trace. Every rank calls it after the traced step.</summary>
    public void Finish(StepRecorder recorder, PipelineExecutor executor, PartitionPlan plan, long trainingStep)
    {
        executor.Recorder = null;
        var mine = new RankTrace(world.Rank, recorder.Slices.ToList(), recorder.Microseconds(StepRecorder.Now()));
        RankTrace[] all = world.AllGather(mine);
        _written = true;
        if (world.Rank != 0) return;
        IReadOnlyList<IReadOnlyList<TraceSlice>>? predicted = null;
        string? note = null;
        if (Prediction is { } inputs)
        {
            try
            {
                predicted = ChromeTrace.PredictedTracks(PipelineSimulator.Timeline(plan, inputs.Graph, inputs.Costs, inputs.Cluster, inputs.Options), plan);
            }
            catch (InvalidOperationException e)
            {
                note = $"the simulation failed: {e.Message}";
            }
        }
        else
        {
            note = "no profile of the plan's nodes";
        }
        string text = ChromeTrace.Format(plan, trainingStep, ChromeTrace.MeasuredTracks(all), predicted, note);
        string? folder = Path.GetDirectoryName(Path.GetFullPath(path));
        if (folder is not null) Directory.CreateDirectory(folder);
        File.WriteAllText(path, text);
        log($"Rannc: wrote the trace of training step {trainingStep} to {path} (open it in https://ui.perfetto.dev or chrome://tracing).");
    }

    /// <summary>Rank 0 says so when the run ended before the traced step.</summary>
    public void ReportIfNotWritten(long trainingSteps)
    {
        if (!_written && world.Rank == 0)
            log($"Rannc: no trace written to {path}: the run had {trainingSteps} training step(s), and step {step} is traced (RANNC_TRACE_STEP).");
    }
}
