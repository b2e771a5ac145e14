using System.Diagnostics;
using System.Globalization;
using System.Text;
using Rannc.Capture;
using Rannc.Communication;
using Rannc.Deferred;
using Rannc.Execution;
using Rannc.Execution.Checkpoints;
using Rannc.Execution.Checks;
using Rannc.Execution.Memory;
using Rannc.Execution.Profiling;
using Rannc.Execution.Tracing;
using Rannc.Partitioner;
using Rannc.Planning;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using PlanningGraph = Rannc.Partitioner.Graph;

namespace Rannc;

/// <summary>
/// Trains a <c>[RaNNC]</c> model as a pipeline of stages with data-parallel replicas. Every rank runs the same
/// program with its own model instance (same seed): <see cref="forward"/> splits the batch into micro-batches, runs
/// this rank's share of the schedule and returns the loss (the same value on every rank); <c>loss.backward()</c>
/// puts the gradients of the parameters this rank owns into <c>.grad</c>; the user's optimizer then updates them
/// (the other parameters have no gradient and are skipped).
/// </summary>
/// <remarks>
/// On the first call it captures the graph, measures value sizes, profiles the nodes (shared out among the ranks),
/// plans with the partitioner for the world size and each rank's memory budget, and caches the plan; a later run
/// with the same inputs loads the plan without profiling. The model's loss must be a mean over the samples of the
/// batch, so that the weighted sum over micro-batch slices equals the whole-batch loss.
/// </remarks>
public sealed class RanncModule : IDisposable
{
    private readonly nn.Module _model;
    private readonly ICommunicator _world;
    private readonly RanncOptions _options;
    private readonly Tensor _anchor = torch.zeros(Array.Empty<long>(), ScalarType.Float64).requires_grad_(true);
    private readonly ParameterResidency _residency = new();
    private readonly OptimizerStateResidency _optimizerResidency = new();
    private readonly MemoryReport? _memory;
    private Deployed? _deployed;
    private Exception? _failedBackward;
    private long _steps;
    private long _trainingSteps;
    private readonly StepTracing? _tracing;
    // The training step whose loss has not had backward() yet (null once it has): ranks must agree on it.
    private long? _awaitingBackward;

    /// <summary>
    /// The one added line: takes this rank's communicator from where the program runs (<see cref="AmbientCommunicator"/>:
    /// the current rank inside <see cref="RankLauncher.Run"/>, the MPI world under mpiexec, otherwise a single rank).
    /// </summary>
    public RanncModule(nn.Module model, optim.Optimizer optimizer, RanncOptions? options = null)
        : this(model, optimizer, AmbientCommunicator.Current, options)
    {
    }

    /// <param name="model">The <c>[RaNNC]</c> model; every rank constructs its own with the same seed.</param>
    /// <param name="optimizer">The optimizer over the model's parameters (it steps the parameters this rank owns).</param>
    /// <param name="communicator">This rank's communicator (from <see cref="RankLauncher"/>).</param>
    /// <param name="options">Planning and runtime options; <c>RANNC_*</c> environment variables override them.</param>
    public RanncModule(nn.Module model, optim.Optimizer optimizer, ICommunicator communicator, RanncOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(communicator);
        _model = model;
        Optimizer = optimizer ?? throw new ArgumentNullException(nameof(optimizer));
        _world = communicator;
        _options = (options ?? new RanncOptions()).WithEnvironment();
        if (_options.Timeout is { } timeout) communicator.WaitTimeout = timeout;
        _memory = MemoryReport.Start(_options.MemoryReportSteps, model, Optimizer, communicator);
        if (_options.TracePath is { } tracePath) _tracing = new StepTracing(tracePath, _options.TraceStep, communicator, Log);
    }

    /// <summary>
    /// Creates the optimizer for this rank's own parameters only, so no optimizer state is ever allocated for the
    /// parameters of other stages (TorchSharp's Adam allocates its two moments of every parameter it is given when it
    /// is constructed: with the one-line form, every rank briefly holds them for the whole model).
    /// <paramref name="createOptimizer"/> is called once, now, with no parameters (write it as for the model's, e.g.
    /// <c>ps =&gt; torch.optim.Adam(ps, lr: 1e-3)</c>); the first <see cref="forward"/> adds the parameters of this rank's
    /// stage to it as one more parameter group with the optimizer's defaults. <see cref="Optimizer"/> is that optimizer:
    /// step it, and give it to learning-rate schedulers, as usual.
    /// </summary>
    public RanncModule(nn.Module model, Func<IEnumerable<Parameter>, optim.Optimizer> createOptimizer, RanncOptions? options = null)
        : this(model, CreateEmpty(createOptimizer), AmbientCommunicator.Current, options)
    {
        _optimizerGetsOwnedParameters = true;
    }

    /// <inheritdoc cref="RanncModule(nn.Module, Func{IEnumerable{Parameter}, optim.Optimizer}, RanncOptions?)"/>
    public RanncModule(nn.Module model, Func<IEnumerable<Parameter>, optim.Optimizer> createOptimizer, ICommunicator communicator, RanncOptions? options = null)
        : this(model, CreateEmpty(createOptimizer), communicator, options)
    {
        _optimizerGetsOwnedParameters = true;
    }

    /// <summary>
    /// Deferred construction: builds the model from <paramref name="createModel"/> so that each rank holds only its share.
    /// Seed as for plain code, then call this (with in-process ranks, which share one generator, seed inside the factory):
    /// rank 0 calls the factory on the CPU (its parameters are exactly what plain construction with that seed gives), every
    /// other rank with TorchSharp's default device set to meta (shapes only, no storage); in-process ranks wait for each
    /// other around the constructions (every rank must call this constructor). At the first <see cref="forward"/> rank 0 captures, profiles and plans; each rank then gives storage to
    /// its own stage's parameters only and receives their values from rank 0, and rank 0 frees the rest. The optimizer
    /// comes from <paramref name="createOptimizer"/> as in the factory overload. The model is <see cref="Model"/>.
    /// </summary>
    public RanncModule(Func<nn.Module> createModel, Func<IEnumerable<Parameter>, optim.Optimizer> createOptimizer, RanncOptions? options = null)
        : this(createModel, createOptimizer, AmbientCommunicator.Current, options)
    {
    }

    /// <inheritdoc cref="RanncModule(Func{nn.Module}, Func{IEnumerable{Parameter}, optim.Optimizer}, RanncOptions?)"/>
    public RanncModule(Func<nn.Module> createModel, Func<IEnumerable<Parameter>, optim.Optimizer> createOptimizer, ICommunicator communicator,
        RanncOptions? options = null)
        : this(DeferredConstruction.Build(createModel, communicator ?? throw new ArgumentNullException(nameof(communicator))),
            CreateEmpty(createOptimizer), communicator, options)
    {
        _optimizerGetsOwnedParameters = true;
        _deferred = true;
    }

    /// <summary>Whether the model was built from a factory, whole on rank 0 only (deferred construction).</summary>
    private readonly bool _deferred;

    /// <summary>The model (for deferred construction: the one the factory built on this rank).</summary>
    public nn.Module Model => _model;

    private static optim.Optimizer CreateEmpty(Func<IEnumerable<Parameter>, optim.Optimizer> createOptimizer)
    {
        ArgumentNullException.ThrowIfNull(createOptimizer);
        optim.Optimizer optimizer = createOptimizer([]) ?? throw new ArgumentException("The optimizer factory returned null.", nameof(createOptimizer));
        if (optimizer is not OptimizerHelper helper || helper.parameters().Any())
        {
            throw new ArgumentException(
                $"The optimizer factory must build one of TorchSharp's optimizers over the parameters it is given (it got none); it returned a " +
                $"{optimizer.GetType().Name}{(optimizer is OptimizerHelper ? " that holds parameters" : "")}.", nameof(createOptimizer));
        }
        return optimizer;
    }

    /// <summary>Whether the optimizer was made empty by a factory and gets this rank's parameters at deployment.</summary>
    private readonly bool _optimizerGetsOwnedParameters;

