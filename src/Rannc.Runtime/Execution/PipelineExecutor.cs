using Rannc.Capture;
using Rannc.Communication;
using Rannc.Execution.Tracing;
using Rannc.Partitioner;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Execution;

/// <summary>What one step of the pipeline produced on this rank.</summary>
/// <param name="LossNumerator">Σ over this rank's last-stage slices of weight × slice loss (see <see cref="LossCombination"/>); 0 elsewhere.</param>
/// <param name="LossDenominator">Σ of those slices' weights.</param>
/// <param name="OutputSlices">For a non-scalar graph output: this rank's slices of it (last stage only).</param>
/// <param name="Gradients">Gradients of the parameters this rank owns, summed over micro-batches and replicas,
/// for a loss of 1 and before division by the step's total loss weight (null when the step ran without gradients).</param>
/// <param name="ExtraOutputSlices">For a model that returns the loss and more: this rank's slices of graph output
/// <c>Output</c> (1 and up), detached (last stage only).</param>
internal sealed record StepResult(double LossNumerator, double LossDenominator, IReadOnlyList<(SampleRange Samples, Tensor Value)> OutputSlices,
    IReadOnlyDictionary<string, Tensor>? Gradients, IReadOnlyList<(int Output, SampleRange Samples, Tensor Value)> ExtraOutputSlices);

/// <summary>
/// Runs this rank's part of one training (or inference) step: its actions of the schedule, in order, with one
/// <c>switch</c>. Forward runs the stage's captured nodes on the micro-batch slice; backward computes gradients
/// with <c>torch.autograd.grad</c> (so nothing is written into <c>.grad</c> until the user's
/// <c>loss.backward()</c>); activations and gradients travel to the neighbouring stages' replicas as the
/// <see cref="MicroBatchLayout"/> slices them; the stage's gradients are all-reduced among its replicas.
/// </summary>
internal sealed class PipelineExecutor
{
    /// <summary>
    /// Micro-batches every plan can run whatever its boundaries carry: a message tag numbers the direction, the
    /// micro-batch and the value on the widest boundary (at most <see cref="StageLayout.MaxBoundaryValues"/>) within
    /// <see cref="TensorBuffers.MaxTag"/>. The planner is capped at this; a forced count above it runs when the plan's
    /// widest boundary leaves room (see the constructor).
    /// </summary>
    internal const int GuaranteedMicroBatches = (TensorBuffers.MaxTag + 1) / (2 * StageLayout.MaxBoundaryValues);

    /// <summary>Values on the plan's widest stage boundary (at least 1): the stride of the value index in a tag.</summary>
    private readonly int _tagValues;

    private readonly CapturedGraph _graph;
    private readonly StageLayout _layout;
    private readonly PartitionPlan _plan;
    private readonly IReadOnlyList<PipelineAction> _actions;
    private readonly ICommunicator _world;
    private readonly ICommunicator? _replicas;
    private readonly int _stage;
    private readonly int _replica;
    private readonly IReadOnlyList<(string Name, Tensor Parameter)> _ownedParameters;
    private readonly IReadOnlyList<(SharedParameterGroup Group, ICommunicator Communicator)> _sharedGroups;
    private readonly HashSet<string> _sharedNames;
    private readonly LossCombination _lossCombination;
    private readonly InputSlicer _slicer;

    public PipelineExecutor(CapturedGraph graph, StageLayout layout, PartitionPlan plan, PipelineSchedule schedule,
        ICommunicator world, ICommunicator? replicas, IReadOnlyList<(string Name, Tensor Parameter)> ownedParameters,
        IReadOnlyList<(SharedParameterGroup Group, ICommunicator Communicator)>? sharedGroups = null, LossCombination? lossCombination = null,
        InputSlicer? slicer = null)
    {
        _tagValues = Math.Max(1, layout.Boundaries.Select(b => b.Length).DefaultIfEmpty(0).Max());
        int maxMicroBatches = (TensorBuffers.MaxTag + 1) / (2 * _tagValues);
        if (plan.MicroBatchCount > maxMicroBatches)
            throw new NotSupportedException($"The plan has {plan.MicroBatchCount} micro-batches, but with {_tagValues} values on its widest " +
                $"stage boundary the message tags allow at most {maxMicroBatches}; use fewer micro-batches (RANNC_MICRO_BATCHES).");
        _graph = graph;
        _layout = layout;
        _plan = plan;
        _world = world;
        _replicas = replicas;
        _actions = schedule.Ranks[world.Rank];
        (_stage, _replica) = plan.RoleOf(world.Rank) ?? (-1, -1);
        _ownedParameters = ownedParameters;
        _sharedGroups = sharedGroups ?? [];
        _sharedNames = _sharedGroups.SelectMany(g => g.Group.Names).ToHashSet(StringComparer.Ordinal);
        _lossCombination = lossCombination ?? LossCombination.PerSample;
        _slicer = slicer ?? new InputSlicer(graph);
    }

