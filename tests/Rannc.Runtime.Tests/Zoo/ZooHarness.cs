using Rannc.Capture;
using Rannc.Communication;
using Rannc.Execution;
using Rannc.Partitioner;
using Rannc.Planning;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Rannc.Tests.Zoo;

/// <summary>A zoo model with its data: forward(input, labels) returns the mean loss.</summary>
/// <param name="Name">For messages.</param>
/// <param name="Create">Builds the model (called under a fixed seed).</param>
/// <param name="Input">The input batch of a step (float64), from (batch, step).</param>
/// <param name="Classes">Number of classes of the labels.</param>
/// <param name="BatchNorm">True when the model normalises over the batch: the reference then runs the plan's slices.</param>
/// <param name="Target">The second argument of a step, from (batch, step); null: class labels.</param>
/// <param name="Arguments">For a model whose forward() takes other arguments: all of them for a step, from (batch, step).</param>
/// <param name="Forward">How plain TorchSharp calls the model with those arguments (null: forward(input, labels)).</param>
public sealed record ZooModel(string Name, Func<nn.Module> Create, Func<int, int, Tensor> Input, int Classes, bool BatchNorm,
    Func<int, int, Tensor>? Target = null, Func<int, int, Tensor[]>? Arguments = null, Func<nn.Module, Tensor[], Tensor>? Forward = null);

/// <summary>
/// How a zoo test places its stages: by the planner under a forced shape, or by cutting before named nodes
/// (a deployment file written for the run), so that a cut is known to fall inside a <c>Sequential</c>.
/// </summary>
/// <param name="Replicas">Replicas per stage.</param>
/// <param name="CutsBefore">Names of the first node of every stage after the first; null lets the planner cut.</param>
/// <param name="InsideSequential">Whether every cut must fall inside a <c>Sequential</c> (checked).</param>
public sealed record ZooPlan(IReadOnlyList<int> Replicas, IReadOnlyList<string>? CutsBefore = null, bool InsideSequential = true)
{
    public override string ToString() =>
        $"[{string.Join(",", Replicas)}]" + (CutsBefore is null ? " planned" : " cut before " + string.Join(", ", CutsBefore));
}

/// <summary>
/// Trains a zoo model 3 steps in float64 with Rannc on in-process ranks and with plain TorchSharp, and checks losses,
/// the last step's gradients and the parameters to 1e-9 relative.
/// </summary>
internal static class ZooHarness
{
    public const int Steps = 3;
    public const int Batch = 8;
    public const int MicroBatches = 2;
    private const double Tolerance = 1e-9;

    /// <summary>Each rank's memory budget, fixed so that a hand-made plan's recorded peaks can be computed here.</summary>
    private const long DeviceMemory = 1L << 30;

    public static nn.Module CreateSeeded(ZooModel model) => SeededModels.Create(() => ZooData.Seeded(model.Create), 4321);

    public static Tensor[] BatchOf(ZooModel model, int step) =>
        model.Arguments?.Invoke(Batch, step) ?? [model.Input(Batch, step), model.Target?.Invoke(Batch, step) ?? ZooData.Labels(Batch, model.Classes, step)];

    /// <summary>Leaf layers (modules without children) that forward() calls: every one must be a node of its own.</summary>
    public static void AssertOneNodePerLeafLayer(nn.Module model, CapturedGraph graph)
    {
        // A [RaNNC] module without children (RMSNorm) is inlined: its operations are nodes under its path.
        var nodePaths = graph.Nodes.Where(n => n.Kind == NodeKind.Module).Select(n => n.ModulePath)
            .Concat(graph.Nodes.Where(n => n.Kind != NodeKind.Module).Select(n => n.ModulePath)
                .Where(path => model.named_modules().Any(m => m.name == path && m.module is ICapturedModule)))
            .ToHashSet();
        var leaves = model.named_modules().Where(m => !m.module.children().Any() && m.name.Length > 0).Select(m => m.name).ToList();
        Assert.NotEmpty(leaves);
        foreach (string leaf in leaves) Assert.Contains(leaf, nodePaths);
        Assert.DoesNotContain(graph.Nodes, n => n.OpaqueReason is not null);
    }

