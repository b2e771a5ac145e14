using System.CommandLine;
using System.Globalization;
using System.CommandLine.Parsing;
using Rannc.Execution;
using static TorchSharp.torch;

namespace Rannc.Samples;

/// <summary>Command-line options of the sample program.</summary>
public sealed record SampleOptions
{
    public string Model { get; init; } = "bert";
    public int Ranks { get; init; } = 4;
    public int Steps { get; init; } = 5;
    public int Batch { get; init; } = 16;
    public int Layers { get; init; } = 4;
    public int Hidden { get; init; } = 128;
    public int SequenceLength { get; init; } = 32;
    public int Seed { get; init; } = 42;
    public ScalarType DType { get; init; } = ScalarType.Float32;
    public string Plan { get; init; } = "auto";
    public string Schedule { get; init; } = "auto";
    public int? MicroBatches { get; init; }
    public long? MemoryBytes { get; init; }
    public double LearningRate { get; init; } = 1e-3;
    public bool Reference { get; init; }

    /// <summary>Whether the optimizer is made by RanncModule's factory overload (state for this rank's parameters only).</summary>
    public bool OptimizerFactory { get; init; }

    /// <summary>Deferred construction: rank 0 builds the model, the others only their stage's parameters (implies the optimizer factory).</summary>
    public bool Deferred { get; init; }
    public bool Json { get; init; }
    public string? PlanCache { get; init; }
    public string? Dot { get; init; }
    public string? Trace { get; init; }
    public int? TraceStep { get; init; }
    public bool DryRun { get; init; }
    public int? Devices { get; init; }
    public int DevicesPerNode { get; init; } = 8;
    public string? RenderTrace { get; init; }

    /// <summary>
    /// The command line: <c>--help</c> lists every option; <see cref="From"/> reads the values of a parse without errors.
    /// </summary>
    public static RootCommand CreateCommand()
    {
        var command = new RootCommand(
            "Rannc sample: trains a sample model partitioned across ranks (threads of this process, or MPI processes under mpiexec).");
        foreach (Option option in All) command.Options.Add(option);
        return command;
    }

    /// <summary>The options a parse of <see cref="CreateCommand"/> without errors gives.</summary>
    public static SampleOptions From(ParseResult parsed) => new()
    {
        Model = parsed.GetValue(ModelOption)!,
        Ranks = parsed.GetValue(RanksOption),
        Steps = parsed.GetValue(StepsOption),
        Batch = parsed.GetValue(BatchOption),
        Layers = parsed.GetValue(LayersOption),
        Hidden = parsed.GetValue(HiddenOption),
        SequenceLength = parsed.GetValue(SequenceOption),
        Seed = parsed.GetValue(SeedOption),
        DType = parsed.GetValue(DTypeOption) == "float64" ? ScalarType.Float64 : ScalarType.Float32,
        Plan = parsed.GetValue(PlanOption)!,
        Schedule = parsed.GetValue(ScheduleOption)!,
        MicroBatches = parsed.GetValue(MicroBatchesOption),
        MemoryBytes = parsed.GetValue(MemoryOption),
        LearningRate = parsed.GetValue(LearningRateOption),
        PlanCache = parsed.GetValue(PlanCacheOption),
        Reference = parsed.GetValue(ReferenceOption),
        OptimizerFactory = parsed.GetValue(OptimizerFactoryOption),
        Deferred = parsed.GetValue(DeferredOption),
        Json = parsed.GetValue(JsonOption),
        Dot = parsed.GetValue(DotOption),
        Trace = parsed.GetValue(TraceOption),
        TraceStep = parsed.GetValue(TraceStepOption),
        DryRun = parsed.GetValue(DryRunOption),
        Devices = parsed.GetValue(DevicesOption),
        DevicesPerNode = parsed.GetValue(DevicesPerNodeOption),
        RenderTrace = parsed.GetValue(RenderTraceOption),
    };

    private static readonly Option<string> ModelOption = new("--model")
    {
        Description = "Model to train: mlp, bert or resnet",
        HelpName = "mlp|bert|resnet",
        DefaultValueFactory = _ => "bert",
        CustomParser = r =>
        {
            string model = r.Tokens[0].Value.ToLowerInvariant();
            return model is "mlp" or "bert" or "resnet" ? model : Fail<string>(r, $"--model {r.Tokens[0].Value}: use mlp, bert or resnet.");
        },
    };