    public bool IsIdle => _stage < 0;

    /// <summary>Records the actions of the step being traced (<see cref="StepTracing"/>); null otherwise.</summary>
    public StepRecorder? Recorder { get; set; }

    private bool IsLastStage => _stage == _plan.Stages.Count - 1;

    /// <summary>Runs one step on <paramref name="inputs"/> (forward()'s arguments, whole batch, on every rank).</summary>
    public StepResult Run(IReadOnlyList<object?> inputs, bool computeGradients)
    {
        if (IsIdle) return new StepResult(0, 0, [], computeGradients ? new Dictionary<string, Tensor>() : null, []);
        var step = new Step(this, inputs, computeGradients);
        try
        {
            Execute(step, _actions.Where(a => computeGradients || IsForwardAction(a)));
            if (computeGradients) AllReduceSharedGradients(step);
        }
        finally
        {
            // Sends have completed (or the step failed): nothing in flight reads the step's tensors any more.
            step.ReleaseAll();
        }
        return step.Result();
    }

    /// <summary>
    /// Runs only the forward actions, keeping the autograd graphs, for a model whose output is not a scalar loss:
    /// the loss is computed after the output is gathered, so the backward actions wait for its gradient
    /// (<see cref="DeferredStep.Backward"/>). Forwards then backwards in each rank's order is GPipe's order.
    /// </summary>
    public DeferredStep RunForward(IReadOnlyList<object?> inputs)
    {
        var step = new Step(this, inputs, computeGradients: true);
        if (!IsIdle)
        {
            try
            {
                Execute(step, _actions.Where(IsForwardAction));
            }
            catch
            {
                step.ReleaseAll();
                throw;
            }
        }
        return new DeferredStep(this, step);
    }

    /// <summary>A step whose forward actions have run and whose backward actions wait for the output's gradient.</summary>
    internal sealed class DeferredStep(PipelineExecutor owner, Step step)
    {
        // The backward pass runs later, from autograd: it continues the step the forward belonged to.
        private readonly string? _position = TrainingPosition.Current;

        public IReadOnlyList<(SampleRange Samples, Tensor Value)> OutputSlices => owner.IsIdle ? [] : step.Result().OutputSlices;

        /// <summary>Runs the backward actions with the gradient of the whole (gathered) output; returns this rank's gradients.</summary>
        public IReadOnlyDictionary<string, Tensor> Backward(Tensor outputGradient)
        {
            if (owner.IsIdle) return new Dictionary<string, Tensor>();
            using var position = TrainingPosition.Resume(_position);
            try
            {
                step.SetOutputGradient(outputGradient);
                owner.Execute(step, owner._actions.Where(a => !IsForwardAction(a)));
                owner.AllReduceSharedGradients(step);
            }
            finally
            {
                step.ReleaseAll();
            }
            return step.Result().Gradients!;
        }
    }

    private void AllReduceSharedGradients(Step step)
    {
        long started = Recorder is null || _sharedGroups.Count == 0 ? 0 : StepRecorder.Now();
        step.AllReduceSharedGradients();
        if (started != 0) Recorder?.Extra("all-reduce shared gradients", "all-reduce", _stage, started);
    }

    private static bool IsForwardAction(PipelineAction action) =>
        action.Kind is ActionKind.Forward or ActionKind.SendActivation or ActionKind.RecvActivation;

