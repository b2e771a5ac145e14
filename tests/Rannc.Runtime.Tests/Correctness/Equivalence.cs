using Rannc.Communication;
using Rannc.Execution;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Tests.Correctness;

/// <summary>Which optimizer a run uses: SGD shows gradient scale errors that Adam's normalisation hides.</summary>
public enum OptimizerKind
{
    Sgd,
    Adam,
}

/// <summary>
/// Trains a model with Rannc on in-process ranks and plain TorchSharp on the whole batch, with the same optimizer,
/// seed and data, and compares per-step losses, the last step's gradients and the final parameters (float64, 1e-9).
/// </summary>
internal static class Equivalence
{
    public const double Tolerance = 1e-9;

    /// <summary>What one run produced: per-step losses, the last step's gradients and the final parameters, by name.</summary>
    public sealed record Run(double[] Losses, Dictionary<string, Tensor> Gradients, Dictionary<string, Tensor> Parameters);

    public static optim.Optimizer CreateOptimizer(nn.Module model, OptimizerKind kind) => CreateOptimizer(model.parameters(), kind);

    public static optim.Optimizer CreateOptimizer(IEnumerable<TorchSharp.Modules.Parameter> parameters, OptimizerKind kind) => kind switch
    {
        OptimizerKind.Sgd => torch.optim.SGD(parameters, 0.1),
        _ => torch.optim.Adam(parameters, lr: 0.01),
    };

    /// <summary>Plain TorchSharp on one process: the whole batch per step.</summary>
    public static Run Reference(Func<nn.Module> create, long seed, Tensor[][] batches, OptimizerKind optimizerKind)
    {
        nn.Module model = SeededModels.Create(create, seed);
        optim.Optimizer optimizer = CreateOptimizer(model, optimizerKind);
        (double[] losses, Dictionary<string, Tensor> gradients) =
            TrainingLoop.Run(model, optimizer, step => Forward(model, batches[step]), batches.Length);
        return new Run(losses, gradients, model.named_parameters().ToDictionary(p => p.name, p => p.parameter.detach().clone()));
    }

    /// <summary>Rannc on <c>Σ replicas</c> in-process ranks; <paramref name="seedOfRank"/> gives each rank's construction seed.</summary>
    /// <param name="deferred">Build the model with deferred construction (<c>new RanncModule(createModel, createOptimizer, ...)</c>).</param>
    /// <param name="optimizerFactory">Build the model whole and the optimizer from a factory (<c>new RanncModule(model, createOptimizer, ...)</c>).</param>
    /// <param name="check">Runs on every rank after training, with the module and the rank.</param>
    public static Run[] Rannc(Func<nn.Module> create, Func<int, long> seedOfRank, Tensor[][] batches, OptimizerKind optimizerKind,
        IReadOnlyList<int> replicasPerStage, string schedule, int? microBatches = null, Func<int, int, Tensor[]>? batchOfRank = null,
        bool deferred = false, bool optimizerFactory = false, Action<RanncModule, int>? check = null)
    {
        var options = new RanncOptions
        {
            ForcedReplicas = replicasPerStage,
            Schedule = RanncOptions.ParseSchedule(schedule),
            PlanCacheDirectory = "",
            ProfileRepeats = 1,
            MicroBatches = microBatches,
            Log = _ => { },
        };
        return InProcessLauncher.Run(replicasPerStage.Sum(), comm =>
        {
            // In-process ranks share one generator: the factory seeds (under the lock of seeded constructions).
            using RanncModule rannc = deferred
                ? new RanncModule(() => SeededModels.Create(create, seedOfRank(comm.Rank)), parameters => CreateOptimizer(parameters, optimizerKind), comm, options)
                : optimizerFactory
                    ? new RanncModule(SeededModels.Create(create, seedOfRank(comm.Rank)), parameters => CreateOptimizer(parameters, optimizerKind), comm, options)
                    : Whole(SeededModels.Create(create, seedOfRank(comm.Rank)), optimizerKind, comm, options);
            nn.Module model = rannc.Model;
            optim.Optimizer optimizer = rannc.Optimizer;
            (double[] losses, Dictionary<string, Tensor> gradients) = TrainingLoop.Run(
                model, optimizer, step => rannc.forward(batchOfRank?.Invoke(comm.Rank, step) ?? batches[step]), batches.Length);
            Assert.Equal(replicasPerStage, rannc.Plan!.Stages.Select(s => s.ReplicaRanks.Count));
            if (options.Schedule is { } forced) Assert.Equal(forced, rannc.Plan.Schedule);
            check?.Invoke(rannc, comm.Rank);
            var held = rannc.Plan.RoleOf(comm.Rank) is { } role
                ? rannc.Plan.Stages[role.Stage].NodeIds.SelectMany(n => rannc.Graph!.Nodes[n].Parameters).ToHashSet()
                : [];
            var parameters = model.named_parameters().Where(p => held.Contains(rannc.Graph!.CanonicalName(p.name)))
                .ToDictionary(p => p.name, p => p.parameter.detach().clone());
            return new Run(losses, gradients, parameters);
        }, new InProcessOptions(Timeout: TimeSpan.FromMinutes(3)));
    }

