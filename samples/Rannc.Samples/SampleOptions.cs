using System.Globalization;
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
    public bool Json { get; init; }
    public string? PlanCache { get; init; }

    public const string Usage = """
        Rannc sample: trains a sample model partitioned across ranks (threads of this process, or MPI processes under mpiexec).
          --model mlp|bert|resnet   model to train (default bert)
          --ranks N                 in-process ranks when not started by mpiexec (default 4)
          --steps N                 training steps (default 5)
          --batch N                 samples per step (default 16)
          --layers N, --hidden N    model size (BERT: layers, width; MLP: hidden layers, width; ResNet: blocks, base width)
          --seq N                   BERT sequence length (default 32)
          --seed N                  seed of the model and the data (default 42)
          --dtype float32|float64   parameter and activation type (default float32)
          --plan auto|SxR|R1,R2,..  force S stages of R replicas, or the replicas of each stage (default auto)
          --schedule auto|gpipe|1f1b
          --micro-batches N         force the number of micro-batches
          --memory SIZE             memory budget per rank, e.g. 512MiB
          --lr X                    Adam learning rate (default 1e-3)
          --plan-cache DIR          plan cache folder ('' disables it)
          --reference               train with plain TorchSharp on one process instead (for comparison)
          --json                    end with one line of JSON: ranks, stages, replicas, micro_batches, schedule, losses, step_ms, plan_cache
        """;

    public static SampleOptions Parse(string[] args)
    {
        var options = new SampleOptions();
        for (int i = 0; i < args.Length; i++)
        {
            string name = args[i];
            string Value() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{name} needs a value.");
            int Int() => int.TryParse(Value(), NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) && v > 0
                ? v : throw new ArgumentException($"{name} needs a positive integer.");
            options = name switch
            {
                "--model" => options with { Model = Value().ToLowerInvariant() },
                "--ranks" => options with { Ranks = Int() },
                "--steps" => options with { Steps = Int() },
                "--batch" => options with { Batch = Int() },
                "--layers" => options with { Layers = Int() },
                "--hidden" => options with { Hidden = Int() },
                "--seq" => options with { SequenceLength = Int() },
                "--seed" => options with { Seed = Int() },
                "--dtype" => options with
                {
                    DType = Value() switch
                    {
                        "float32" => ScalarType.Float32,
                        "float64" => ScalarType.Float64,
                        string other => throw new ArgumentException($"--dtype {other}: use float32 or float64."),
                    },
                },
                "--plan" => options with { Plan = Value() },
                "--schedule" => options with { Schedule = Value() },
                "--micro-batches" => options with { MicroBatches = Int() },
                "--memory" => options with { MemoryBytes = RanncOptions.ParseBytes(Value()) },
                "--lr" => options with { LearningRate = double.Parse(Value(), CultureInfo.InvariantCulture) },
                "--plan-cache" => options with { PlanCache = Value() },
                "--reference" => options with { Reference = true },
                "--json" => options with { Json = true },
                _ => throw new ArgumentException($"Unknown option {name}."),
            };
        }
        if (options.Model is not ("mlp" or "bert" or "resnet")) throw new ArgumentException($"--model {options.Model}: use mlp, bert or resnet.");
        RanncOptions.ParsePlan(options.Plan);
        RanncOptions.ParseSchedule(options.Schedule);
        return options;
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
    };
}