    /// <summary>Runs <paramref name="actions"/> of this rank in order, one <c>switch</c>, then waits for its sends.</summary>
    private void Execute(Step step, IEnumerable<PipelineAction> actions)
    {
        var pending = new List<ICommRequest>();
        try
        {
            foreach (PipelineAction action in actions)
            {
                using var position = TrainingPosition.Enter(DescribeAction(action));
                long started = Recorder is null ? 0 : StepRecorder.Now();
                step.TransferredBytes = 0;
                switch (action.Kind)
                {
                    case ActionKind.Forward:
                        step.Capture(action.MicroBatch, () => step.Forward(action.MicroBatch));
                        break;
                    case ActionKind.SendActivation:
                        pending.AddRange(step.CaptureUntilStepEnd(() => step.SendActivations(action.MicroBatch, action.Peer)));
                        break;
                    case ActionKind.RecvActivation:
                        step.Capture(action.MicroBatch, () => step.ReceiveActivations(action.MicroBatch, action.Peer));
                        break;
                    case ActionKind.Backward:
                        step.ReleaseFinishedMicroBatches(action.MicroBatch);
                        step.Capture(action.MicroBatch, () => step.Backward(action.MicroBatch, BackwardPart.Whole));
                        break;
                    case ActionKind.BackwardInput:
                        step.ReleaseFinishedMicroBatches(action.MicroBatch);
                        step.Capture(action.MicroBatch, () => step.Backward(action.MicroBatch, BackwardPart.InputGradients));
                        break;
                    case ActionKind.BackwardWeight:
                        step.Capture(action.MicroBatch, () => step.Backward(action.MicroBatch, BackwardPart.WeightGradients));
                        break;
                    case ActionKind.SendGradient:
                        pending.AddRange(step.CaptureUntilStepEnd(() => step.SendGradients(action.MicroBatch, action.Peer)));
                        break;
                    case ActionKind.RecvGradient:
                        step.Capture(action.MicroBatch, () => step.ReceiveGradients(action.MicroBatch, action.Peer));
                        break;
                    case ActionKind.AllReduce:
                        step.AllReduceGradients();
                        break;
                    default:
                        throw new InvalidOperationException($"Unknown action {action}.");
                }
                Recorder?.Action(action, started, step.TransferredBytes);
            }
            long waitStarted = Recorder is null || pending.Count == 0 ? 0 : StepRecorder.Now();
            using (TrainingPosition.Enter($"stage {_stage} replica {_replica}, waiting for its sends to complete"))
                CommRequests.WaitAll(pending);
            if (waitStarted != 0) Recorder?.Extra("wait for sends", "wait", _stage, waitStarted);
        }
        catch (Exception e) when (e is not JobAbortedException)
        {
            throw new InvalidOperationException(
                $"Rank {_world.Rank} (stage {_stage}, replica {_replica}) failed while running its schedule: {e.Message}\n" +
                $"Schedule (rank × step):\n{new PipelineSchedule(RankActionsForMessage()).FormatGrid(computeOnly: true)}", e);
        }
    }

    /// <summary>The action in words for watchdog messages ("stage 0 replica 1, receiving gradients of micro-batch 2 from rank 3").</summary>
    private string DescribeAction(PipelineAction action)
    {
        string what = action.Kind switch
        {
            ActionKind.Forward => $"forward of micro-batch {action.MicroBatch}",
            ActionKind.Backward => $"backward of micro-batch {action.MicroBatch}",
            ActionKind.SendActivation => $"sending activations of micro-batch {action.MicroBatch} to rank {action.Peer}",
            ActionKind.RecvActivation => $"receiving activations of micro-batch {action.MicroBatch} from rank {action.Peer}",
            ActionKind.SendGradient => $"sending gradients of micro-batch {action.MicroBatch} to rank {action.Peer}",
            ActionKind.RecvGradient => $"receiving gradients of micro-batch {action.MicroBatch} from rank {action.Peer}",
            ActionKind.AllReduce => "all-reducing the stage's gradients among its replicas",
            _ => action.ToString(),
        };
        return $"stage {_stage} replica {_replica}, {what}";
    }

    private IReadOnlyList<IReadOnlyList<PipelineAction>> RankActionsForMessage() =>
        Enumerable.Range(0, _world.Size).Select(r => r == _world.Rank ? _actions : (IReadOnlyList<PipelineAction>)[]).ToList();

    private int Tag(bool gradient, int microBatch, int valueIndex) =>
        ((gradient ? _plan.MicroBatchCount : 0) + microBatch) * _tagValues + valueIndex;

    /// <summary>What a backward action computes: everything at once, or one zero-bubble half (see <see cref="PipelineScheduleKind.ZeroBubble"/>).</summary>
    internal enum BackwardPart
    {
        /// <summary>The gradients of the stage's inputs and parameters in one pass, freeing the graph.</summary>
        Whole,

        /// <summary>Only the stage inputs' gradients (what the previous stage waits for); the graph is kept for the weight pass.</summary>
        InputGradients,

        /// <summary>Only the parameters' gradients, accumulated as a whole backward's are; frees the graph.</summary>
        WeightGradients,
    }

    /// <summary>The state of one step: values per micro-batch, received pieces, accumulated gradients.</summary>
    internal sealed class Step(PipelineExecutor owner, IReadOnlyList<object?> inputs, bool computeGradients)
    {
        private readonly Dictionary<int, Dictionary<int, object?>> _values = [];
        // Per micro-batch and received value: the leaf per tensor of the value (one for a tensor, one per element of an
        // array), null for a tensor that takes no gradient (an integer chunk).
        private readonly Dictionary<int, Dictionary<int, Tensor?[]>> _leaves = [];
        private readonly Dictionary<int, HashSet<int>> _aliased = [];
        private readonly Dictionary<int, List<(SampleRange Samples, Dictionary<int, object?> Values)>> _activationPieces = [];
        // Gradients travel in the form of their value: a tensor, or an array with one gradient per element.
        private readonly Dictionary<int, List<(SampleRange Samples, Dictionary<int, object> Gradients)>> _gradientPieces = [];
        private readonly Dictionary<int, Dictionary<int, object>> _inputGradients = [];
        private readonly Dictionary<int, (List<Tensor> Outputs, List<Tensor> Gradients)> _awaitingWeightPass = [];
        private readonly Dictionary<int, Tensor> _losses = [];
        private readonly Dictionary<int, double> _lossWeights = [];
        private readonly Dictionary<int, Tensor> _outputs = [];
        private Tensor? _outputGradient;
        private readonly Dictionary<string, Tensor> _gradients = [];
        private readonly List<(SampleRange, Tensor)> _outputSlices = [];
        private readonly List<(int, SampleRange, Tensor)> _extraOutputSlices = [];
        private readonly Dictionary<int, List<IDisposable>> _microBatchTensors = [];
        private readonly List<IDisposable> _stepTensors = [];
        private readonly HashSet<int> _backwardDone = [];
        private double _lossNumerator;
        private double _lossDenominator;

