using Rannc.Communication;
using Rannc.Execution;
using Rannc.Execution.Memory;
using Rannc.Samples;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Rannc.Tests.Memory;

/// <summary>
/// The user's optimizer keeps no state for parameters other ranks own (issue #13): Adam's moments and SGD's momentum
/// buffers of released parameters hold no storage, training still equals plain TorchSharp, and gathering the state
/// still gives every rank the whole model's state. An optimizer made by RanncModule's factory overload holds this
/// rank's parameters only, so it never allocates state for the others.
/// </summary>
public sealed class OptimizerStateTests
{
    private const int Batch = 8;
    private static readonly SampleTask Task = SampleTasks.Mlp(inputSize: 6, hiddenSize: 10, hiddenLayers: 4, classes: 3);
    private static readonly InProcessOptions Launch = new(Timeout: TimeSpan.FromMinutes(3));

    public enum Kind
    {
        Adam,
        SgdWithMomentum,
    }

    [Theory]
    [InlineData(Kind.Adam, 2, 1)]
    [InlineData(Kind.SgdWithMomentum, 2, 1)]
    [InlineData(Kind.Adam, 4, 1)]
    [InlineData(Kind.Adam, 2, 2)]
    public void StateOfOtherStagesParameters_HoldsNoMemory_AndTrainingEqualsPlainTorchSharp(Kind kind, int stages, int replicas)
    {
        const int steps = 3;
        var reference = Reference(kind, steps);
        long wholeModelElements = reference.Model.parameters().Sum(p => p.numel());
        var results = InProcessLauncher.Run(stages * replicas, comm =>
        {
            nn.Module model = CreateSeeded();
            optim.Optimizer optimizer = CreateOptimizer(model, kind);
            using var rannc = new RanncModule(model, optimizer, comm, Options((stages, replicas)));
            double[] losses = Train(rannc, steps);
            (int stage, int replica) = rannc.Plan!.RoleOf(comm.Rank)!.Value;
            var own = rannc.Plan.Stages[stage].NodeIds
                .SelectMany(n => rannc.Graph!.Nodes[n].Parameters).ToHashSet();
            var nameOf = model.named_parameters().ToDictionary(p => p.parameter.Handle, p => p.name);
            List<OptimizerState> states = ((OptimizerHelper)optimizer).state_dict().State;
            var stateElements = optimizer.parameters()
                .Select((p, i) => (Name: nameOf[p.Handle], Own: own.Contains(nameOf[p.Handle]), Parameter: p.numel(), State: StateElements(states[i])))
                .ToList();
            return (losses, State: rannc.StateDict(), stateElements, replica);
        }, Launch);
        int perParameter = kind == Kind.Adam ? 2 : 1;
        Assert.Contains(results, r => r.stateElements.Any(p => !p.Own));
        foreach ((double[] losses, Dictionary<string, Tensor> state, var stateElements, _) in results)
        {
            for (int s = 0; s < steps; s++) Close.AssertClose(reference.Losses[s], losses[s], $"loss of step {s}");
            Close.AssertSameTensors(reference.Model.state_dict(), state);
            foreach (var p in stateElements)
            {
                long expected = p.Own ? perParameter * p.Parameter : 0;
                Assert.True(p.State == expected, $"{p.Name} (own: {p.Own}): {p.State} state elements, expected {expected}");
            }
        }
        // The replicas of one stage hold the same state; over one replica of every stage it is the whole model's state once.
        long firstReplicas = results.Where(r => r.replica == 0).Sum(r => r.stateElements.Sum(p => p.State));
        Assert.Equal(perParameter * wholeModelElements, firstReplicas);
    }

    [Theory]
    [InlineData(Kind.Adam, 2, 1)]
    [InlineData(Kind.SgdWithMomentum, 2, 1)]
    [InlineData(Kind.Adam, 4, 1)]
    [InlineData(Kind.SgdWithMomentum, 2, 2)]
    public void OptimizerFromAFactory_HoldsOnlyThisRanksParameters_AndTrainingEqualsPlainTorchSharp(Kind kind, int stages, int replicas)
    {
        const int steps = 3;
        var reference = Reference(kind, steps);
        var results = InProcessLauncher.Run(stages * replicas, comm =>
        {
            nn.Module model = CreateSeeded();
            using var rannc = new RanncModule(model, parameters => CreateOptimizer(parameters, kind), comm, Options((stages, replicas)));
            bool emptyBefore = !rannc.Optimizer.parameters().Any();
            double[] losses = Train(rannc, steps);
            int stage = rannc.Plan!.RoleOf(comm.Rank)!.Value.Stage;
            var own = rannc.Plan.Stages[stage].NodeIds.SelectMany(n => rannc.Graph!.Nodes[n].Parameters).ToHashSet();
            var nameOf = model.named_parameters().ToDictionary(p => p.parameter.Handle, p => p.name);
            List<OptimizerState> states = ((OptimizerHelper)rannc.Optimizer).state_dict().State;
            var held = rannc.Optimizer.parameters().Select((p, i) => (Name: nameOf[p.Handle], Parameter: p.numel(), State: StateElements(states[i]))).ToList();
            return (losses, State: rannc.StateDict(), own, held, emptyBefore);
        }, Launch);
        int perParameter = kind == Kind.Adam ? 2 : 1;
        foreach ((double[] losses, Dictionary<string, Tensor> state, HashSet<string> own, var held, bool emptyBefore) in results)
        {
            Assert.True(emptyBefore, "the optimizer held parameters before the first forward()");
            for (int s = 0; s < steps; s++) Close.AssertClose(reference.Losses[s], losses[s], $"loss of step {s}");
            Close.AssertSameTensors(reference.Model.state_dict(), state);
            Assert.Equal(own.Order(), held.Select(p => p.Name).Order());
            foreach (var p in held) Assert.True(p.State == perParameter * p.Parameter, $"{p.Name}: {p.State} state elements, expected {perParameter * p.Parameter}");
        }
    }

