using System.Globalization;
using Rannc.Communication;
using Rannc.Partitioner;
using static TorchSharp.torch;

namespace Rannc.Execution;

/// <summary>
/// How Rannc plans and runs a model. Every property can be overridden by a <c>RANNC_*</c> environment variable
/// (see <see cref="WithEnvironment"/>), so a launched job can be tuned without recompiling.
/// </summary>
public sealed record RanncOptions
{
    /// <summary>Memory budget per rank in bytes (<c>RANNC_DEVICE_MEMORY</c>, e.g. <c>512MiB</c>). Null: the device's
    /// memory; on CPU, physical memory divided by the ranks on this machine.</summary>
    public long? DeviceMemoryBytes { get; init; }

    /// <summary>Fraction of the budget kept free (<c>RANNC_MEM_MARGIN</c>).</summary>
    public double MemoryMargin { get; init; } = 0.1;

    /// <summary>Schedule to use (<c>RANNC_SCHEDULE</c>: <c>auto</c>, <c>gpipe</c>, <c>1f1b</c>, <c>zb</c>); null lets the planner
    /// choose between GPipe and 1F1B (the zero-bubble schedule is opt-in: see docs/runtime.md).</summary>
    public PipelineScheduleKind? Schedule { get; init; }

    /// <summary>Force <c>Stages</c> stages of <c>Replicas</c> replicas each (<c>RANNC_PLAN=SxR</c>); null: automatic.</summary>
    public (int Stages, int Replicas)? ForcedShape { get; init; }

    /// <summary>Force one stage per entry with that many replicas (<c>RANNC_PLAN=2,1</c>); takes precedence over
    /// <see cref="ForcedShape"/>.</summary>
    public IReadOnlyList<int>? ForcedReplicas { get; init; }

    /// <summary>The forced replicas per stage, if any.</summary>
    public IReadOnlyList<int>? ForcedReplicasPerStage =>
        ForcedReplicas ?? (ForcedShape is { } shape ? Enumerable.Repeat(shape.Replicas, shape.Stages).ToList() : null);

    /// <summary>Force the number of micro-batches (<c>RANNC_MICRO_BATCHES</c>); null: the planner chooses.</summary>
    public int? MicroBatches { get; init; }

    /// <summary>Optimizer state bytes per parameter byte (Adam: 2, SGD with momentum: 1, SGD: 0).</summary>
    public double OptimizerStateFactor { get; init; } = 2;

    /// <summary>Folder of the plan cache (<c>RANNC_PLAN_CACHE</c>); null: <c>~/.cache/rannc/plans</c>. Empty string: no cache.</summary>
    public string? PlanCacheDirectory { get; init; }

    /// <summary>Also write the plan to this file (<c>RANNC_SAVE_DEPLOYMENT</c>).</summary>
    public string? SaveDeploymentPath { get; init; }

    /// <summary>Use the plan in this file instead of profiling and planning (<c>RANNC_LOAD_DEPLOYMENT</c>).</summary>
    public string? LoadDeploymentPath { get; init; }

    /// <summary>
    /// How forward()'s arguments hold the batch, by parameter name, for a model one cannot annotate with
    /// <c>[Batch(dim)]</c>, <c>[NotBatched]</c> or <c>[OffsetsOf("x")]</c>; replaces what the parameters declare.
    /// E.g. <c>new Dictionary&lt;string, InputBatch&gt; { ["src"] = InputBatch.Along(1), ["mask"] = InputBatch.NotBatched }</c>.
    /// </summary>
    public IReadOnlyDictionary<string, Capture.InputBatch>? InputBatching { get; init; }

    /// <summary>Timed repetitions per node when profiling (<c>RANNC_PROFILE_REPEATS</c>).</summary>
    public int ProfileRepeats { get; init; } = 3;