        /// <summary>Bytes the current send or receive action moved; counted only while a step is traced.</summary>
        public long TransferredBytes { get; set; }

        private void CountBytes(object? value)
        {
            if (owner.Recorder is not null) TransferredBytes += ValueTransfer.PayloadBytes(value);
        }

        private StageLayout Layout => owner._layout;

        private GraphStage Stage => Layout.Stages[owner._stage];

        private SampleRange MySlice(int microBatch) => owner._plan.ReplicaSlice(owner._stage, owner._replica, microBatch);

        public void Forward(int m)
        {
            SampleRange slice = MySlice(m);
            var stageInputs = new Dictionary<int, object?>();
            foreach (int v in Stage.InputValues)
            {
                int inputIndex = Array.IndexOf(Layout.GraphInputs, v);
                // A node that writes into a graph input writes into a copy: the caller's batch stays as it was.
                if (inputIndex >= 0) stageInputs[v] = owner._graph.BindExternal(v, owner._slicer.SliceInput(inputIndex, inputs, slice.Start, slice.Count));
            }
            var leaves = new Dictionary<int, Tensor?[]>();
            var aliased = new HashSet<int>();
            foreach ((int v, object? value) in AssembleIncoming(m, slice))
            {
                Tensor[] tensors = TensorsOf(value);
                if (computeGradients && Layout.NeedsGradient[v] && tensors.Any(TakesGradient))
                {
                    Tensor?[] parts = tensors.Select(t => TakesGradient(t) ? t.detach().requires_grad_(true) : null).ToArray();
                    leaves[v] = parts;
                    if (value is Tensor)
                    {
                        Tensor leaf = parts[0]!;
                        // A node that writes into the value gets a differentiable copy (libtorch refuses in-place writes on leaves).
                        stageInputs[v] = owner._graph.BindExternal(v, leaf);
                        if (!ReferenceEquals(stageInputs[v], leaf)) aliased.Add(v);
                    }
                    else
                    {
                        stageInputs[v] = parts.Select((leaf, i) => leaf ?? tensors[i]).ToArray();
                    }
                }
                else
                {
                    stageInputs[v] = value;
                }
            }
            _leaves[m] = leaves;
            _aliased[m] = aliased;

            IReadOnlyDictionary<int, object?> produced;
            using (computeGradients ? torch.enable_grad() : torch.no_grad())
            {
                // The last stage also keeps the loss node's inputs: the loss combination weighs each slice by them.
                produced = owner._graph.ExecuteStage(Stage, stageInputs, owner.IsLastStage ? owner._lossCombination.InputValues : []);
            }
            var values = new Dictionary<int, object?>(stageInputs);
            foreach ((int v, object? value) in produced) values[v] = value;
            _values[m] = values;

            if (!owner.IsLastStage) return;
            int output = Layout.GraphOutputs[0];
            if (values[output] is not Tensor result)
                throw new NotSupportedException($"The model returned {values[output]?.GetType().Name ?? "null"}; Rannc needs a tensor.");
            if (result.dim() == 0)
            {
                LossCombination combination = owner._lossCombination;
                double weight = combination.SliceWeight(values, slice.Count, owner._graph);
                // A slice with nothing to count (no unmasked token) adds nothing; its own mean would be NaN.
                if (weight != 0) _lossNumerator += weight * result.to_type(ScalarType.Float64).item<double>();
                if (combination.Rule != LossRule.Sum) _lossDenominator += weight;
                _lossWeights[m] = weight;
                _losses[m] = result;
                // Outputs after the loss (logits for metrics) are returned without gradients: the loss alone is trained on.
                for (int k = 1; k < Layout.GraphOutputs.Length; k++)
                {
                    if (values[Layout.GraphOutputs[k]] is Tensor extra) _extraOutputSlices.Add((k, slice, extra.detach()));
                }
            }
            else
            {
                _outputs[m] = result;
                _outputSlices.Add((slice, result.detach()));
            }
        }