    /// <param name="inputBatching">Passed as <see cref="RanncOptions.InputBatching"/>.</param>
    /// <param name="deferred">Build the model with deferred construction (<c>new RanncModule(createModel, createOptimizer, ...)</c>).</param>
    public static void AssertMatchesReference(ZooModel zoo, ZooPlan zooPlan, string schedule, string optimizerName,
        IReadOnlyDictionary<string, InputBatch>? inputBatching = null, bool deferred = false)
    {
        IReadOnlyList<int> replicas = zooPlan.Replicas;
        Tensor[][] batches = Enumerable.Range(0, Steps).Select(step => BatchOf(zoo, step)).ToArray();
        Tensor[] untouched = batches.Select(b => b[0].clone()).ToArray();
        int sliceReplicas = replicas[0];
        SampleRange[] slices = zoo.BatchNorm
            ? Enumerable.Range(0, MicroBatches).SelectMany(mb => Enumerable.Range(0, sliceReplicas)
                .Select(r => new MicroBatchLayout(Batch, MicroBatches).ReplicaSlice(mb, sliceReplicas, r))).ToArray()
            : [new SampleRange(0, Batch)];
        if (zoo.BatchNorm) Assert.True(replicas.All(r => r == sliceReplicas), "BN references slice like the first stage: use equal replica counts");
        (double[] referenceLosses, Dictionary<string, Tensor> referenceGradients, Dictionary<string, Tensor> referenceParameters) =
            TrainReference(zoo, batches, slices, optimizerName);

        var log = new System.Collections.Concurrent.ConcurrentQueue<string>();
        string? deployment = zooPlan.CutsBefore is { } cuts ? WriteDeployment(zoo, replicas, cuts, schedule, zooPlan.InsideSequential, inputBatching) : null;
        var options = new RanncOptions
        {
            ForcedReplicas = replicas,
            Schedule = RanncOptions.ParseSchedule(schedule),
            PlanCacheDirectory = "",
            ProfileRepeats = 1,
            MicroBatches = MicroBatches,
            LoadDeploymentPath = deployment,
            DeviceMemoryBytes = DeviceMemory,
            InputBatching = inputBatching,
            Log = log.Enqueue,
        };
        try
        {
            var results = RunWithLog(log, () => InProcessLauncher.Run(replicas.Sum(), comm =>
            {
                using RanncModule rannc = deferred
                    ? new RanncModule(() => CreateSeeded(zoo), parameters => CreateOptimizer(parameters, optimizerName), comm, options)
                    : Whole(CreateSeeded(zoo), optimizerName, comm, options);
                nn.Module model = rannc.Model;
                optim.Optimizer optimizer = rannc.Optimizer;
                (double[] losses, Dictionary<string, Tensor> gradients) = TrainingLoop.Run(model, optimizer, step => rannc.forward(batches[step]), Steps);
                PartitionPlan plan = rannc.Plan!;
                CapturedGraph graph = rannc.Graph!;
                Assert.Equal(replicas, plan.Stages.Select(s => s.ReplicaRanks.Count));
                // Hand-made cuts put parameters in every stage, so each trains something of its own. The planner's cut
                // follows profiled timings: on a loaded machine it may rightly give a stage only parameter-free nodes.
                if (zooPlan.CutsBefore is not null)
                {
                    foreach (StagePlan stage in plan.Stages)
                        Assert.True(stage.NodeIds.Any(n => graph.Nodes[n].Parameters.Count > 0), $"stage {stage.Index} of {zoo.Name} holds no parameters");
                }
                var owned = plan.RoleOf(comm.Rank) is { } role
                    ? plan.Stages[role.Stage].NodeIds.SelectMany(n => graph.Nodes[n].Parameters).ToHashSet()
                    : [];
                var parameters = model.named_parameters().Where(p => owned.Contains(p.name)).ToDictionary(p => p.name, p => p.parameter.detach().clone());
                Assert.Equal(owned.Order(), gradients.Keys.Order());
                return (losses, gradients, parameters);
            }, new InProcessOptions(Timeout: TimeSpan.FromMinutes(3))));

            var seen = new HashSet<string>();
            // Some gradients are zero in exact arithmetic (the bias before a batch norm): their rounding noise is judged
            // against the model's largest gradient, and the parameters Adam moves by that noise (its normalisation
            // turns 1e-17 into steps of about lr x 1e-9) against the model's largest parameter.
            double gradientScale = referenceGradients.Values.Max(g => g.abs().max().item<double>());
            double parameterScale = referenceParameters.Values.Max(p => p.abs().max().item<double>());
            foreach ((double[] losses, Dictionary<string, Tensor> gradients, Dictionary<string, Tensor> parameters) in results)
            {
                for (int s = 0; s < Steps; s++)
                {
                    double difference = Math.Abs(referenceLosses[s] - losses[s]);
                    Assert.True(difference <= Tolerance * Math.Abs(referenceLosses[s]), $"{zoo.Name}: loss of step {s}: expected {referenceLosses[s]:R}, got {losses[s]:R}");
                }
                foreach ((string name, Tensor value) in gradients) AssertClose(referenceGradients[name], value, $"{zoo.Name}: gradient of {name}", gradientScale);
                foreach ((string name, Tensor value) in parameters)
                {
                    seen.Add(name);
                    AssertClose(referenceParameters[name], value, $"{zoo.Name}: parameter {name}", parameterScale);
                }
            }
            Assert.Equal(referenceParameters.Keys.Order(), seen.Order());
            // In-place operations on a graph input work on a copy: the caller's batch is as it was.
            for (int s = 0; s < Steps; s++) Assert.True(batches[s][0].eq(untouched[s]).all().item<bool>(), $"{zoo.Name}: the input of step {s} was changed");
        }
        finally
        {
            if (deployment is not null) File.Delete(deployment);
        }
    }

