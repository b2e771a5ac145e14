using System.Security.Cryptography;
using System.Text;
using Rannc.Capture;
using Rannc.Communication;
using Rannc.Execution;
using Rannc.Execution.Memory;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Rannc.Deferred;

/// <summary>
/// Deferred construction (issue #13): rank 0 builds the model on the CPU, exactly as plain TorchSharp code with the same
/// seed does; every other rank builds it on the <c>meta</c> device (shapes and dtypes, no storage). Rank 0 captures,
/// measures, profiles and plans; the others receive what their copy of the graph needs (<see cref="DeferredSetup"/>), give
/// storage only to their own stage's parameters (and to every buffer, which are small), and receive their values from rank 0.
/// </summary>
internal static class DeferredConstruction
{
    /// <summary>Tag of the point-to-point messages that carry initial parameter values from rank 0.</summary>
    private const int ParameterTag = 1;

    // TorchSharp's default device is one static field for the whole process (probed: a thread sees another thread's
    // setting), and in-process ranks are threads: every construction runs under this lock, so that rank 0 never builds
    // while the default is meta, and the window in which it is meta stays inside the lock.
    private static readonly object DefaultDeviceLock = new();

    /// <summary>
    /// Calls <paramref name="createModel"/> on the CPU (rank 0) or with the default device set to meta (every other rank).
    /// Building on meta still draws from libtorch's CPU generator (probed), so the random state is put back afterwards.
    /// In-process ranks (threads of one process) meet before and after the constructions: while any rank builds on meta,
    /// no rank thread runs other code that could create a tensor on the process-wide default device.
    /// </summary>
    public static nn.Module Build(Func<nn.Module> createModel, ICommunicator world)
    {
        ArgumentNullException.ThrowIfNull(createModel);
        bool threads = world is InProcessCommunicator && world.Size > 1;
        if (threads) world.Barrier();
        nn.Module model = Build(createModel, onMeta: world.Rank != 0, world.Rank);
        if (threads) world.Barrier();
        return model;
    }

    /// <summary>One construction, on the CPU or on meta, under the default-device lock.</summary>
    internal static nn.Module Build(Func<nn.Module> createModel, bool onMeta, int rank)
    {
        ArgumentNullException.ThrowIfNull(createModel);
        lock (DefaultDeviceLock)
        {
            if (!onMeta) return createModel() ?? throw new ArgumentException("The model factory returned null.", nameof(createModel));
            Device previous = torch.get_default_device();
            using Tensor randomState = torch.random.get_rng_state();
            torch.set_default_device(torch.META);
            try
            {
                return createModel() ?? throw new ArgumentException("The model factory returned null.", nameof(createModel));
            }
            catch (Exception e) when (e is not ArgumentException)
            {
                throw new NotSupportedException(
                    $"Rank {rank} builds the model on the meta device (shapes only) and the model factory failed there: {e.Message.Split('\n')[0]} " +
                    "Construction must not read parameter values; otherwise build the model whole (new RanncModule(model, ...)).", e);
            }
            finally
            {
                torch.set_default_device(previous);
                torch.random.set_rng_state(randomState);
            }
        }
    }

    /// <summary>
    /// Gives every buffer of a meta model its storage (buffers are small: statistics, tables) and, on every rank, takes
    /// rank 0's values, each tensor once.
    /// </summary>
    public static void ShareBuffers(nn.Module model, ICommunicator world)
    {
        if (world.Rank != 0)
        {
            // Detached from any dispose scope: the first forward() may run inside the user's per-step scope.
            ModuleTensors.Replace(model, old => old is not Parameter && old.device_type != DeviceType.CPU
                ? torch.empty(old.shape, old.dtype).DetachFromDisposeScope()
                : null);
        }
        var seen = new HashSet<TensorIdentity>();
        using var noGrad = torch.no_grad();
        foreach ((_, Tensor buffer) in model.named_buffers())
        {
            if (buffer.numel() > 0 && seen.Add(TensorIdentity.Of(buffer))) world.Broadcast(buffer, 0);
        }
    }

    /// <summary>What rank 0 found that another rank's copy of the graph needs and cannot find itself on meta tensors.</summary>
    /// <remarks>
    /// A parameter listed under a second name (<c>head.weight = wte.weight</c>) is one name in the graph (<see cref="CapturedGraph.CanonicalNames"/>);
    /// <see cref="DistributeParameters"/> gives the other ranks the second wrapper that rank 0's TorchSharp model holds.
    /// </remarks>
    public static DeferredSetup SetupOf(CapturedGraph graph, IReadOnlyList<ValueMeasurement> small, IReadOnlyList<ValueMeasurement> large,
        int measureSamples, IReadOnlyDictionary<int, BatchDerivedNumber?> batchDerived, LossCombination loss, ParameterPlacement placement, int stages) =>
        new(graph.Guards.Select(g => g.Choice).ToArray(), Signature(graph), [.. small], [.. large], measureSamples,
            batchDerived.ToDictionary(b => b.Key, b => b.Value), loss.Rule, loss.LossNodeId,
            Enumerable.Range(0, stages).Select(s => placement.Names.Where(n => !IsBufferName(graph, n) && placement.IsHeldBy(n, s)).ToArray()).ToArray(),
            new Dictionary<string, string>(graph.CanonicalNames), graph.Model.named_parameters().Select(p => p.name).ToArray());

    private static bool IsBufferName(CapturedGraph graph, string name) => graph.Parameters.Any(p => p.Name == name && p.IsBuffer);