    /// <summary>
    /// For how many steps every rank's inputs (dtype, shape and a hash of the contents), training mode and backward
    /// calls are compared across ranks (<c>RANNC_CHECK_INPUTS</c>: a number of steps, <c>all</c> or <c>0</c>).
    /// Null: every step. The check costs one small all-gather and a hash of the inputs per step (bench/RESULTS.md).
    /// </summary>
    public int? CheckInputSteps { get; init; }

    /// <summary>
    /// Verify the first N training steps (<c>RANNC_VERIFY</c>; 0: off): rank 0 runs the unpartitioned step on the
    /// same slices and compares the loss and every parameter's gradient with the pipeline's, failing the step with the
    /// stage and parameter that differ. Costs a whole-model broadcast and an unpartitioned step per verified step.
    /// </summary>
    public int VerifySteps { get; init; }

    /// <summary>A test double: changes the gradients this rank's stage computed (graph name, gradient) before they are used.</summary>
    internal Func<string, Tensor, Tensor>? PerturbGradient { get; init; }

    /// <summary>
    /// The fewest samples any training slice (micro-batch share of one replica) may have (<c>RANNC_MIN_SLICE_SAMPLES</c>).
    /// Batch-norm layers ask for at least 2 themselves; raise it when a model needs larger slices.
    /// </summary>
    public int MinSamplesPerSlice { get; init; } = 1;

    /// <summary>
    /// Deadline of every blocking wait between ranks (<c>RANNC_TIMEOUT</c>, seconds); on expiry the job aborts naming
    /// what the rank waited for. Communicators already read <c>RANNC_TIMEOUT</c> when they are made (default 600 s);
    /// a value here replaces theirs once the module is constructed. Null: keep the communicator's.
    /// </summary>
    public TimeSpan? Timeout { get; init; }

    /// <summary>
    /// The link between two ranks on one host (<c>RANNC_INTRA_HOST_LINK</c>, e.g. <c>10GB/s,5us</c>). Null: measured when
    /// training starts (a short ping-pong between processes, cached beside the plans), or a memory copy for in-process ranks.
    /// </summary>
    public LinkSpeed? IntraHostLink { get; init; }

    /// <summary>The link between ranks on different hosts (<c>RANNC_INTER_HOST_LINK</c>, e.g. <c>25GB/s,10us</c>). Null: measured and cached.</summary>
    public LinkSpeed? InterHostLink { get; init; }

    /// <summary>
    /// Measure each rank's peak memory over training steps 1…N (step 0 deploys) and log it next to the plan's predicted
    /// peak of the rank's stage (<c>RANNC_MEMORY_REPORT</c>=N; 0: off). Linux only (<c>/proc/self</c>); see
    /// docs/runtime.md, "Memory: predicted and measured".
    /// </summary>
    public int MemoryReportSteps { get; init; }

    /// <summary>
    /// Write a Chrome trace-event JSON of one training step here (<c>RANNC_TRACE</c>): one track per rank with its
    /// forwards, backwards, sends and receives (peer, bytes), all-reduces and idle time, beside the simulator's prediction
    /// of the same plan. Open it in Perfetto or chrome://tracing. Null: no trace.
    /// </summary>
    public string? TracePath { get; init; }

    /// <summary>Which training step (1-based) <see cref="TracePath"/> traces (<c>RANNC_TRACE_STEP</c>); the default 2 leaves out the first step's warm-up.</summary>
    public int TraceStep { get; init; } = 2;

    /// <summary>Where Rannc's log lines go (rank 0 prints the plan summary); null: standard error.</summary>
    public Action<string>? Log { get; init; }

    /// <summary>Options with every <c>RANNC_*</c> variable that is set applied on top of these.</summary>
    public RanncOptions WithEnvironment() => WithVariables(name => Environment.GetEnvironmentVariable(name));