        /// <summary>The gradient of the whole gathered output, for a deferred backward (see <see cref="RunForward"/>).</summary>
        public void SetOutputGradient(Tensor gradient) => _outputGradient = gradient;

        public IEnumerable<ICommRequest> SendActivations(int m, int peer)
        {
            SampleRange samples = SharedSamples(m, owner._stage + 1, peer);
            SampleRange mine = MySlice(m);
            var requests = new List<ICommRequest>();
            IReadOnlyList<int> outgoing = Layout.Outgoing(owner._stage);
            for (int i = 0; i < outgoing.Count; i++)
            {
                int v = outgoing[i];
                object? value = _values[m][v];
                if (value is Tensor or Tensor[] && Layout.BatchDependent[v] && samples != mine)
                    value = Layout.SliceValue(v, value, samples.Start - mine.Start, samples.Count);
                requests.AddRange(ValueTransfer.StartSend(owner._world, value, peer, owner.Tag(false, m, i)));
                CountBytes(value);
            }
            return requests;
        }

        public void ReceiveActivations(int m, int peer)
        {
            SampleRange samples = SharedSamples(m, owner._stage - 1, peer);
            IReadOnlyList<int> incoming = Layout.Incoming(owner._stage);
            var values = new Dictionary<int, object?>();
            for (int i = 0; i < incoming.Count; i++)
            {
                values[incoming[i]] = ValueTransfer.Receive(owner._world, peer, owner.Tag(false, m, i));
                CountBytes(values[incoming[i]]);
            }
            ListFor(_activationPieces, m).Add((samples, values));
        }

        /// <summary>
        /// Backward of micro-batch <paramref name="m"/> with <c>torch.autograd.grad</c>: the whole of it, or one zero-bubble
        /// half. The input half differentiates the stage's outputs with respect to its received inputs only and keeps the
        /// graph (<c>retain_graph</c>) and the outputs' gradients for the weight half, which differentiates the same outputs
        /// with respect to the parameters and frees the graph; the parameters' gradients add up exactly as a whole backward's.
        /// </summary>
        public void Backward(int m, BackwardPart part)
        {
            if (part == BackwardPart.WeightGradients)
            {
                (List<Tensor> heldOutputs, List<Tensor> heldGradients) = _awaitingWeightPass[m];
                _awaitingWeightPass.Remove(m);
                AccumulateParameterGradients(heldOutputs, heldGradients);
                _backwardDone.Add(m);
                return;
            }

            var outputs = new List<Tensor>();
            var outputGradients = new List<Tensor>();
            Dictionary<int, object> received = owner.IsLastStage ? [] : AssembleGradients(m);
            if (owner.IsLastStage && _losses.TryGetValue(m, out Tensor? loss))
            {
                // The step's loss is Σ weight × slice loss / Σ weight; the division happens once the total is known.
                double weight = _lossWeights[m];
                if (weight != 0)
                {
                    outputs.Add(loss);
                    outputGradients.Add(torch.full_like(loss, weight));
                }
            }
            else if (owner.IsLastStage)
            {
                Tensor output = _outputs[m];
                Tensor gradient = _outputGradient ?? throw new InvalidOperationException("The output's gradient has not been given.");
                SampleRange slice = MySlice(m);
                outputs.Add(output);
                outputGradients.Add(Layout.SliceSamples(Layout.GraphOutputs[0], gradient, slice.Start, slice.Count).to_type(output.dtype));
            }
            else
            {
                foreach ((int v, object gradient) in received)
                {
                    // A value that passed through unchanged gets its gradient added below; one that a node here wrote
                    // into (through its copy) is an output of this stage's computation like any other.
                    if (Layout.ProducerStage[v] != owner._stage && !_aliased[m].Contains(v)) continue;
                    Tensor[] produced = TensorsOf(_values[m][v]);
                    Tensor[] producedGradients = TensorsOf(gradient);
                    for (int i = 0; i < produced.Length; i++)
                    {
                        if (!produced[i].requires_grad) continue;
                        outputs.Add(produced[i]);
                        outputGradients.Add(producedGradients[i]);
                    }
                }
            }

            Dictionary<int, Tensor?[]> leaves = _leaves[m];
            bool whole = part == BackwardPart.Whole;
            var parameters = whole ? TrainableParameters() : [];
            var wrt = parameters.Select(p => p.Parameter).Concat(leaves.Values.SelectMany(parts => parts.OfType<Tensor>())).ToList();
            IList<Tensor?> gradients = outputs.Count > 0 && wrt.Count > 0
                ? torch.autograd.grad(outputs, wrt, outputGradients, retain_graph: !whole, create_graph: false, allow_unused: true)!
                : Enumerable.Repeat<Tensor?>(null, wrt.Count).ToList();

            AddParameterGradients(parameters, gradients);
            var inputGradients = new Dictionary<int, object>();
            int k = parameters.Count;
            foreach ((int v, Tensor?[] parts) in leaves)
            {
                Tensor[] stageInputs = TensorsOf(_values[m][v]);
                // The value went on unchanged to the next stage too: the gradient it brought back adds.
                Tensor[]? passedThrough = !_aliased[m].Contains(v) && received.TryGetValue(v, out object? passed) ? TensorsOf(passed) : null;
                var g = new Tensor[parts.Length];
                for (int i = 0; i < parts.Length; i++)
                {
                    Tensor? computed = parts[i] is null ? null : Defined(gradients[k++]);
                    g[i] = computed is null ? torch.zeros_like(parts[i] ?? stageInputs[i]) : computed.detach();
                    if (passedThrough is not null) g[i] = g[i] + passedThrough[i];
                }
                inputGradients[v] = _values[m][v] is Tensor[] ? g : g[0];
            }
            _inputGradients[m] = inputGradients;
            if (whole) _backwardDone.Add(m);
            else _awaitingWeightPass[m] = (outputs, outputGradients);
        }