    private static readonly Option<int> RanksOption = PositiveInt("--ranks", "In-process ranks when not started by mpiexec", 4);
    private static readonly Option<int> StepsOption = PositiveInt("--steps", "Training steps", 5);
    private static readonly Option<int> BatchOption = PositiveInt("--batch", "Samples per step", 16);
    private static readonly Option<int> LayersOption = PositiveInt("--layers", "Model depth (BERT: layers; MLP: hidden layers; ResNet: blocks)", 4);
    private static readonly Option<int> HiddenOption = PositiveInt("--hidden", "Model width (BERT: width; MLP: hidden width; ResNet: 8 x base width)", 128);
    private static readonly Option<int> SequenceOption = PositiveInt("--seq", "BERT sequence length", 32);
    private static readonly Option<int> SeedOption = PositiveInt("--seed", "Seed of the model and the data", 42);

    private static readonly Option<string> DTypeOption = new Option<string>("--dtype")
    {
        Description = "Parameter and activation type",
        HelpName = "float32|float64",
        DefaultValueFactory = _ => "float32",
    }.AcceptOnlyFromAmong("float32", "float64");

    private static readonly Option<string> PlanOption = new("--plan")
    {
        Description = "Force S stages of R replicas, or the replicas of each stage",
        HelpName = "auto|SxR|R1,R2,..",
        DefaultValueFactory = _ => "auto",
        Validators = { r => CheckParses(r, "--plan", text => RanncOptions.ParsePlan(text)) },
    };

    private static readonly Option<string> ScheduleOption = new("--schedule")
    {
        Description = "Pipeline schedule",
        HelpName = "auto|gpipe|1f1b",
        DefaultValueFactory = _ => "auto",
        Validators = { r => CheckParses(r, "--schedule", text => RanncOptions.ParseSchedule(text)) },
    };

    private static readonly Option<int?> MicroBatchesOption = new("--micro-batches")
    {
        Description = "Force the number of micro-batches",
        HelpName = "N",
        CustomParser = r => ParsePositive(r),
    };

    private static readonly Option<long?> MemoryOption = new("--memory")
    {
        Description = "Memory budget per rank, e.g. 512MiB",
        HelpName = "SIZE",
        CustomParser = r =>
        {
            try
            {
                return RanncOptions.ParseBytes(r.Tokens[0].Value);
            }
            catch (FormatException e)
            {
                return Fail<long?>(r, $"--memory: {e.Message}");
            }
        },
    };

    private static readonly Option<double> LearningRateOption = new("--lr")
    {
        Description = "Adam learning rate",
        HelpName = "X",
        DefaultValueFactory = _ => 1e-3,
        CustomParser = r => double.TryParse(r.Tokens[0].Value, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) && v > 0
            ? v : Fail<double>(r, $"--lr {r.Tokens[0].Value}: needs a positive number."),
    };

    private static readonly Option<string?> PlanCacheOption = new("--plan-cache")
    {
        Description = "Plan cache folder ('' disables it)",
        HelpName = "DIR",
    };

    private static readonly Option<bool> ReferenceOption = new("--reference")
    {
        Description = "Train with plain TorchSharp on one process instead (for comparison)",
    };

    private static readonly Option<bool> OptimizerFactoryOption = new("--optimizer-factory")
    {
        Description = "Give RanncModule a factory for the optimizer instead of an optimizer over the whole model, so each rank allocates Adam's state only for its own stage's parameters",
    };

    private static readonly Option<bool> DeferredOption = new("--deferred")
    {
        Description = "Deferred construction: rank 0 builds the model, every other rank builds it on the meta device and gets storage only for its own stage's parameters (the optimizer comes from a factory)",
    };

    private static readonly Option<bool> JsonOption = new("--json")
    {
        Description = "End with one line of JSON: ranks, stages, replicas, micro_batches, schedule, losses, step_ms, plan_cache",
    };