    /// <summary>As <see cref="WithEnvironment"/>, reading variables through <paramref name="lookup"/> (for tests).</summary>
    public RanncOptions WithVariables(Func<string, string?> lookup)
    {
        RanncOptions result = this;
        if (lookup("RANNC_DEVICE_MEMORY") is { Length: > 0 } memory) result = result with { DeviceMemoryBytes = ParsePositiveBytes("RANNC_DEVICE_MEMORY", memory) };
        if (lookup("RANNC_MEM_MARGIN") is { Length: > 0 } margin) result = result with { MemoryMargin = ParseDouble("RANNC_MEM_MARGIN", margin) };
        if (lookup("RANNC_SCHEDULE") is { Length: > 0 } schedule) result = result with { Schedule = Named("RANNC_SCHEDULE", schedule, ParseSchedule) };
        if (lookup("RANNC_PLAN") is { Length: > 0 } plan) result = result with { ForcedReplicas = Named("RANNC_PLAN", plan, ParsePlan), ForcedShape = null };
        if (lookup("RANNC_MICRO_BATCHES") is { Length: > 0 } micro) result = result with { MicroBatches = ParsePositive("RANNC_MICRO_BATCHES", micro) };
        if (lookup("RANNC_PLAN_CACHE") is { } cache) result = result with { PlanCacheDirectory = cache };
        if (lookup("RANNC_SAVE_DEPLOYMENT") is { Length: > 0 } save) result = result with { SaveDeploymentPath = save };
        if (lookup("RANNC_LOAD_DEPLOYMENT") is { Length: > 0 } load) result = result with { LoadDeploymentPath = load };
        if (lookup("RANNC_CHECK_INPUTS") is { Length: > 0 } check)
            result = result with { CheckInputSteps = check.Trim().Equals("all", StringComparison.OrdinalIgnoreCase) ? null : ParseNonNegative("RANNC_CHECK_INPUTS", check) };
        if (lookup(Watchdog.Variable) is { Length: > 0 } timeout) result = result with { Timeout = Watchdog.ParseTimeout(timeout) };
        if (lookup("RANNC_VERIFY") is { Length: > 0 } verify) result = result with { VerifySteps = ParseNonNegative("RANNC_VERIFY", verify) };
        if (lookup("RANNC_MIN_SLICE_SAMPLES") is { Length: > 0 } slice) result = result with { MinSamplesPerSlice = ParsePositive("RANNC_MIN_SLICE_SAMPLES", slice) };
        if (lookup("RANNC_INTRA_HOST_LINK") is { Length: > 0 } intra) result = result with { IntraHostLink = Named("RANNC_INTRA_HOST_LINK", intra, LinkSpeed.Parse) };
        if (lookup("RANNC_INTER_HOST_LINK") is { Length: > 0 } inter) result = result with { InterHostLink = Named("RANNC_INTER_HOST_LINK", inter, LinkSpeed.Parse) };
        if (lookup("RANNC_MEMORY_REPORT") is { Length: > 0 } report) result = result with { MemoryReportSteps = ParseNonNegative("RANNC_MEMORY_REPORT", report) };
        if (lookup("RANNC_TRACE") is { Length: > 0 } trace) result = result with { TracePath = trace };
        if (lookup("RANNC_TRACE_STEP") is { Length: > 0 } traceStep) result = result with { TraceStep = ParsePositive("RANNC_TRACE_STEP", traceStep) };
        if (lookup("RANNC_PROFILE_REPEATS") is { Length: > 0 } repeats) result = result with { ProfileRepeats = ParsePositive("RANNC_PROFILE_REPEATS", repeats) };
        return result;
    }