    /// <summary>Runs <paramref name="run"/>; a failure carries what Rannc logged (a rejected plan file says why there).</summary>
    private static T RunWithLog<T>(System.Collections.Concurrent.ConcurrentQueue<string> log, Func<T> run)
    {
        try
        {
            return run();
        }
        catch (Exception e) when (e is not Xunit.Sdk.XunitException)
        {
            throw new InvalidOperationException($"{e.Message}\nRannc's log:\n{string.Join("\n", log)}", e);
        }
    }

    /// <summary>
    /// A plan with stages starting at the named nodes, written as a deployment file for <see cref="RanncOptions.LoadDeploymentPath"/>.
    /// Each cut must fall inside a <c>Sequential</c> (the nodes on both sides belong to one).
    /// </summary>
    internal static string WriteDeployment(ZooModel zoo, IReadOnlyList<int> replicas, IReadOnlyList<string> cuts, string schedule, bool insideSequential,
        IReadOnlyDictionary<string, InputBatch>? inputBatching)
    {
        PipelineScheduleKind kind = RanncOptions.ParseSchedule(schedule)!.Value;
        nn.Module model = CreateSeeded(zoo);
        // Built for a batch, as RanncModule builds it: branches on shapes (if (seqLen > 1)) resolve from it.
        CapturedGraph graph = CapturedGraph.Build(model, BatchOf(zoo, 0).Cast<object?>().ToArray());
        var sequentials = model.named_modules().Where(m => m.module is Sequential).Select(m => m.name).ToList();
        var starts = new List<int> { 0 };
        foreach (string cut in cuts)
        {
            int start = graph.Nodes.Single(n => n.Name == cut).Id;
            string before = graph.Nodes[start - 1].ModulePath, after = graph.Nodes[start].ModulePath;
            Assert.True(!insideSequential || sequentials.Any(s => before.StartsWith(s + ".", StringComparison.Ordinal) && after.StartsWith(s + ".", StringComparison.Ordinal)),
                $"the cut before {cut} (after {graph.Nodes[start - 1].Name}) is not inside a Sequential of {zoo.Name}");
            starts.Add(start);
        }
        var layout = new MicroBatchLayout(Batch, MicroBatches);
        var stages = new List<StagePlan>();
        int rank = 0;
        for (int s = 0; s < starts.Count; s++)
        {
            int end = s + 1 < starts.Count ? starts[s + 1] : graph.Nodes.Count;
            stages.Add(new StagePlan(s, Enumerable.Range(starts[s], end - starts[s]).ToList(), Enumerable.Range(rank, replicas[s]).ToList(),
                Recompute: false, layout.LargestSlice(replicas[s]), PeakMemoryBytes: 0));
            rank += replicas[s];
        }
        var plan = new PartitionPlan("zoo", replicas.Sum(), Batch, Enumerable.Range(0, MicroBatches).Select(layout.MicroBatchSize).ToList(),
            kind, stages, 0, 0, false);
        // A loaded plan must record the peaks the memory model gives (as RanncModule plans: half and whole batch measured).
        object?[] sample = BatchOf(zoo, 0);
        var slicer = new InputSlicer(graph, inputBatching);
        object?[] Inputs(int n) => slicer.Slice(sample, 0, n);
        Graph planning = graph.ToPlanningGraph(graph.Measure(Inputs(Batch / 2)), graph.Measure(Inputs(Batch)), Batch / 2);
        var cluster = new Cluster(1, replicas.Sum(), DeviceMemory, 4e9, 5e-6, 4e9, 5e-6);
        var options = new PlanningOptions(Batch)
        {
            Schedules = [kind], MinMicroBatches = MicroBatches, MaxMicroBatches = MicroBatches,
            ForcedReplicasPerStage = replicas, MinStages = replicas.Count, MaxStages = replicas.Count,
            OptimizerStateFactor = new RanncOptions().OptimizerStateFactor + RanncModule.ExecutorGradientCopies,
        };
        var costs = new CostTable(planning.Nodes.Select(_ => new NodeCost(0, 0, 0, 0)).ToList());
        IReadOnlyList<long> peaks = PlanObjective.Evaluate(planning, costs, cluster, options, plan.ToShape()).PeakBytesPerStage;
        plan = plan with { Stages = stages.Select(st => st with { PeakMemoryBytes = peaks[st.Index] }).ToList() };
        string path = Path.Combine(Path.GetTempPath(), $"rannc-zoo-{Guid.NewGuid():N}.json");
        DeploymentStore.Write(path, "zoo", plan);
        return path;
    }