    private static readonly Option<string?> DotOption = new("--dot")
    {
        Description = "Write the captured graph as Graphviz DOT, nodes coloured by pipeline stage (rank 0, after training), and FILE.svg when Graphviz's dot is installed",
        HelpName = "FILE",
    };

    private static readonly Option<string?> TraceOption = new("--trace")
    {
        Description = "Write a Chrome trace (Perfetto, chrome://tracing) of one training step, measured and predicted tracks per rank",
        HelpName = "FILE",
    };

    private static readonly Option<int?> TraceStepOption = new("--trace-step")
    {
        Description = "The training step --trace records (default 2: after the first step's warm-up)",
        HelpName = "N",
        CustomParser = r => ParsePositive(r),
    };

    private static readonly Option<bool> DryRunOption = new("--dry-run")
    {
        Description = "Plan for a cluster (--devices, --devices-per-node, --memory, default 80GiB) and print the plan and its simulated step, " +
            "without training; compute times are profiled on this machine",
    };

    private static readonly Option<int?> DevicesOption = new("--devices")
    {
        Description = "Devices of the --dry-run cluster (default: --ranks)",
        HelpName = "N",
        CustomParser = r => ParsePositive(r),
    };

    private static readonly Option<int> DevicesPerNodeOption = PositiveInt("--devices-per-node", "Devices per host of the --dry-run cluster", 8);

    private static readonly Option<string?> RenderTraceOption = new("--render-trace")
    {
        Description = "Draw a trace written by --trace as an SVG beside it (trace.json: trace.svg) (one track per rank, measured and predicted) and exit, without training",
        HelpName = "FILE",
    };

    private static readonly Option[] All =
    [
        ModelOption, RanksOption, StepsOption, BatchOption, LayersOption, HiddenOption, SequenceOption, SeedOption, DTypeOption,
        PlanOption, ScheduleOption, MicroBatchesOption, MemoryOption, LearningRateOption, PlanCacheOption, ReferenceOption, OptimizerFactoryOption, DeferredOption, JsonOption, DotOption,
        TraceOption, TraceStepOption, DryRunOption, DevicesOption, DevicesPerNodeOption, RenderTraceOption,
    ];

    private static Option<int> PositiveInt(string name, string description, int defaultValue) => new(name)
    {
        Description = description,
        HelpName = "N",
        DefaultValueFactory = _ => defaultValue,
        CustomParser = r => ParsePositive(r),
    };

    private static int ParsePositive(ArgumentResult result)
    {
        string text = result.Tokens[0].Value;
        return int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out int value) && value > 0
            ? value
            : Fail<int>(result, $"{OptionName(result)} {text}: needs a positive integer.");
    }

    private static string OptionName(ArgumentResult result) =>
        result.Parent is OptionResult option ? option.Option.Name : result.Argument.Name;

    private static void CheckParses(OptionResult result, string name, Action<string> parse)
    {
        try
        {
            parse(result.GetValueOrDefault<string>() ?? "");
        }
        catch (FormatException e)
        {
            result.AddError($"{name}: {e.Message}");
        }
    }

    private static T Fail<T>(ArgumentResult result, string message)
    {
        result.AddError(message);
        return default!;
    }

    /// <summary>The sample task these options describe.</summary>
    public SampleTask Task() => Model switch
    {
        "mlp" => SampleTasks.Mlp(hiddenSize: Hidden, hiddenLayers: Layers),
        "bert" => SampleTasks.Bert(SampleTasks.BertConfig(Layers, Hidden), SequenceLength, maskedPerSequence: Math.Max(1, SequenceLength / 8)),
        "resnet" => SampleTasks.ResNet(blocks: Layers, baseWidth: Math.Max(4, Hidden / 8)),
        _ => throw new ArgumentException(Model),
    };

    /// <summary>Rannc options from these command-line options (RANNC_* variables still override them).</summary>
    public RanncOptions ToRanncOptions() => new()
    {
        ForcedReplicas = RanncOptions.ParsePlan(Plan),
        Schedule = RanncOptions.ParseSchedule(Schedule),
        MicroBatches = MicroBatches,
        DeviceMemoryBytes = MemoryBytes,
        PlanCacheDirectory = PlanCache,
        TracePath = Trace,
        TraceStep = TraceStep ?? new RanncOptions().TraceStep,
    };
}