    [Fact]
    public void OptimizerFactory_ThatIgnoresItsParameters_IsRefused()
    {
        nn.Module model = CreateSeeded();
        var error = Assert.Throws<ArgumentException>(() => new RanncModule(model, _ => CreateOptimizer(model.parameters(), Kind.Adam), new RanncOptions()));
        Assert.Contains("over the parameters it is given", error.Message);
    }

    [Fact]
    public void OptimizerFactory_LoadingOptimizerStateBeforeTheFirstForward_SaysWhen()
    {
        string folder = Directory.CreateTempSubdirectory("rannc-factory-").FullName;
        try
        {
            var messages = InProcessLauncher.Run(2, comm =>
            {
                nn.Module model = CreateSeeded();
                using var rannc = new RanncModule(model, parameters => CreateOptimizer(parameters, Kind.Adam), comm, Options((2, 1)));
                Train(rannc, 1);
                rannc.SaveCheckpoint(folder);
                nn.Module fresh = CreateSeeded();
                using var restarted = new RanncModule(fresh, parameters => CreateOptimizer(parameters, Kind.Adam), comm, Options((2, 1)));
                return Assert.Throws<InvalidOperationException>(() => restarted.LoadCheckpoint(folder)).Message;
            }, Launch);
            Assert.All(messages, m => Assert.Contains("load the checkpoint after it", m));
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Fact]
    public void GatheredAdamState_OnEveryRank_EqualsPlainTorchSharpsState()
    {
        const int steps = 2;
        var reference = Reference(Kind.Adam, steps);
        var referenceStates = AdamStates(reference.Model, reference.Optimizer);
        var gathered = InProcessLauncher.Run(3, comm =>
        {
            nn.Module model = CreateSeeded();
            optim.Optimizer optimizer = CreateOptimizer(model, Kind.Adam);
            using var rannc = new RanncModule(model, optimizer, comm, Options((3, 1)));
            Train(rannc, steps);
            rannc.GatherOptimizerState();
            return AdamStates(model, optimizer);
        }, Launch);
        foreach (var states in gathered)
        {
            Assert.Equal(referenceStates.Keys.Order(), states.Keys.Order());
            foreach ((string name, Adam.State expected) in referenceStates)
            {
                Adam.State actual = states[name];
                Assert.Equal(expected.step, actual.step);
                Close.AssertSameTensors(new Dictionary<string, Tensor> { [name + ".exp_avg"] = expected.exp_avg, [name + ".exp_avg_sq"] = expected.exp_avg_sq },
                    new Dictionary<string, Tensor> { [name + ".exp_avg"] = actual.exp_avg, [name + ".exp_avg_sq"] = actual.exp_avg_sq });
            }
        }
    }

    private static long StateElements(OptimizerState state) => OptimizerStateResidency.TensorsOf(state).Sum(t => t.numel());

    private static Dictionary<string, Adam.State> AdamStates(nn.Module model, optim.Optimizer optimizer)
    {
        var nameOf = model.named_parameters().ToDictionary(p => p.parameter.Handle, p => p.name);
        List<OptimizerState> states = ((OptimizerHelper)optimizer).state_dict().State;
        return optimizer.parameters().Select((p, i) => (nameOf[p.Handle], (Adam.State)states[i])).ToDictionary(s => s.Item1, s => s.Item2);
    }

    private static RanncOptions Options((int, int) shape) =>
        new() { ForcedShape = shape, PlanCacheDirectory = "", ProfileRepeats = 1, Log = _ => { } };

    private static optim.Optimizer CreateOptimizer(nn.Module model, Kind kind) => CreateOptimizer(model.parameters(), kind);

    private static optim.Optimizer CreateOptimizer(IEnumerable<Parameter> parameters, Kind kind) => kind == Kind.Adam
        ? torch.optim.Adam(parameters, lr: 0.01)
        : torch.optim.SGD(parameters, 0.05, momentum: 0.9);

    private static double[] Train(RanncModule rannc, int steps)
    {
        var losses = new double[steps];
        for (int step = 0; step < steps; step++)
        {
            rannc.Optimizer.zero_grad();
            Tensor loss = rannc.forward(BatchOf(step));
            loss.backward();
            rannc.Optimizer.step();
            losses[step] = loss.item<double>();
        }
        return losses;
    }

    private static (nn.Module Model, optim.Optimizer Optimizer, double[] Losses) Reference(Kind kind, int steps)
    {
        nn.Module model = CreateSeeded();
        optim.Optimizer optimizer = CreateOptimizer(model, kind);
        (double[] losses, _) = TrainingLoop.Run(model, optimizer, step => SampleTask.Forward(model, BatchOf(step)), steps);
        return (model, optimizer, losses);
    }

    private static Tensor[] BatchOf(int step) => Task.CreateBatch(Batch, step).Select(t => t.is_floating_point() ? t.to_type(ScalarType.Float64) : t).ToArray();

    private static nn.Module CreateSeeded() => SeededModels.Create(Task.CreateModel, 99);

}