        private List<(string Name, Tensor Parameter)> TrainableParameters() =>
            owner._ownedParameters.Where(p => p.Parameter.requires_grad).ToList();

        /// <summary>The weight half: the parameters' gradients of the kept graph, which is freed.</summary>
        private void AccumulateParameterGradients(List<Tensor> outputs, List<Tensor> outputGradients)
        {
            var parameters = TrainableParameters();
            if (outputs.Count == 0 || parameters.Count == 0) return;
            IList<Tensor?> gradients = torch.autograd.grad(
                outputs, parameters.Select(p => p.Parameter).ToList(), outputGradients, retain_graph: false, create_graph: false, allow_unused: true)!;
            AddParameterGradients(parameters, gradients);
        }

        private void AddParameterGradients(List<(string Name, Tensor Parameter)> parameters, IList<Tensor?> gradients)
        {
            for (int i = 0; i < parameters.Count; i++)
            {
                if (Defined(gradients[i]) is not Tensor g) continue;
                string name = parameters[i].Name;
                if (_gradients.TryGetValue(name, out Tensor? sum)) sum.add_(g);
                else _gradients[name] = g.detach().clone();
                // Summed: free this micro-batch's copy now rather than when the micro-batch is released.
                g.Dispose();
            }
        }

        public IEnumerable<ICommRequest> SendGradients(int m, int peer)
        {
            SampleRange samples = SharedSamples(m, owner._stage - 1, peer);
            SampleRange mine = MySlice(m);
            var requests = new List<ICommRequest>();
            IReadOnlyList<int> incoming = Layout.Incoming(owner._stage);
            for (int i = 0; i < incoming.Count; i++)
            {
                int v = incoming[i];
                if (!_inputGradients[m].TryGetValue(v, out object? g)) continue;
                if (Layout.BatchDependent[v] && samples != mine) g = Layout.SliceValue(v, g, samples.Start - mine.Start, samples.Count);
                requests.AddRange(ValueTransfer.StartSend(owner._world, g, peer, owner.Tag(true, m, i)));
                CountBytes(g);
            }
            return requests;
        }

        public void ReceiveGradients(int m, int peer)
        {
            SampleRange samples = SharedSamples(m, owner._stage + 1, peer);
            IReadOnlyList<int> outgoing = Layout.Outgoing(owner._stage);
            var gradients = new Dictionary<int, object>();
            for (int i = 0; i < outgoing.Count; i++)
            {
                int v = outgoing[i];
                if (!GradientCrosses(v)) continue;
                gradients[v] = ValueTransfer.Receive(owner._world, peer, owner.Tag(true, m, i));
                CountBytes(gradients[v]);
            }
            ListFor(_gradientPieces, m).Add((samples, gradients));
        }

        public void AllReduceGradients()
        {
            if (owner._replicas is null) return;
            // Every replica lists the same parameters in the same order; a parameter without a gradient gets zeros.
            // Shared parameters are summed over all their holders' ranks instead (AllReduceSharedGradients).
            var tensors = owner._ownedParameters.Where(p => p.Parameter.requires_grad && !owner._sharedNames.Contains(p.Name))
                .Select(p => GradientOf(p.Name, p.Parameter)).ToList();
            owner._replicas.AllReduce(tensors, ReduceOp.Sum);
        }

        /// <summary>
        /// Sums the gradients of parameters held by several stages over every rank of those stages, after the schedule
        /// (each rank's share covers its own slices, so the sum is the whole batch's gradient on every copy).
        /// </summary>
        public void AllReduceSharedGradients()
        {
            var parameters = owner._ownedParameters.ToDictionary(p => p.Name, p => p.Parameter, StringComparer.Ordinal);
            foreach ((SharedParameterGroup group, ICommunicator communicator) in owner._sharedGroups)
            {
                var tensors = group.Names.Where(n => parameters[n].requires_grad).Select(n => GradientOf(n, parameters[n])).ToList();
                using var position = TrainingPosition.Enter($"all-reducing the gradients of parameters shared between stages ({string.Join(", ", group.Names.Take(3))})");
                communicator.AllReduce(tensors, ReduceOp.Sum);
            }
        }