    public optim.Optimizer Optimizer { get; }

    /// <summary>
    /// Adds this rank's parameters to the optimizer a factory made, as a parameter group of the optimizer's own kind
    /// (its <c>step</c> reads groups as that type) with no options set, so the optimizer's defaults apply.
    /// </summary>
    private void GiveOptimizerOwnedParameters(IEnumerable<Tensor> owned)
    {
        var optimizer = (OptimizerHelper)Optimizer;
        ParamGroup template = optimizer.ParamGroups.OfType<ParamGroup>().LastOrDefault()
            ?? throw new InvalidOperationException($"{Optimizer.GetType().Name} has no parameter group to copy the kind of.");
        var group = (ParamGroup)(Activator.CreateInstance(template.GetType())
            ?? throw new InvalidOperationException($"Cannot create a {template.GetType().Name}."));
        group.Parameters = owned.OfType<Parameter>().ToList();
        optimizer.add_param_group(group);
    }

    /// <summary>The plan in use (null before the first <see cref="forward"/>).</summary>
    public PartitionPlan? Plan => _deployed?.Plan;

    /// <summary>Whether the plan came from the plan cache (or a deployment file) rather than from profiling.</summary>
    public bool PlanLoaded => _deployed?.Loaded ?? false;

    /// <summary>The captured graph (null before the first <see cref="forward"/>).</summary>
    public CapturedGraph? Graph => _deployed?.Graph;

    /// <summary>
    /// Writes the captured graph as Graphviz DOT: one cluster per stage of the plan, nodes coloured by stage, module
    /// clusters inside; and, when Graphviz's <c>dot</c> is on PATH, the picture as <c><paramref name="path"/>.svg</c>
    /// (otherwise a log line says so). Available after the first <see cref="forward"/>.
    /// </summary>
    /// <returns>The SVG's path, or null when Graphviz is not installed.</returns>
    public string? WriteGraph(string path)
    {
        File.WriteAllText(path, (Graph ?? throw new InvalidOperationException("The graph is captured by the first forward(); call WriteGraph after it."))
            .ToDot(Plan!.Stages.Select(s => s.NodeIds).ToList()));
        string? svg = GraphvizRenderer.TryRenderSvg(path, Environment.GetEnvironmentVariable("PATH"), out string? note);
        if (note is not null) Log($"Rannc: {note}");
        return svg;
    }