    private static optim.Optimizer CreateOptimizer(nn.Module model, string name) => CreateOptimizer(model.parameters(), name);

    private static optim.Optimizer CreateOptimizer(IEnumerable<Parameter> parameters, string name) => name switch
    {
        "sgd" => torch.optim.SGD(parameters, learningRate: 0.1),
        "adam" => torch.optim.Adam(parameters, lr: 0.01),
        _ => throw new ArgumentException(name),
    };

    private static RanncModule Whole(nn.Module model, string optimizerName, ICommunicator comm, RanncOptions options) =>
        new(model, CreateOptimizer(model, optimizerName), comm, options);

    internal static (double[] Losses, Dictionary<string, Tensor> LastGradients, Dictionary<string, Tensor> Parameters) TrainReference(
        ZooModel zoo, Tensor[][] batches, SampleRange[] slices, string optimizerName)
    {
        nn.Module model = CreateSeeded(zoo);
        Func<nn.Module, Tensor[], Tensor> forward = zoo.Forward ?? ((m, b) => ((nn.Module<Tensor, Tensor, Tensor>)m).forward(b[0], b[1]));
        optim.Optimizer optimizer = CreateOptimizer(model, optimizerName);
        var losses = new double[Steps];
        var gradients = new Dictionary<string, Tensor>();
        for (int step = 0; step < Steps; step++)
        {
            optimizer.zero_grad();
            foreach (SampleRange slice in slices)
            {
                // The model may write into its input in place: give it a copy, as Rannc keeps the caller's batch unchanged.
                Tensor[] inputs = slice.Count == Batch
                    ? batches[step].Select(t => t.clone()).ToArray()
                    : batches[step].Select(t => t.narrow(0, slice.Start, slice.Count).clone()).ToArray();
                Tensor loss = forward(model, inputs) * ((double)slice.Count / Batch);
                loss.backward();
                losses[step] += loss.item<double>();
            }
            if (step == Steps - 1) gradients = TrainingLoop.Gradients(model);
            optimizer.step();
        }
        return (losses, gradients, model.named_parameters().ToDictionary(p => p.name, p => p.parameter.detach().clone()));
    }

    internal static void AssertClose(Tensor expected, Tensor actual, string what, double floor)
    {
        double scale = Math.Max(floor, expected.abs().max().item<double>());
        double difference = (actual - expected).abs().max().item<double>();
        Assert.True(difference <= Tolerance * scale, $"{what} differs by {difference:e3} (scale {scale:e3})");
    }
}