        private Tensor GradientOf(string name, Tensor parameter) =>
            _gradients.TryGetValue(name, out Tensor? g) ? g : _gradients[name] = torch.zeros_like(parameter);

        public StepResult Result() =>
            new(_lossNumerator, _lossDenominator, _outputSlices, computeGradients ? _gradients : null, _extraOutputSlices);

        /// <summary>Whether stage boundaries carry a gradient for value <paramref name="v"/> (both sides agree).</summary>
        private bool GradientCrosses(int v) => Layout.NeedsGradient[v];

        private IEnumerable<(int Value, object? Content)> AssembleIncoming(int m, SampleRange slice)
        {
            IReadOnlyList<int> incoming = Layout.Incoming(owner._stage);
            if (incoming.Count == 0) yield break;
            var pieces = _activationPieces[m].OrderBy(p => p.Samples.Start).ToList();
            CheckCoverage(pieces.Select(p => p.Samples), slice, "activations", m);
            foreach (int v in incoming)
            {
                var parts = pieces.Select(p => p.Values[v]).ToList();
                yield return (v, Combine(v, parts, m));
            }
            _activationPieces.Remove(m);
        }

        private Dictionary<int, object> AssembleGradients(int m)
        {
            var pieces = _gradientPieces[m].OrderBy(p => p.Samples.Start).ToList();
            CheckCoverage(pieces.Select(p => p.Samples), MySlice(m), "gradients", m);
            var result = new Dictionary<int, object>();
            foreach (int v in Layout.Outgoing(owner._stage).Where(GradientCrosses))
            {
                var parts = pieces.Select(p => p.Gradients[v]).ToList();
                result[v] = Layout.BatchDependent[v]
                    ? Layout.JoinValue(v, parts, gradients: true)
                    : parts.Aggregate(AddGradients); // a batch-independent value is used by every piece: gradients add
            }
            _gradientPieces.Remove(m);
            return result;
        }

        private object? Combine(int v, List<object?> parts, int m)
        {
            if (parts[0] is Tensor or Tensor[] && Layout.BatchDependent[v])
                return Layout.JoinValue(v, parts.Cast<object>().ToList(), gradients: false);
            if (Layout.BatchDerived.TryGetValue(v, out BatchDerivedNumber? derived))
            {
                // A number taken from a shape that grows with the batch: recompute it for this rank's slice.
                return derived?.For(MySlice(m).Count, parts[0]) ?? throw new NotSupportedException(
                    $"Value '{owner._graph.Values[v].Name}' changes with the batch size but not in proportion, so it cannot cross " +
                    "between stages whose replicas see different numbers of samples. Give neighbouring stages equal replica counts " +
                    "(e.g. RANNC_PLAN=SxR), or compute it inside the stage that uses it.");
            }
            // Anything else does not depend on the batch and must be the same in every piece.
            for (int i = 1; i < parts.Count; i++)
            {
                if (!SameValue(parts[0], parts[i]))
                    throw new InvalidOperationException($"Value '{owner._graph.Values[v].Name}' of micro-batch {m} differs between the replicas that sent it.");
            }
            return parts[0];
        }

        private static bool SameValue(object? a, object? b) => (a, b) switch
        {
            (long[] x, long[] y) => x.SequenceEqual(y),
            (Tensor x, Tensor y) => x.shape.SequenceEqual(y.shape) && x.dtype == y.dtype && x.eq(y).all().item<bool>(),
            (Tensor[] x, Tensor[] y) => x.Length == y.Length && x.Zip(y).All(pair => SameValue(pair.First, pair.Second)),
            // Device has reference equality; replicas in one process send distinct instances of the same device.
            (Device x, Device y) => x.type == y.type && x.index == y.index,
            _ => Equals(a, b),
        };

        private static void CheckCoverage(IEnumerable<SampleRange> pieces, SampleRange slice, string what, int m)
        {
            int next = slice.Start;
            foreach (SampleRange piece in pieces)
            {
                if (piece.Start != next) break;
                next = piece.End;
            }
            if (next != slice.End)
                throw new InvalidOperationException($"The {what} received for micro-batch {m} do not cover samples [{slice.Start}, {slice.End}).");
        }