    /// <summary>Parses a byte size: <c>1073741824</c>, <c>512MiB</c>, <c>1.5GiB</c>, <c>800MB</c>, <c>64k</c>.</summary>
    public static long ParseBytes(string text)
    {
        string trimmed = text.Trim();
        int split = 0;
        while (split < trimmed.Length && (char.IsAsciiDigit(trimmed[split]) || trimmed[split] == '.')) split++;
        if (split == 0 || !double.TryParse(trimmed[..split], NumberStyles.Float, CultureInfo.InvariantCulture, out double number))
            throw new FormatException($"'{text}' is not a size; write e.g. 512MiB, 2GiB or 1073741824.");
        double unit = trimmed[split..].Trim().ToUpperInvariant() switch
        {
            "" or "B" => 1,
            "K" or "KB" => 1e3,
            "KIB" => 1L << 10,
            "M" or "MB" => 1e6,
            "MIB" => 1L << 20,
            "G" or "GB" => 1e9,
            "GIB" => 1L << 30,
            "T" or "TB" => 1e12,
            "TIB" => 1L << 40,
            string other => throw new FormatException($"'{text}' has an unknown unit '{other}'; use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB."),
        };
        return checked((long)Math.Round(number * unit));
    }

    /// <summary>A size for the variable <paramref name="name"/>: errors name it and the accepted form.</summary>
    private static long ParsePositiveBytes(string name, string text)
    {
        long bytes;
        try
        {
            bytes = ParseBytes(text);
        }
        catch (Exception e) when (e is FormatException or OverflowException)
        {
            throw new FormatException($"{name}='{text}': {e.Message}", e);
        }
        return bytes > 0 ? bytes : throw new FormatException($"{name}='{text}' must be a size above zero, e.g. 512MiB or 2GiB.");
    }

    /// <summary>Parses <c>auto</c>, <c>gpipe</c>, <c>1f1b</c> or <c>zb</c> (zero bubble).</summary>
    public static PipelineScheduleKind? ParseSchedule(string text) => text.Trim().ToLowerInvariant() switch
    {
        "auto" => null,
        "gpipe" or "fill-drain" => PipelineScheduleKind.GPipe,
        "1f1b" => PipelineScheduleKind.OneFOneB,
        "zb" or "zero-bubble" => PipelineScheduleKind.ZeroBubble,
        _ => throw new FormatException($"'{text}' is not a schedule; use auto, gpipe, 1f1b or zb."),
    };

    /// <summary>
    /// Parses a forced plan shape into replicas per stage: <c>auto</c> (null), <c>SxR</c> (S stages of R replicas,
    /// e.g. <c>2x2</c>) or a list of replica counts, one per stage (e.g. <c>1,2</c>).
    /// </summary>
    public static IReadOnlyList<int>? ParsePlan(string text)
    {
        string trimmed = text.Trim().ToLowerInvariant();
        if (trimmed == "auto") return null;
        string[] shape = trimmed.Split('x');
        if (shape.Length == 2 && int.TryParse(shape[0], out int stages) && int.TryParse(shape[1], out int replicas) && stages > 0 && replicas > 0)
            return Enumerable.Repeat(replicas, stages).ToList();
        string[] counts = trimmed.Split(',');
        if (counts.All(c => int.TryParse(c, out int r) && r > 0)) return counts.Select(int.Parse).ToList();
        throw new FormatException($"'{text}' is not a plan shape; write auto, SxR (e.g. 2x2: 2 stages of 2 replicas) or replicas per stage (e.g. 1,2).");
    }

    private static T Named<T>(string name, string text, Func<string, T> parse)
    {
        try
        {
            return parse(text);
        }
        catch (FormatException e)
        {
            throw new FormatException($"{name}: {e.Message}", e);
        }
    }

    private static int ParsePositive(string name, string text) =>
        int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out int value) && value > 0
            ? value
            : throw new FormatException($"{name}='{text}' must be a positive integer.");

    private static int ParseNonNegative(string name, string text) =>
        int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out int value) && value >= 0
            ? value
            : throw new FormatException($"{name}='{text}' must be 'all' or a number of steps (0 or more).");

    private static double ParseDouble(string name, string text) =>
        double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out double value) && value >= 0 && value < 1
            ? value
            : throw new FormatException($"{name}='{text}' must be a number in [0, 1).");
}