    private static RanncModule Whole(nn.Module model, OptimizerKind kind, ICommunicator comm, RanncOptions options) =>
        new(model, CreateOptimizer(model, kind), comm, options);

    /// <summary>Every rank's losses, gradients and held parameters equal the reference's; every parameter is held somewhere.</summary>
    public static void AssertEqual(Run reference, IReadOnlyList<Run> ranks)
    {
        foreach (Run rank in ranks)
        {
            for (int s = 0; s < reference.Losses.Length; s++) AssertClose(reference.Losses[s], rank.Losses[s], $"loss of step {s}");
        }
        double gradientScale = reference.Gradients.Values.Select(g => g.abs().max().item<double>()).DefaultIfEmpty(1).Max();
        var seen = new HashSet<string>();
        foreach (Run rank in ranks)
        {
            foreach ((string name, Tensor value) in rank.Gradients)
                AssertCloseTensors(reference.Gradients[name], value, $"gradient of {name} in the last step", gradientScale);
            foreach ((string name, Tensor value) in rank.Parameters)
            {
                seen.Add(name);
                AssertCloseTensors(reference.Parameters[name], value, $"parameter {name}", 1e-12);
            }
        }
        Assert.Equal(reference.Parameters.Keys.Order(), seen.Order());
    }

    public static Tensor Forward(nn.Module model, Tensor[] batch) => model switch
    {
        nn.Module<Tensor, Tensor, Tensor> two when batch.Length == 2 => two.forward(batch[0], batch[1]),
        nn.Module<Tensor, Tensor> one when batch.Length == 1 => one.forward(batch[0]),
        _ => throw new NotSupportedException($"{model.GetType().Name} with {batch.Length} input(s)"),
    };

    public static void AssertClose(double expected, double actual, string what)
    {
        if (double.IsNaN(expected))
        {
            Assert.True(double.IsNaN(actual), $"{what}: expected NaN, got {actual:R}");
            return;
        }
        double difference = Math.Abs(expected - actual);
        Assert.True(difference <= Tolerance * Math.Max(1e-12, Math.Abs(expected)), $"{what}: expected {expected:R}, got {actual:R}");
    }

    private static void AssertCloseTensors(Tensor expected, Tensor actual, string what, double floor)
    {
        Assert.Equal(expected.shape, actual.shape);
        double scale = Math.Max(floor, expected.abs().max().item<double>());
        double difference = (actual - expected).abs().max().item<double>();
        Assert.True(difference <= Tolerance * scale, $"{what} differs by {difference:e3} (scale {scale:e3})");
    }
}