        /// <summary>
        /// The samples exchanged with <paramref name="peer"/> of the neighbouring stage <paramref name="neighbour"/>
        /// in micro-batch <paramref name="m"/>: the overlap of the two replicas' slices, the same for activations
        /// going forward and gradients coming back.
        /// </summary>
        private SampleRange SharedSamples(int m, int neighbour, int peer)
        {
            PartitionPlan plan = owner._plan;
            int peerReplica = IndexOfRank(plan.Stages[neighbour].ReplicaRanks, peer);
            int lower = Math.Min(owner._stage, neighbour);
            (int fromReplica, int toReplica) = neighbour > owner._stage ? (owner._replica, peerReplica) : (peerReplica, owner._replica);
            return plan.Layout.Transfers(m, plan.Stages[lower].ReplicaRanks.Count, plan.Stages[lower + 1].ReplicaRanks.Count)
                .Single(t => t.FromReplica == fromReplica && t.ToReplica == toReplica).Samples;
        }

        private static int IndexOfRank(IReadOnlyList<int> ranks, int rank)
        {
            for (int i = 0; i < ranks.Count; i++) if (ranks[i] == rank) return i;
            throw new InvalidOperationException($"Rank {rank} is not in the neighbouring stage.");
        }

        /// <summary>The tensors of a value that crosses a stage: the tensor itself, or an array's elements; none for other values.</summary>
        private static Tensor[] TensorsOf(object? value) => value switch
        {
            Tensor tensor => [tensor],
            Tensor[] array => array,
            _ => [],
        };

        /// <summary>Whether autograd differentiates a tensor of this dtype: floating point and complex ones.</summary>
        private static bool TakesGradient(Tensor tensor) => tensor.is_floating_point() || tensor.is_complex();

        /// <summary>The sum of two gradients of one value (tensors, or arrays element by element).</summary>
        private static object AddGradients(object a, object b) => (a, b) switch
        {
            (Tensor x, Tensor y) => x + y,
            (Tensor[] x, Tensor[] y) => x.Zip(y, (p, q) => p + q).ToArray(),
            _ => throw new InvalidOperationException($"Gradients of one value arrived as {a.GetType().Name} and {b.GetType().Name}."),
        };

        /// <summary>autograd.grad returns an undefined tensor (no handle) for an input the outputs do not depend on.</summary>
        private static Tensor? Defined(Tensor? gradient) => gradient is { IsInvalid: false } ? gradient : null;

        /// <summary>
        /// Runs an action of micro-batch <paramref name="m"/> in a dispose scope and keeps the tensors it creates
        /// with that micro-batch, so they are freed together once its backward and gradient sends are done (memory
        /// stays at the micro-batches in flight, not the whole step). The accumulated gradients live on.
        /// </summary>
        public void Capture(int m, Action action)
        {
            using var scope = torch.NewDisposeScope();
            action();
            var created = scope.DisposablesView.ToList();
            // The step's results outlive the micro-batch: accumulated gradients and gathered output slices.
            // By reference: Tensor.Equals compares values, and a NaN tensor is not equal to itself.
            var keep = new HashSet<IDisposable>(_gradients.Values.Concat(_outputSlices.Select(o => o.Item2)).Concat(_extraOutputSlices.Select(o => o.Item3)),
                ReferenceEqualityComparer.Instance);
            scope.Detach(created);
            ListFor(_microBatchTensors, m).AddRange(created.Where(t => !keep.Contains(t)));
        }

        /// <summary>Runs a send; the tensors it creates stay alive until the step's transfers have completed.</summary>
        public IEnumerable<ICommRequest> CaptureUntilStepEnd(Func<IEnumerable<ICommRequest>> send)
        {
            using var scope = torch.NewDisposeScope();
            var requests = send().ToList();
            var created = scope.DisposablesView.ToList();
            scope.Detach(created);
            _stepTensors.AddRange(created);
            return requests;
        }

        /// <summary>Frees micro-batches whose backward and gradient sends are over (called before the next backward).</summary>
        public void ReleaseFinishedMicroBatches(int nextBackward)
        {
            foreach (int m in _backwardDone.Where(m => m != nextBackward).ToList())
            {
                Release(m);
                _backwardDone.Remove(m);
            }
        }

        public void ReleaseAll()
        {
            foreach (int m in _microBatchTensors.Keys.ToList()) Release(m);
            foreach (IDisposable tensor in _stepTensors) tensor.Dispose();
            _stepTensors.Clear();
        }

        private void Release(int m)
        {
            _values.Remove(m);
            _leaves.Remove(m);
            _aliased.Remove(m);
            _losses.Remove(m);
            _lossWeights.Remove(m);
            _outputs.Remove(m);
            _inputGradients.Remove(m);
            _awaitingWeightPass.Remove(m);
            if (_microBatchTensors.Remove(m, out var tensors))
            {
                foreach (IDisposable tensor in tensors) tensor.Dispose();
            }
        }

        /// <summary>The list of micro-batch <paramref name="key"/>, created on first use.</summary>
        private static List<T> ListFor<T>(Dictionary<int, List<T>> map, int key) =>
            map.TryGetValue(key, out List<T>? list) ? list : map[key] = [];
    }
}