    /// <summary>
    /// Runs the pipeline on the whole batch (every rank passes the same tensors; the first dimension is the batch)
    /// and returns forward()'s result: the loss (the same on every rank), or for a model that returns a non-scalar
    /// tensor, the whole output gathered to every rank (inference only).
    /// </summary>
    public Tensor forward(params Tensor[] inputs)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        return forward(Array.ConvertAll<Tensor, object?>(inputs, t => t));
    }

    /// <summary>
    /// Runs the pipeline on forward()'s arguments: tensors (the batch), null for an optional <c>Tensor?</c>, and values
    /// (<c>int startPos</c>, flags, enums) that every rank passes the same and that stay the same every step.
    /// </summary>
    public Tensor forward(params object?[] inputs) => Forward(inputs, extraOutputs: null);

    /// <summary>
    /// Runs the pipeline like <see cref="forward(object?[])"/> for a model whose forward() returns the loss and more
    /// (a tuple: <c>(loss, logits)</c>), and returns every output in order: the loss first, exactly as
    /// <c>forward</c> returns it (call <c>backward()</c> on it), then the others whole (all samples) on every rank,
    /// without gradients: they are for metrics, training follows the loss alone.
    /// </summary>
    public Tensor[] ForwardOutputs(params object?[] inputs)
    {
        var extras = new List<Tensor>();
        Tensor first = Forward(inputs, extras);
        return [first, .. extras];
    }

    /// <inheritdoc cref="ForwardOutputs(object?[])"/>
    public Tensor[] ForwardOutputs(params Tensor[] inputs)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        return ForwardOutputs(Array.ConvertAll<Tensor, object?>(inputs, t => t));
    }

    /// <param name="extraOutputs">Receives the outputs after the first (gathered from the last stage), or null to skip them.</param>
    private Tensor Forward(object?[] inputs, List<Tensor>? extraOutputs)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        if (_failedBackward is { } failure)
            throw new InvalidOperationException($"The previous backward pass through the pipeline failed: {failure.Message}", failure);
        if (inputs.Length == 0) throw new ArgumentException("forward needs the batch: forward()'s arguments.");
        bool training = _model.training && torch.is_grad_enabled();
        long step = _steps++;
        using var position = TrainingPosition.Enter($"step {step}"); // for watchdog messages
        if (_options.CheckInputSteps is not int checkedSteps || step < checkedSteps)
            StepAgreement.Check(_world, StepAgreement.Of(inputs, training, _awaitingBackward, hashContents: true), step);
        _awaitingBackward = null;
        if (training && _deployed is not null) _memory?.StepBoundary(_world, _deployed.Plan, LogOnce);
        _deployed ??= Deploy(inputs);
        CheckInputsMatchFirstStep(inputs);
        int batch = _deployed.Slicer.BatchSize(inputs);
        if (batch != _deployed.Plan.GlobalBatchSize)
        {
            throw new ArgumentException(
                $"The plan was made for batch size {_deployed.Plan.GlobalBatchSize}, but this batch has {batch} samples. " +
                "Use the same batch size every step (drop or pad the last batch).");
        }
        long trainingStep = training ? ++_trainingSteps : 0;
        StepRecorder? recorder = training ? _tracing?.Begin(trainingStep, _deployed.Executor) : null;
        if (_deployed.OutputIsScalar)
        {
            StepResult result = _deployed.Executor.Run(inputs, training);
            Tensor loss = Loss(result, training, step, inputs);
            if (extraOutputs is not null)
            {
                for (int k = 1; k < _deployed.Graph.Outputs.Count; k++)
                {
                    extraOutputs.Add(GatherOutput(_deployed.Graph.Outputs[k], _deployed.ExtraOutputDTypes[k - 1],
                        result.ExtraOutputSlices.Where(o => o.Output == k).Select(o => (o.Samples, o.Value)).ToList()));
                }
            }
            if (recorder is not null) _tracing!.Finish(recorder, _deployed.Executor, _deployed.Plan, trainingStep);
            if (training)
            {
                _awaitingBackward = step;
                AverageReplicaBuffers();
            }
            return loss;
        }
        if (!training) return GatherOutput(_deployed.Graph.Outputs[0], _deployed.OutputDType, _deployed.Executor.Run(inputs, computeGradients: false).OutputSlices);

        // The loss is computed from the gathered output after this call, so the backward passes wait for its gradient.
        PipelineExecutor.DeferredStep pending = _deployed.Executor.RunForward(inputs);
        AverageReplicaBuffers();
        using Tensor output = GatherOutput(_deployed.Graph.Outputs[0], _deployed.OutputDType, pending.OutputSlices);
        var owned = _deployed.OwnedParameters;
        Deployed deployed = _deployed;
        _awaitingBackward = step;
        return PipelineResultFunction.apply(_anchor, output, (Action<Tensor>)(gradOutput =>
        {
            _awaitingBackward = null;
            // An exception cannot cross libtorch's native backward: report it now and fail the next call.
            try
            {
                ConsumeGradients(owned, pending.Backward(gradOutput), scale: null);
                if (recorder is not null) _tracing!.Finish(recorder, deployed.Executor, deployed.Plan, trainingStep);
            }
            catch (Exception e)
            {
                _failedBackward = e;
                Log($"Rannc: rank {_world.Rank}: the pipeline's backward pass failed: {e.Message}");
            }
        }));
    }

    /// <summary>
    /// Every call passes as many inputs as forward() takes: tensors with the dtypes and ranks of the first call, null
    /// where the first call passed null (the graph was built for it), other values equal to the first call's.
    /// </summary>
    private void CheckInputsMatchFirstStep(object?[] inputs)
    {
        Deployed deployed = _deployed!;
        if (inputs.Length != deployed.Graph.Inputs.Count)
        {
            throw new ArgumentException(
                $"forward() of {_model.GetType().Name} takes {deployed.Graph.Inputs.Count} input(s), but {inputs.Length} were given.", nameof(inputs));
        }
        for (int i = 0; i < inputs.Length; i++)
        {
            string name = deployed.Graph.Values[deployed.Graph.Inputs[i]].Name;
            string first = deployed.FirstInputs[i], now = InputKind(inputs[i]);
            if (first == now) continue;
            string rule = inputs[i] is Tensor && first.StartsWith("tensor", StringComparison.Ordinal)
                ? "pass tensors of the same dtype and number of dimensions every step"
                : "the graph was built for the first call's null arguments and values (int, bool, enum arguments): pass the same every step";
            throw new ArgumentException(
                $"Argument {i} ('{name}') of forward() is {now}, but the plan was made for {first}: {rule}.", nameof(inputs));
        }
    }

    /// <summary>Switches the model (every stage) to training mode.</summary>
    public void Train(bool on = true) => _model.train(on);

    /// <summary>Switches the model to evaluation mode: forward runs the pipeline without gradients.</summary>
    public void Eval() => _model.eval();

    /// <summary>
    /// Every parameter and buffer of the model under its own name, up to date on every rank (each comes from the
    /// rank that trains it). Every rank must call it. Parameters this rank holds are brought up to date too.
    /// </summary>
    public Dictionary<string, Tensor> StateDict()
    {
        IReadOnlyDictionary<string, int> owners = _deployed?.Owners ?? new Dictionary<string, int>();
        var state = new Dictionary<string, Tensor>();
        using (torch.no_grad())
        {
            foreach ((string name, Tensor local) in _model.state_dict())
            {
                // A tied weight is listed under each of its names; it is one tensor under its graph name.
                string graphName = GraphName(name);
                bool released = _residency.IsReleased(graphName);
                Tensor gathered = released ? _residency.Zeros(graphName) : local.detach().clone();
                // A tensor no stage reads has no owner: rank 0's copy is the one (a deferred model's other ranks hold none).
                if (owners.TryGetValue(graphName, out int owner)) _world.Broadcast(gathered, owner);
                else if (_deferred && _deployed is not null) _world.Broadcast(gathered, 0);
                if (!released) local.copy_(gathered);
                state[name] = gathered;
            }
        }
        return state;
    }

    /// <summary>
    /// Gathers the optimizer's per-parameter state (e.g. Adam's moments and step counts) from the ranks that own the
    /// parameters, so that every rank's optimizer holds the whole model's state. Every rank must call it.
    /// </summary>
    public void GatherOptimizerState()
    {
        if (Optimizer is not OptimizerHelper optimizer) throw new NotSupportedException($"{Optimizer.GetType().Name} does not expose its state.");
        if (_optimizerGetsOwnedParameters)
        {
            throw new NotSupportedException(
                "This optimizer was made by a factory and holds only this rank's parameters, so it cannot hold the whole model's state; " +
                "save a checkpoint (SaveCheckpoint) instead, or pass an optimizer over all the parameters.");
        }
        IReadOnlyDictionary<string, int> owners = _deployed?.Owners ?? new Dictionary<string, int>();
        var nameOfHandle = _model.named_parameters().ToDictionary(p => p.parameter.Handle, p => p.name);
        // The released parameters' state gets its storage back, to receive the owners' values.
        _optimizerResidency.RestoreAll();
        List<OptimizerState> states = optimizer.state_dict().State;
        var parameters = optimizer.parameters().ToList();
        var mine = new Dictionary<int, byte[]>();
        for (int i = 0; i < parameters.Count; i++)
        {
            if (nameOfHandle.TryGetValue(parameters[i].Handle, out string? name) && name is not null && owners.TryGetValue(GraphName(name), out int owner) && owner == _world.Rank)
            {
                using var buffer = new MemoryStream();
                using (var writer = new BinaryWriter(buffer, Encoding.UTF8, leaveOpen: true)) states[i].SaveStateDict(writer);
                mine[i] = buffer.ToArray();
            }
        }
        foreach (Dictionary<int, byte[]> fromRank in _world.AllGather(mine))
        {
            foreach ((int index, byte[] bytes) in fromRank)
            {
                using var reader = new BinaryReader(new MemoryStream(bytes));
                states[index].LoadStateDict(reader);
            }
        }
    }

    /// <summary>
    /// Saves a checkpoint into <paramref name="directory"/> as a new folder <c>checkpoint-NNNNNN</c>: every rank
    /// writes only the parameters, buffers and optimizer state it owns (one file per rank, nothing gathered), rank 0
    /// writes a manifest (names, dtypes, shapes, sizes, checksums, the plan) and renames the folder into place, so a
    /// crash during the save leaves the previous checkpoint intact. The newest <paramref name="keep"/> are kept. Every
    /// rank must call it; the folder must be shared by the ranks (one machine, or a shared file system).
    /// </summary>
    /// <returns>The checkpoint folder written.</returns>
    public string SaveCheckpoint(string directory, int keep = 2)
    {
        ArgumentNullException.ThrowIfNull(directory);
        IReadOnlyDictionary<string, int> owners = _deployed?.Owners ?? new Dictionary<string, int>();
        bool Mine(string name) => (owners.TryGetValue(GraphName(name), out int owner) ? owner : 0) == _world.Rank;
        var items = new List<CheckpointFolder.Item>();
        foreach ((string name, Tensor tensor) in _model.state_dict())
        {
            if (Mine(name)) items.Add(new CheckpointFolder.Item(name, CheckpointEntry.TensorKind, tensor, null));
        }
        string? optimizerName = null;
        if (Optimizer is OptimizerHelper optimizer)
        {
            optimizerName = Optimizer.GetType().FullName;
            var nameOfHandle = _model.named_parameters().ToDictionary(p => p.parameter.Handle, p => p.name);
            List<OptimizerState> states = optimizer.state_dict().State;
            var parameters = optimizer.parameters().ToList();
            for (int i = 0; i < parameters.Count; i++)
            {
                if (!nameOfHandle.TryGetValue(parameters[i].Handle, out string? name) || !Mine(name)) continue;
                using var buffer = new MemoryStream();
                using (var writer = new BinaryWriter(buffer, Encoding.UTF8, leaveOpen: true)) states[i].SaveStateDict(writer);
                items.Add(new CheckpointFolder.Item(name, CheckpointEntry.OptimizerKind, null, buffer.ToArray()));
            }
        }
        string plan = _deployed is { } deployed
            ? $"{deployed.Plan.Stages.Count} stage(s) [{string.Join(", ", deployed.Plan.Stages.Select(s => s.ReplicaRanks.Count))}] on {_world.Size} rank(s)"
            : $"not deployed, {_world.Size} rank(s)";
        return CheckpointFolder.Save(_world, directory, items, plan, optimizerName, keep);
    }

    /// <summary>
    /// Loads the newest complete checkpoint in <paramref name="directory"/> (or the checkpoint folder itself) into
    /// this model and optimizer, by name, whatever plan and world size wrote it. Every item's size and checksum is
    /// checked; a different model (names, dtypes or shapes differ) fails listing the differences. The optimizer state
    /// must be in the checkpoint unless <paramref name="loadOptimizerState"/> is false. Every rank calls it.
    /// </summary>
    public void LoadCheckpoint(string directory, bool loadOptimizerState = true)
    {
        if (_deferred && _deployed is null)
        {
            throw new InvalidOperationException(
                "This model was built from a factory (deferred construction): its parameters get storage at the first forward(), for this " +
                "rank's stage only; load the checkpoint after it.");
        }
        (string folder, CheckpointManifest manifest) = CheckpointFolder.Open(directory);
        Dictionary<string, CheckpointEntry> entries = CheckpointEntries(folder, manifest, _model,
            (name, tensor) => _residency.IsReleased(GraphName(name)) ? _residency.ShapeOf(GraphName(name)) : tensor.shape);
        using (torch.no_grad())
        {
            // Only what this rank holds is read: parameters of other stages hold no storage here (their holders load them).
            foreach ((string name, Tensor local) in _model.state_dict())
            {
                if (_residency.IsReleased(GraphName(name))) continue;
                using Tensor value = CheckpointFolder.ToTensor(entries[name], CheckpointFolder.Read(folder, entries[name]));
                local.copy_(value);
            }
        }
        if (!loadOptimizerState) return;
        if (_optimizerGetsOwnedParameters && _deployed is null)
        {
            throw new InvalidOperationException(
                "The optimizer made by the factory gets this rank's parameters at the first forward(); load the checkpoint after it " +
                "(or pass loadOptimizerState: false to load only the parameters now).");
        }
        var stored = manifest.Entries.Where(e => e.Kind == CheckpointEntry.OptimizerKind).ToDictionary(e => e.Name);
        if (manifest.Optimizer is null || stored.Count == 0)
        {
            throw new InvalidDataException(
                $"Checkpoint {folder} holds no optimizer state. Pass loadOptimizerState: false to load the parameters only (the optimizer starts afresh).");
        }
        if (Optimizer is not OptimizerHelper optimizer || Optimizer.GetType().FullName != manifest.Optimizer)
            throw new InvalidDataException($"Checkpoint {folder} holds the state of a {manifest.Optimizer}, but this optimizer is a {Optimizer.GetType().FullName}.");
        var nameOfHandle = _model.named_parameters().ToDictionary(p => p.parameter.Handle, p => p.name);
        List<OptimizerState> states = optimizer.state_dict().State;
        var parameters = optimizer.parameters().ToList();
        for (int i = 0; i < parameters.Count; i++)
        {
            // A parameter of another stage is never stepped here, so its state is not read either.
            if (!nameOfHandle.TryGetValue(parameters[i].Handle, out string? name) || _residency.IsReleased(GraphName(name))) continue;
            if (!stored.TryGetValue(name, out CheckpointEntry? entry))
                throw new InvalidDataException($"Checkpoint {folder} has no optimizer state for parameter '{name}'.");
            // Other stages' parameters: their owners load the state, this rank keeps none.
            if (_optimizerResidency.IsReleased(states[i])) continue;
            using var reader = new BinaryReader(new MemoryStream(CheckpointFolder.Read(folder, entry)));
            states[i].LoadStateDict(reader);
        }
    }

    /// <summary>
    /// Writes the newest complete checkpoint in <paramref name="checkpoint"/> as one plain TorchSharp file
    /// (<c>module.save</c>) that a plain <paramref name="model"/> of the same class loads with <c>module.load</c>.
    /// Needs no communicator: run it in any single process after training.
    /// </summary>
    public static void ConsolidateCheckpoint(string checkpoint, nn.Module model, string modelPath)
    {
        ArgumentNullException.ThrowIfNull(model);
        (string folder, CheckpointManifest manifest) = CheckpointFolder.Open(checkpoint);
        Dictionary<string, CheckpointEntry> entries = CheckpointEntries(folder, manifest, model, (_, tensor) => tensor.shape);
        using (torch.no_grad())
        {
            foreach ((string name, Tensor local) in model.state_dict())
            {
                using Tensor value = CheckpointFolder.ToTensor(entries[name], CheckpointFolder.Read(folder, entries[name]));
                local.copy_(value);
            }
        }
        string? parent = Path.GetDirectoryName(Path.GetFullPath(modelPath));
        if (parent is not null) Directory.CreateDirectory(parent);
        model.save(modelPath);
    }

    /// <summary>
    /// The checkpoint's entry of every tensor of <paramref name="model"/>'s state dict, after checking names, dtypes
    /// and shapes against the manifest (nothing is read yet: each rank reads only the entries it needs).
    /// </summary>
    private static Dictionary<string, CheckpointEntry> CheckpointEntries(string folder, CheckpointManifest manifest, nn.Module model,
        Func<string, Tensor, long[]> shapeOf)
    {
        var stored = manifest.Entries.Where(e => e.Kind == CheckpointEntry.TensorKind).ToDictionary(e => e.Name);
        var local = model.state_dict();
        var problems = new List<string>();
        foreach ((string name, Tensor tensor) in local)
        {
            if (!stored.TryGetValue(name, out CheckpointEntry? entry)) problems.Add($"'{name}' is not in the checkpoint");
            else if (entry.DType != tensor.dtype.ToString() || !(entry.Shape ?? []).SequenceEqual(shapeOf(name, tensor)))
                problems.Add($"'{name}' is {entry.DType}[{string.Join(", ", entry.Shape ?? [])}] in the checkpoint but {tensor.dtype}[{string.Join(", ", shapeOf(name, tensor))}] in the model");
        }
        problems.AddRange(stored.Keys.Where(n => !local.ContainsKey(n)).Select(n => $"'{n}' is in the checkpoint but not in the model"));
        if (problems.Count > 0)
        {
            throw new InvalidDataException(
                $"Checkpoint {folder} was written for a different model ({problems.Count} difference(s)):\n  " + string.Join("\n  ", problems.Take(20)));
        }
        return local.Keys.ToDictionary(name => name, name => stored[name]);
    }

    /// <summary>
    /// Scales the gradients of all parameters, across all ranks, so that their global L2 norm is at most
    /// <paramref name="maxNorm"/>; returns the norm before clipping. Call after <c>loss.backward()</c> on every rank.
    /// </summary>
    public double ClipGradNorm(double maxNorm)
    {
        IReadOnlyDictionary<string, int> owners = _deployed?.Owners ?? new Dictionary<string, int>();
        // A tied weight is listed under several names but has one gradient: count and scale it once.
        var owned = _model.named_parameters().Where(p => p.parameter.grad is not null && GraphName(p.name) == p.name).ToList();
        double sumOfSquares = 0;
        foreach ((string name, Parameter parameter) in owned)
        {
            // Replicas hold equal gradients: count each parameter once, on the rank that owns it.
            bool counts = owners.TryGetValue(name, out int owner) ? owner == _world.Rank : _world.Rank == 0;
            if (counts) sumOfSquares += parameter.grad!.to_type(ScalarType.Float64).square().sum().item<double>();
        }
        using var total = torch.tensor(sumOfSquares, ScalarType.Float64);
        _world.AllReduce(total, ReduceOp.Sum);
        double norm = Math.Sqrt(total.item<double>());
        double scale = maxNorm / (norm + 1e-6);
        if (scale < 1)
        {
            using var noGrad = torch.no_grad();
            foreach ((_, Parameter parameter) in owned) parameter.grad!.mul_(scale);
        }
        return norm;
    }

    public void Dispose()
    {
        _tracing?.ReportIfNotWritten(_trainingSteps);
        _deployed?.Replicas?.Dispose();
        foreach (var (_, communicator) in _deployed?.SharedGroups ?? []) communicator.Dispose();
        _anchor.Dispose();
    }

    /// <summary>What must stay the same about an argument from step to step: a tensor's dtype and rank, null, or a value.</summary>
    private static string InputKind(object? input) => input switch
    {
        Tensor t => $"tensor {t.dtype} with {t.dim()} dimension(s)",
        null => "null",
        _ => $"{input.GetType().Name} {Convert.ToString(input, CultureInfo.InvariantCulture)}",
    };

    private Tensor Loss(StepResult step, bool training, long stepNumber, object?[] inputs)
    {
        // Σ weight × slice loss and Σ weight over every slice of every rank (LossCombination).
        using var totals = torch.tensor(new[] { step.LossNumerator, step.LossDenominator }, ScalarType.Float64);
        _world.AllReduce(totals, ReduceOp.Sum);
        double numerator = totals[0].item<double>();
        double denominator = _deployed!.Loss.Rule == LossRule.Sum ? 1 : totals[1].item<double>();
        // No counted item in the whole batch: the mean is 0/0, NaN as in plain TorchSharp.
        double loss = denominator == 0 ? double.NaN : numerator / denominator;
        Tensor value = torch.tensor(loss, ScalarType.Float64).to_type(_deployed.OutputDType);
        if (!training) return value;
        IReadOnlyDictionary<string, Tensor> gradients = step.Gradients!;
        if (_options.PerturbGradient is { } perturb) gradients = gradients.ToDictionary(g => g.Key, g => perturb(g.Key, g.Value));
        var owned = _deployed.OwnedParameters;
        double inverse = 1 / denominator;
        if (stepNumber < _options.VerifySteps) VerifyStep(stepNumber, inputs, loss, gradients, inverse);
        bool consumed = false;
        using (value)
        {
            return PipelineResultFunction.apply(_anchor, value, (Action<Tensor>)(gradOutput =>
            {
                _awaitingBackward = null;
                if (consumed)
                {
                    _failedBackward = new InvalidOperationException(
                        "backward() ran a second time on one Rannc loss (retain_graph); Rannc adds a step's pipeline gradients once. Run forward() again instead.");
                    Log($"Rannc: rank {_world.Rank}: {_failedBackward.Message}");
                    return;
                }
                consumed = true;
                using Tensor scale = gradOutput.to_type(ScalarType.Float64) * inverse;
                ConsumeGradients(owned, gradients, scale);
            }));
        }
    }

    /// <summary>Runs the verify mode's comparison for this step (every rank).</summary>
    private void VerifyStep(long step, object?[] inputs, double loss, IReadOnlyDictionary<string, Tensor> gradients, double inverse)
    {
        Deployed deployed = _deployed!;
        using var scope = torch.NewDisposeScope();
        var normalised = gradients.ToDictionary(g => g.Key, g => g.Value * inverse);
        var tensors = _model.named_parameters().Select(p => (p.name, tensor: (Tensor)p.parameter))
            .Concat(_model.named_buffers().Select(b => (b.name, tensor: b.buffer)))
            .Where(p => deployed.Graph.CanonicalName(p.name) == p.name)
            .ToDictionary(p => p.name, p => p.tensor);
        Tensor ValueOf(string name)
        {
            using var noGrad = torch.no_grad();
            return _residency.IsReleased(name) ? _residency.Zeros(name) : tensors[name].detach().clone();
        }
        Action Restore(IReadOnlyDictionary<string, Tensor> values)
        {
            var buffers = _model.named_buffers().Select(b => (b.buffer, saved: b.buffer.detach().clone())).ToList();
            _residency.RestoreAll(values);
            return () =>
            {
                using var noGrad = torch.no_grad();
                foreach ((Tensor buffer, Tensor saved) in buffers) buffer.copy_(saved);
                _residency.ReleaseAgain();
            };
        }
        if (new StepVerifier(deployed.Graph, deployed.Plan, deployed.Placement, deployed.Loss, _world, deployed.Slicer)
            .Verify(step, inputs, loss, normalised, ValueOf, Restore, _options.DeviceMemoryBytes ?? DefaultMemoryBudget(), Log))
        {
            LogOnce($"Rannc verify: step {step} matches the unpartitioned step.");
        }
    }

    /// <summary>
    /// Adds the pipeline's gradients (times <paramref name="scale"/>, when given) to the owned parameters' <c>.grad</c>
    /// (in place, as autograd accumulates), then frees them. Temporaries and the handles that reading <c>.grad</c>
    /// makes are freed here too: left to the .NET finalizer they would keep whole copies of the gradients resident.
    /// </summary>
    private static void ConsumeGradients(IReadOnlyList<(string Name, Tensor Parameter)> owned, IReadOnlyDictionary<string, Tensor> gradients, Tensor? scale)
    {
        using (torch.NewDisposeScope())
        using (torch.no_grad())
        {
            foreach ((string name, Tensor parameter) in owned)
            {
                if (!gradients.TryGetValue(name, out Tensor? gradient)) continue;
                Tensor scaled = scale is null ? gradient.clone() : gradient * scale.to_type(gradient.dtype);
                if (parameter.grad is Tensor current) current.add_(scaled);
                else parameter.grad = scaled;
            }
        }
        foreach (Tensor gradient in gradients.Values) gradient.Dispose();
    }

    /// <summary>Every rank gets the whole output: the last stage's replicas fill their slices, a sum joins them.</summary>
    private Tensor GatherOutput(int outputValue, ScalarType dtype, IReadOnlyList<(SampleRange Samples, Tensor Value)> slices)
    {
        // The first slice's sample count, then its shape.
        long[]?[] shapes = _world.AllGather<long[]?>(slices.Count > 0 ? [slices[0].Samples.Count, .. slices[0].Value.shape] : null);
        long[] first = shapes.First(s => s is not null)!;
        int sliceSamples = (int)first[0];
        long[] sliceShape = first[1..];
        long[] shape = _deployed!.Layout.ShapeForSamples(outputValue, sliceShape, sliceSamples, _deployed.Plan.GlobalBatchSize);
        Tensor output = torch.zeros(shape, dtype);
        foreach ((SampleRange samples, Tensor value) in slices)
            _deployed.Layout.SliceSamples(outputValue, output, samples.Start, samples.Count).copy_(value);
        _world.AllReduce(output, ReduceOp.Sum);
        return output;
    }

    /// <summary>Rank 0's plan as JSON, or why there is none.</summary>
    private sealed record PlanOutcome(string? Plan, string? Error);

    /// <summary>The options every rank must share (they decide the plan and which collectives run each step).</summary>
    private sealed record SharedSettings(string Plan, string Schedule, int? MicroBatches, double MemoryMargin, int MinSamplesPerSlice,
        int? CheckInputSteps, int VerifySteps, double OptimizerStateFactor, string? LoadDeployment, int MemoryReportSteps, string Trace, bool Deferred);

    /// <summary>Fails, naming the ranks and the options, when ranks were started with different settings.</summary>
    private void CheckSharedSettings()
    {
        var mine = new SharedSettings(
            _options.ForcedReplicasPerStage is { } replicas ? string.Join(",", replicas) : "auto", _options.Schedule?.ToString() ?? "auto",
            _options.MicroBatches, _options.MemoryMargin, _options.MinSamplesPerSlice, _options.CheckInputSteps, _options.VerifySteps,
            _options.OptimizerStateFactor, _options.LoadDeploymentPath, _options.MemoryReportSteps, _options.TracePath is null ? "off" : $"step {_options.TraceStep}",
            _deferred);
        SharedSettings[] all = _world.AllGather(mine);
        var differences = typeof(SharedSettings).GetProperties()
            .Where(p => all.Select(a => Convert.ToString(p.GetValue(a), CultureInfo.InvariantCulture)).Distinct().Count() > 1)
            .Select(p => $"{p.Name}: " + string.Join("; ", all.Select((a, r) => $"rank {r}: {Convert.ToString(p.GetValue(a), CultureInfo.InvariantCulture) ?? "unset"}")))
            .ToList();
        if (differences.Count > 0)
        {
            throw new InvalidOperationException(
                $"Rank {_world.Rank}: the ranks were started with different Rannc options (RANNC_* variables or RanncOptions), so they would plan or " +
                "step differently:\n  " + string.Join("\n  ", differences));
        }
    }

    private Deployed Deploy(object?[] inputs)
    {
        var clock = Stopwatch.StartNew();
        CheckSharedSettings();
        // Every rank starts from rank 0's parameters and buffers (as PyTorch's DDP does), whatever each was seeded with.
        // A deferred model shares its buffers now and its parameters once the plan says who holds which.
        if (_deferred) DeferredConstruction.ShareBuffers(_model, _world);
        else BroadcastInitialState();
        // Ranks other than 0 of a deferred model hold meta parameters: they cannot run the graph, so rank 0 analyses it.
        bool follower = _deferred && _world.Rank != 0;
        // Profiling (and resolving branches on shapes while building) runs the model: keep buffers (batch-norm
        // statistics) and the random state as they were.
        using var preserved = new PreservedState(_model);
        CapturedGraph? graph = null;
        InputSlicer? slicer = null;
        IReadOnlyList<ValueMeasurement>? small = null, large = null;
        PlanningGraph? planningGraph = null;
        IReadOnlyDictionary<int, BatchDerivedNumber?>? batchDerived = null;
        LossCombination? lossCombination = null;
        int batch = 0;
        int measureSamples = 0;
        object?[] SampleInputs(int n) => slicer!.Slice(inputs, 0, Math.Min(n, batch));
        if (!follower)
        {
            graph = CapturedGraph.Build(_model, inputs);
            if (graph.Inputs.Count != inputs.Length)
                throw new ArgumentException($"The model's forward() takes {graph.Inputs.Count} argument(s) but {inputs.Length} were given.");
            slicer = new InputSlicer(graph, _options.InputBatching);
            batch = slicer.BatchSize(inputs);
            measureSamples = Math.Max(1, batch / 2);
            small = graph.Measure(SampleInputs(measureSamples));
            large = batch >= 2 * measureSamples ? graph.Measure(SampleInputs(2 * measureSamples)) : small;
            planningGraph = graph.ToPlanningGraph(small, large, measureSamples);
            batchDerived = batch >= 2 * measureSamples
                ? BatchDerivedNumber.Find(graph, SampleInputs, measureSamples)
                : new Dictionary<int, BatchDerivedNumber?>();
            ValueMeasurement result = small[graph.Outputs[0]];
            if (result.DType is null) throw new NotSupportedException("forward() must return a tensor.");
            lossCombination = result.Shape!.Length == 0
                ? AnalyseLoss(graph, SampleInputs(measureSamples), planningGraph)
                : LossCombination.PerSample;
        }

        // Ranks may have different budgets: every stage must fit the smallest.
        long budget = _world.AllGather(_options.DeviceMemoryBytes ?? DefaultMemoryBudget()).Min();
        ClusterDiscovery hosts = ClusterDiscovery.Discover(_world, _options, CacheDirectory(), Log);
        LogOnce(hosts.Description);
        Cluster cluster = hosts.ClusterFor(budget);
        // A follower of a deferred model learns the batch only with its graph; planning is rank 0's.
        PlanningOptions? planning = follower ? null : PlanningSettings.For(_options, batch, _world.Size, scalarOutput: small![graph!.Outputs[0]].Shape!.Length == 0);
        string? key = planningGraph is null ? null : DeploymentStore.Key(planningGraph, cluster, planning!, "cpu");

        // Rank 0 decides whether a stored plan is used, so all ranks take the same path.
        string? storedJson = _world.Rank == 0 ? LoadStoredPlan(key!, planningGraph!, cluster, planning!) : null;
        storedJson = _world.AllGather(storedJson)[0];
        PartitionPlan plan;
        CostTable? costs = null;
        bool loaded = storedJson is not null;
        if (storedJson is not null)
        {
            plan = PlanJson.Deserialize(storedJson);
            LogOnce($"Rannc: loaded the plan from {(_options.LoadDeploymentPath ?? "the plan cache")} (no profiling).");
        }
        else
        {
            PlanOutcome? outcome = null;
            if (!_deferred)
            {
                if (PlanFailure.TooFewNodes(graph!, planning!.ForcedReplicasPerStage) is { } tooFew) throw new InvalidOperationException(tooFew);
                costs = ProfileNodes(graph!, SampleInputs, batch);
            }
            else
            {
                // Only rank 0 has the whole model's parameters, so it profiles every node itself.
                string? tooFew = _world.Rank == 0 ? PlanFailure.TooFewNodes(graph!, planning!.ForcedReplicasPerStage) : null;
                if (tooFew is not null) outcome = new PlanOutcome(null, tooFew);
                costs = ProfileOnRankZero(graph, SampleInputs, batch, profile: tooFew is null);
            }
            // Rank 0 plans and every rank takes its plan (or its reason for having none), so ranks cannot disagree.
            if (_world.Rank == 0 && outcome is null)
            {
                try
                {
                    outcome = new PlanOutcome(PlanJson.Serialize(Planner.Plan(planningGraph!, costs!, cluster, planning!)), null);
                }
                catch (NoFeasiblePlanException e)
                {
                    outcome = new PlanOutcome(null,
                        PlanFailure.Explain(e, graph!, planning!.ForcedReplicasPerStage, _world.Size, FormatBytes(budget), _options.MemoryMargin));
                }
            }
            outcome = _world.AllGather(outcome)[0]!;
            if (outcome.Error is { } error) throw new InvalidOperationException(error);
            plan = PlanJson.Deserialize(outcome.Plan!);
            if (_world.Rank == 0) SavePlan(key!, plan);
        }
        if (_options.SaveDeploymentPath is { } savePath && _world.Rank == 0)
        {
            try
            {
                DeploymentStore.Write(savePath, key!, plan);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or NotSupportedException)
            {
                Log($"Rannc: warning: could not write the deployment file {savePath} (RANNC_SAVE_DEPLOYMENT) ({e.Message}); training continues.");
            }
        }

        if (_deferred)
        {
            // Rank 0 tells the others what their graph needs, then sends each its stage's parameters; they build their graph
            // from their now partly materialised model with rank 0's choices of branches on shapes, and check it is the same.
            DeferredSetup? fromRankZero = _world.Rank == 0
                ? DeferredConstruction.SetupOf(graph!, small!, large!, measureSamples, batchDerived!, lossCombination!,
                    new ParameterPlacement(graph!, plan), plan.Stages.Count)
                : null;
            DeferredSetup setup = _world.AllGather(fromRankZero)[0]!;
            DeferredConstruction.DistributeParameters(_model, _world, plan, setup, _residency);
            if (follower)
            {
                graph = CapturedGraph.Build(_model, inputs, setup.GuardChoices, setup.CanonicalNames);
                if (DeferredConstruction.Signature(graph) is var signature && signature != setup.GraphSignature)
                {
                    throw new InvalidOperationException(
                        $"Rank {_world.Rank} built a different graph from its model ({signature}) than rank 0 ({setup.GraphSignature}): the model " +
                        "factory must build the same model on every rank.");
                }
                slicer = new InputSlicer(graph, _options.InputBatching);
                batch = slicer.BatchSize(inputs);
                measureSamples = setup.MeasureSamples;
                small = setup.Small;
                large = setup.Large;
                planningGraph = graph.ToPlanningGraph(small, large, measureSamples);
                batchDerived = setup.BatchDerived;
                lossCombination = LossCombination.Of(setup.LossRule, setup.LossNodeId, graph);
            }
        }
        ValueMeasurement output = small![graph!.Outputs[0]];
        ScalarType outputDType = output.DType!.Value;

        if (_tracing is not null)
        {
            // The trace sets the simulator's prediction beside the measurement; a loaded plan has no profile to predict from.
            if (costs is null) LogOnce("Rannc: profiling the nodes for the trace's predicted timeline (the plan itself was loaded).");
            // A deferred model's other ranks have only their stage's parameters: rank 0 profiles alone (before they were freed).
            costs ??= _deferred ? ProfileOnRankZero(graph, SampleInputs, batch, profile: true) : ProfileNodes(graph, SampleInputs, batch);
            if (costs is not null) _tracing.Prediction = new PredictionInputs(planningGraph!, costs, cluster, planning!);
        }
        var layout = new StageLayout(graph, planningGraph!, plan, batchDerived!, small, large!, measureSamples);
        ScalarType[] extraOutputDTypes = ExtraOutputTypes(graph, layout, small);
        CheckBoundaries(graph, layout, small);
        PipelineSchedule schedule = ScheduleBuilder.Build(plan.Schedule, PipelineTopology.FromPlan(plan));
        (int Stage, int Replica)? role = plan.RoleOf(_world.Rank);
        var placement = new ParameterPlacement(graph, plan);
        if (placement.SharedBuffers.Count > 0)
        {
            throw new NotSupportedException(
                $"The plan puts readers of buffer(s) {string.Join(", ", placement.SharedBuffers)} in more than one stage; their copies " +
                "would diverge. Keep the nodes that read a buffer in one stage (e.g. RANNC_PLAN with fewer stages).");
        }
        ICommunicator replicas = _world.Split(role?.Stage ?? plan.Stages.Count, _world.Rank);
        var owned = OwnedParameters(graph, placement, role?.Stage);
        var shared = SharedGroupCommunicators(placement, role?.Stage);
        var executor = new PipelineExecutor(graph, layout, plan, schedule, _world, replicas, owned, shared, lossCombination!, slicer!);
        // Only the parameters of this rank's stage stay in memory; the others are owned by other ranks.
        var usedElsewhere = graph.Nodes.SelectMany(n => n.Parameters).ToHashSet();
        usedElsewhere.ExceptWith(owned.Select(o => o.Name));
        var released = _model.named_parameters().Where(p => usedElsewhere.Contains(p.name)).Select(p => (p.name, (Tensor)p.parameter)).ToList();
        _residency.Release(released);
        // The user's optimizer keeps no state for them either (Adam allocated its moments when it was constructed);
        // one made by a factory never had them and now gets this rank's own.
        if (_optimizerGetsOwnedParameters)
        {
            // Every name of an owned parameter, in the model's order: plain TorchSharp's parameters() lists a parameter
            // tied by assignment (head.weight = wte.weight) once per name, as distinct wrappers, and its optimizer steps each.
            var ownedNames = owned.Select(o => o.Name).ToHashSet();
            GiveOptimizerOwnedParameters(_model.named_parameters().Where(p => ownedNames.Contains(graph.CanonicalName(p.name))).Select(p => (Tensor)p.parameter));
        }
        else _optimizerResidency.Release(Optimizer, released.Select(p => p.Item2));
        if (_world.Rank == 0)
        {
            SimulationResult? simulated = costs is null ? null : PipelineSimulator.Simulate(plan, planningGraph!, costs, cluster, planning!);
            Log(Summary(plan, graph, planningGraph!, loaded, clock.Elapsed, simulated) + Environment.NewLine + DescribeExtras(lossCombination!, placement));
        }
        var buffers = role is { } mine
            ? _model.named_buffers().Where(b => b.buffer.is_floating_point() && graph.CanonicalName(b.name) == b.name && placement.IsHeldBy(b.name, mine.Stage)
                && !placement.ReadOnlyBuffers.Contains(b.name))
                .Select(b => b.buffer).ToList()
            : [];
        return new Deployed(graph, plan, executor, replicas, shared, owned, Owners(placement, plan), output.Shape!.Length == 0, outputDType, loaded,
            lossCombination!, buffers, placement, inputs.Select(InputKind).ToArray(), slicer!, layout, extraOutputDTypes);
    }

    /// <summary>
    /// The dtypes of the outputs after the first, checked: with several outputs the first is the scalar loss, and every
    /// other is a tensor that holds the batch (it is returned joined from the slices, so it must grow with them).
    /// </summary>
    private static ScalarType[] ExtraOutputTypes(CapturedGraph graph, StageLayout layout, IReadOnlyList<ValueMeasurement> measured)
    {
        if (graph.Outputs.Count == 1) return [];
        if (measured[graph.Outputs[0]].Shape is not { Length: 0 })
        {
            throw new NotSupportedException(
                $"forward() returns {graph.Outputs.Count} values; with several, Rannc needs the first to be the scalar loss (the others are returned for metrics).");
        }
        var types = new ScalarType[graph.Outputs.Count - 1];
        for (int k = 1; k < graph.Outputs.Count; k++)
        {
            int v = graph.Outputs[k];
            if (measured[v].DType is not ScalarType dtype || !layout.BatchDependent[v])
            {
                throw new NotSupportedException(
                    $"Output {k} of forward() ('{graph.Values[v].Name}') is {(measured[v].DType is null ? "not a tensor" : "a tensor that does not hold the batch")}; " +
                    "outputs after the loss are returned joined from the batch slices, so each must be a tensor with the batch in it (e.g. logits).");
            }
            types[k - 1] = dtype;
        }
        return types;
    }

    /// <summary>Every node's forward and backward cost on this machine, the profiling shared out among the ranks.</summary>
    private CostTable ProfileNodes(CapturedGraph graph, Func<int, object?[]> sampleInputs, int batch)
    {
        var profileClock = Stopwatch.StartNew();
        // Two sizes around the slices a replica will run: a few samples, and the batch shared out among the ranks.
        int largeSamples = Math.Max(1, batch / Math.Max(1, _world.Size));
        int smallSamples = Math.Max(1, largeSamples / 4);
        CostTable costs = NodeProfiler.Profile(graph, n => sampleInputs(n), smallSamples, largeSamples, _world, _options.ProfileRepeats,
            _world.Rank == 0 ? Log : null);
        LogOnce($"Rannc: profiled {graph.Nodes.Count} nodes on {_world.Size} rank(s) in {profileClock.Elapsed.TotalSeconds:0.0} s.");
        return costs;
    }

    /// <summary>
    /// Every node's cost, profiled by rank 0 alone (deferred construction: the other ranks hold meta parameters). Every rank
    /// calls it (the split is collective); only rank 0 gets costs.
    /// </summary>
    private CostTable? ProfileOnRankZero(CapturedGraph? graph, Func<int, object?[]> sampleInputs, int batch, bool profile)
    {
        using ICommunicator alone = _world.Split(_world.Rank == 0 ? 0 : 1, _world.Rank);
        if (_world.Rank != 0 || !profile) return null;
        var profileClock = Stopwatch.StartNew();
        int largeSamples = Math.Max(1, batch / Math.Max(1, _world.Size));
        int smallSamples = Math.Max(1, largeSamples / 4);
        CostTable costs = NodeProfiler.Profile(graph!, n => sampleInputs(n), smallSamples, largeSamples, alone, _options.ProfileRepeats, Log);
        Log($"Rannc: rank 0 profiled {graph!.Nodes.Count} nodes in {profileClock.Elapsed.TotalSeconds:0.0} s (deferred construction: only it holds the whole model).");
        return costs;
    }

    /// <summary>How slice losses combine, from one run of the graph on a sample of the batch.</summary>
    private static LossCombination AnalyseLoss(CapturedGraph graph, object?[] sampleInputs, PlanningGraph planningGraph)
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        object?[] values = graph.ExecuteAll(sampleInputs);
        return LossCombination.Analyse(graph, values, planningGraph.Values.Select(v => v.BytesPerSample > 0).ToList());
    }

    /// <summary>
    /// Keeps the replicas of a stage equal in their floating-point buffers (batch norm's running statistics), which each
    /// replica updates from its own slices: they are averaged among the replicas after every training step, so
    /// <see cref="StateDict"/> does not depend on which replica it reads. Counters (<c>num_batches_tracked</c>) are equal
    /// already: every replica runs the same number of slices.
    /// </summary>
    private void AverageReplicaBuffers()
    {
        if (_deployed is not { Replicas: { Size: > 1 } replicas, ReplicaBuffers.Count: > 0 } deployed) return;
        using var noGrad = torch.no_grad();
        replicas.AllReduce(deployed.ReplicaBuffers, ReduceOp.Sum);
        foreach (Tensor buffer in deployed.ReplicaBuffers) buffer.div_(replicas.Size);
    }

    /// <summary>Refuses a plan whose cut carries a value that cannot travel, before anything runs.</summary>
    private static void CheckBoundaries(CapturedGraph graph, StageLayout layout, IReadOnlyList<ValueMeasurement> measured)
    {
        for (int s = 0; s < layout.Boundaries.Length; s++)
        {
            foreach (int v in layout.Boundaries[s])
            {
                CapturedValue value = graph.Values[v];
                string? refusal = ValueTransfer.CanCross(value) ? ValueTransfer.WhyNotSendable(measured[v]) : "values of that type cannot travel between stages";
                if (refusal is null) continue;
                string producer = value.Producer >= 0 ? $"{graph.Nodes[value.Producer].Name} ({graph.Nodes[value.Producer].Location})" : "an input";
                throw new NotSupportedException(
                    $"The plan cuts between stage {s} and {s + 1} where value '{value.Name}' ({value.TypeName}, made by {producer}) would cross; " +
                    $"{refusal}. Let the planner choose the cut, or force a plan whose cuts avoid it.");
            }
        }
    }

    /// <summary>Plan-summary lines on how losses combine and which parameters several stages hold.</summary>
    private static string DescribeExtras(LossCombination loss, ParameterPlacement placement)
    {
        string rule = loss.Rule switch
        {
            LossRule.CountedMean => $"  loss: {loss.LossName}, a mean over counted items, combined exactly over slices (Σ sums / Σ counts)",
            LossRule.Sum => $"  loss: {loss.LossName}, a sum, slice losses add",
            _ => "  loss: assumed to be a mean over samples (slices weigh their sample counts)",
        };
        var shared = placement.SharedGroups.Select(g => $"  shared by stages {string.Join(", ", g.Stages)} (gradients summed among them): {string.Join(", ", g.Names)}");
        return string.Join(Environment.NewLine, new[] { rule }.Concat(shared));
    }

    /// <summary>Copies rank 0's parameters and buffers to every rank (each tensor once, tied weights included).</summary>
    private void BroadcastInitialState()
    {
        if (_world.Size == 1) return;
        var seen = new HashSet<TensorIdentity>();
        using var noGrad = torch.no_grad();
        foreach ((_, Tensor tensor) in _model.state_dict())
        {
            if (seen.Add(TensorIdentity.Of(tensor))) _world.Broadcast(tensor, 0);
        }
    }

    /// <summary>
    /// One communicator per group of shared parameters whose holders include this rank's stage: every rank of the
    /// holding stages sums its gradients of them there. Every rank takes part in each split, in the same order.
    /// </summary>
    private List<(SharedParameterGroup Group, ICommunicator Communicator)> SharedGroupCommunicators(ParameterPlacement placement, int? stage)
    {
        var groups = new List<(SharedParameterGroup, ICommunicator)>();
        foreach (SharedParameterGroup group in placement.SharedGroups)
        {
            bool member = stage is int s && group.Stages.Contains(s);
            ICommunicator communicator = _world.Split(member ? 0 : 1, _world.Rank);
            if (member) groups.Add((group, communicator));
            else communicator.Dispose();
        }
        return groups;
    }

    /// <summary>The graph's name for a name of <c>named_parameters()</c> / <c>state_dict()</c> (tied weights have one).</summary>
    private string GraphName(string name) => _deployed?.Graph.CanonicalName(name) ?? name;

    /// <summary>
    /// Gradient copies per trainable parameter byte that the executor holds beyond the parameter and its <c>.grad</c>
    /// (the partitioner's 2 + optimizer factor): the sum over micro-batches until <c>backward()</c> adds it to
    /// <c>.grad</c>, and during each backward pass the micro-batch's gradients from <c>autograd.grad</c>. Measured,
    /// not assumed: bench/RESULTS.md, "Memory".
    /// </summary>
    internal const double ExecutorGradientCopies = 2;

    private string? LoadStoredPlan(string key, PlanningGraph graph, Cluster cluster, PlanningOptions planning)
    {
        PartitionPlan? plan = null;
        if (_options.LoadDeploymentPath is { } path)
        {
            if (!File.Exists(path)) throw new FileNotFoundException($"RANNC_LOAD_DEPLOYMENT names {path}, which does not exist.", path);
            plan = DeploymentStore.Read(path, expectedKey: null, graph, cluster, planning, Log)
                ?? throw new InvalidOperationException($"The plan in {path} does not fit this model, world size or options (see the warning above).");
        }
        else if (CacheDirectory() is { } directory)
        {
            plan = new DeploymentStore(directory, Log).TryLoad(key, graph, cluster, planning);
        }
        return plan is null ? null : PlanJson.Serialize(plan);
    }

    private void SavePlan(string key, PartitionPlan plan)
    {
        if (CacheDirectory() is not { } directory) return;
        try
        {
            new DeploymentStore(directory, Log).Save(key, plan);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or NotSupportedException)
        {
            // A read-only home or a full disk must not end a run: the cache only saves the next run's profiling.
            Log($"Rannc: warning: could not write the plan cache in {directory} ({e.Message}); training continues without caching the plan.");
        }
    }

    private string? CacheDirectory() => _options.PlanCacheDirectory switch
    {
        "" => null,
        { } directory => directory,
        null => Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "rannc", "plans"),
    };

    /// <summary>On CPU, physical memory divided among the ranks on this machine.</summary>
    private long DefaultMemoryBudget()
    {
        long physical = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        int ranksHere = _world is InProcessCommunicator ? _world.Size : MpiEnvironment.LocalRanks;
        return physical / Math.Max(1, ranksHere);
    }

    /// <summary>The parameters this rank's stage holds, each once under its graph name (a tied weight's other names are skipped).</summary>
    private List<(string Name, Tensor Parameter)> OwnedParameters(CapturedGraph graph, ParameterPlacement placement, int? stage)
    {
        if (stage is not int s) return [];
        return _model.named_parameters()
            .Where(p => graph.CanonicalName(p.name) == p.name && placement.IsHeldBy(p.name, s))
            .Select(p => (p.name, (Tensor)p.parameter))
            .ToList();
    }

    private string Summary(PartitionPlan plan, CapturedGraph graph, PlanningGraph planningGraph, bool loaded, TimeSpan elapsed, SimulationResult? simulated) =>
        PlanSummaryTable.Format(
            string.Create(CultureInfo.InvariantCulture,
                $"Rannc plan ({(loaded ? "loaded" : "new")}, ready in {elapsed.TotalSeconds:0.0} s): {plan.Stages.Count} stage(s) on {_world.Size} rank(s)"),
            plan, graph, planningGraph, simulated);

    private static string FormatBytes(long bytes) => PlanSummaryTable.FormatBytes(bytes);

    private void Log(string line) => (_options.Log ?? (l => Console.Error.WriteLine(l)))(line);

    /// <summary>Logs on rank 0 only: every rank knows the same thing.</summary>
    private void LogOnce(string line)
    {
        if (_world.Rank == 0) Log(line);
    }

    /// <summary>
    /// The rank whose copy of each parameter and buffer is authoritative: replica 0 of the first stage that holds it
    /// (the copies of a shared parameter are equal).
    /// </summary>
    private static Dictionary<string, int> Owners(ParameterPlacement placement, PartitionPlan plan)
    {
        return placement.Names.ToDictionary(name => name, name => plan.Stages[placement.HoldersOf(name)[0]].ReplicaRanks[0]);
    }

    private sealed record Deployed(
        CapturedGraph Graph, PartitionPlan Plan, PipelineExecutor Executor, ICommunicator? Replicas,
        IReadOnlyList<(SharedParameterGroup Group, ICommunicator Communicator)> SharedGroups,
        IReadOnlyList<(string Name, Tensor Parameter)> OwnedParameters, IReadOnlyDictionary<string, int> Owners,
        bool OutputIsScalar, ScalarType OutputDType, bool Loaded, LossCombination Loss, IReadOnlyList<Tensor> ReplicaBuffers,
        ParameterPlacement Placement, string[] FirstInputs, InputSlicer Slicer, StageLayout Layout, ScalarType[] ExtraOutputDTypes);

    /// <summary>Saves the model's buffers and the random state, and puts them back on dispose.</summary>
    internal sealed class PreservedState : IDisposable
    {
        private readonly List<(Tensor Buffer, Tensor Saved)> _buffers;
        private readonly Tensor _randomState;

        public PreservedState(nn.Module model)
        {
            _buffers = model.named_buffers().Select(b => (b.buffer, b.buffer.detach().clone())).ToList();
            _randomState = torch.random.get_rng_state();
        }

        public void Dispose()
        {
            using (torch.no_grad())
            {
                foreach ((Tensor buffer, Tensor saved) in _buffers)
                {
                    buffer.copy_(saved);
                    saved.Dispose();
                }
            }
            torch.random.set_rng_state(_randomState);
            _randomState.Dispose();
        }
    }
}