    /// <summary>
    /// Gives this rank's parameters (its stage's in <see cref="DeferredSetup.StageParameters"/>) their storage and rank 0's values; every
    /// other parameter becomes an empty tensor that <paramref name="residency"/> takes as released with its model shape.
    /// Call on every rank after <see cref="SetupOf"/> was shared: rank 0 sends, the others receive.
    /// </summary>
    public static void DistributeParameters(nn.Module model, ICommunicator world, Partitioner.PartitionPlan plan, DeferredSetup setup,
        ParameterResidency residency)
    {
        string Canonical(string name) => setup.CanonicalNames.TryGetValue(name, out string? c) ? c : name;
        if (world.Rank == 0)
        {
            var byName = model.named_parameters().ToDictionary(p => p.name, p => (Tensor)p.parameter);
            for (int s = 0; s < plan.Stages.Count; s++)
            {
                foreach (string name in setup.StageParameters[s])
                {
                    foreach (int rank in plan.Stages[s].ReplicaRanks.Where(r => r != 0)) world.Send(byName[name], rank, ParameterTag);
                }
            }
            return;
        }
        int? stage = plan.RoleOf(world.Rank)?.Stage;
        string[] owned = stage is int mine ? setup.StageParameters[mine] : [];
        var fresh = new Dictionary<string, Parameter>();
        var nameOf = new Dictionary<Tensor, string>(ReferenceEqualityComparer.Instance);
        var shapes = new Dictionary<string, (long[] Shape, ScalarType DType, bool RequiresGrad)>();
        foreach ((string name, Parameter parameter) in model.named_parameters())
        {
            nameOf.TryAdd(parameter, name);
            shapes.TryAdd(Canonical(name), (parameter.shape, parameter.dtype, parameter.requires_grad));
        }
        using (torch.no_grad())
        {
            foreach (string name in owned)
            {
                var (shape, dtype, requiresGrad) = shapes[name];
                using Tensor storage = torch.empty(shape, dtype);
                world.Receive(storage, 0, ParameterTag);
                // The model's tensors outlive the user's per-step dispose scope that the first forward() may run in.
                fresh[name] = (Parameter)new Parameter(storage, requiresGrad).DetachFromDisposeScope();
            }
            foreach ((string name, var (shape, dtype, requiresGrad)) in shapes)
            {
                if (fresh.ContainsKey(name)) continue;
                fresh[name] = (Parameter)new Parameter(torch.empty(0, dtype), requiresGrad).DetachFromDisposeScope();
                residency.Adopt(name, fresh[name], shape, dtype);
            }
        }
        // A parameter listed under a second name (head.weight = wte.weight: TorchSharp's Embedding.weight hands out a new
        // wrapper of the same tensor per read) gets, as on rank 0, a second wrapper of the one new tensor: named_parameters()
        // then lists both names and the optimizer gets both, as plain TorchSharp's does. to_type to the same dtype is
        // libtorch's Tensor::to, which returns the tensor itself (the same TensorImpl: one storage, one gradient) in a new handle.
        var aliases = new Dictionary<string, Parameter>();
        using (torch.no_grad())
        {
            foreach (string name in nameOf.Values.Where(n => Canonical(n) != n))
            {
                Parameter canonical = fresh[Canonical(name)];
                aliases[name] = (Parameter)new Parameter(canonical.to_type(canonical.dtype), canonical.requires_grad).DetachFromDisposeScope();
            }
        }
        ModuleTensors.Replace(model, old => old is Parameter && nameOf.TryGetValue(old, out string? name)
            ? aliases.TryGetValue(name, out Parameter? alias) ? alias : fresh[name]
            : null);
        string[] names = model.named_parameters().Select(p => p.name).ToArray();
        if (!names.SequenceEqual(setup.ParameterNames))
        {
            throw new NotSupportedException(
                $"Rank {world.Rank}: after deferred construction the model lists its parameters as [{string.Join(", ", names.Except(setup.ParameterNames))}] " +
                $"where rank 0 lists [{string.Join(", ", setup.ParameterNames.Except(names))}] (a tied parameter held in a way Rannc cannot rebuild). " +
                "Build this model whole (new RanncModule(model, ...)) instead of from a factory.");
        }
    }

    /// <summary>Nodes with their parameters and buffers, and the tied names: equal on two ranks when their graphs are the same.</summary>
    public static string Signature(CapturedGraph graph)
    {
        var text = new StringBuilder();
        foreach (CapturedNode node in graph.Nodes)
            text.Append(node.Name).Append('(').AppendJoin(',', node.Parameters).Append('|').AppendJoin(',', node.Buffers).Append(')').Append(';');
        foreach ((string name, string canonical) in graph.CanonicalNames.OrderBy(c => c.Key, StringComparer.Ordinal))
            text.Append(name).Append('=').Append(canonical).Append(';');
        return $"{graph.Nodes.Count} nodes, {graph.Values.Count} values, {Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(text.ToString())))[..16]}";
    }
}

/// <summary>What rank 0 sends the other ranks of a deferred model after planning (JSON between processes).</summary>
/// <param name="GuardChoices">Branches and loops on shapes, in the order the graph builder meets them.</param>
/// <param name="GraphSignature">Rank 0's <see cref="DeferredConstruction.Signature"/>, to check the others built the same graph.</param>
/// <param name="StageParameters">Per stage, the graph names of the parameters it holds.</param>
/// <param name="CanonicalNames">Every parameter and buffer name to the graph's name of its tensor (tied weights have one).</param>
/// <param name="ParameterNames">Rank 0's <c>named_parameters()</c> names in order: every rank's model must list the same.</param>
internal sealed record DeferredSetup(
    int[] GuardChoices, string GraphSignature, List<ValueMeasurement> Small, List<ValueMeasurement> Large, int MeasureSamples,
    Dictionary<int, BatchDerivedNumber?> BatchDerived, LossRule LossRule, int LossNodeId, string[][] StageParameters,
    Dictionary<string, string> CanonicalNames, string[] ParameterNames);
