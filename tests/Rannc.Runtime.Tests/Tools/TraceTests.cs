using Rannc.Communication;
using Rannc.Execution;
using Rannc.Partitioner;
using Rannc.Samples;
using Rannc.Tests.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Tests.Tools;

/// <summary><see cref="RanncOptions.TracePath"/>: a Chrome trace of the chosen training step, measured and predicted, per rank.</summary>
public sealed class TraceTests
{
    private static readonly SampleTask Task = SampleTasks.Mlp(inputSize: 6, hiddenSize: 10, hiddenLayers: 4, classes: 3);

    [Fact]
    public void Trace_TwoRanksTwoStages_HasEveryActionOfEachRank_AndDoesNotChangeTraining()
    {
        string path = TempPath();
        try
        {
            var options = new RanncOptions { ForcedShape = (2, 1), MicroBatches = 2 };
            double[] untraced = Train(2, options, steps: 3);
            double[] traced = Train(2, options with { TracePath = path }, steps: 3);

            Assert.Equal(untraced, traced);
            TraceChecks.Trace trace = TraceChecks.Check(path);
            Assert.Contains("training step 2", trace.ProcessNames[TraceChecks.Measured]);
            Assert.Equal([1, 1], trace.Plan.Stages.Select(s => s.ReplicaRanks.Count));
            // Both tracks of rank 0 send activations and receive gradients; rank 1 has idle time while stage 0 runs forward.
            foreach (int pid in new[] { TraceChecks.Measured, TraceChecks.Predicted })
            {
                Assert.Contains(trace.Tracks[(pid, 0)], s => s.Category == "send" && s.Name.StartsWith("send activation", StringComparison.Ordinal));
                Assert.Contains(trace.Tracks[(pid, 0)], s => s.Category == "receive" && s.Name.StartsWith("receive gradient", StringComparison.Ordinal));
                Assert.Contains(trace.Tracks[(pid, 1)], s => s.Category == "idle");
            }

            // The picture has one slice per event, on a track per rank and process, and the legend.
            var picture = System.Xml.Linq.XDocument.Parse(Rannc.Execution.Tracing.TracePicture.Svg(File.ReadAllText(path)));
            var rects = picture.Descendants().Where(e => e.Name.LocalName == "rect").ToList();
            Assert.Equal(trace.Tracks.Values.Sum(t => t.Count), rects.Count(r => (string?)r.Attribute("class") == "slice"));
            Assert.Equal(8, rects.Count(r => (string?)r.Attribute("class") == "legend"));
            string text = string.Concat(picture.Descendants().Where(e => e.Name.LocalName == "text").Select(e => e.Value + "\n"));
            Assert.Contains("rank 0 (stage 0, replica 0), measured", text);
            Assert.Contains("rank 1 (stage 1, replica 0), predicted", text);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void Trace_FourRanks_OneThenThreeReplicas_HasTransfersToEveryReplicaAndTheAllReduce()
    {
        string path = TempPath();
        try
        {
            var options = new RanncOptions { ForcedReplicas = [1, 3], MicroBatches = 2, Schedule = PipelineScheduleKind.OneFOneB, TracePath = path, TraceStep = 1 };
            Train(4, options, steps: 1, batch: 12);

            TraceChecks.Trace trace = TraceChecks.Check(path);
            Assert.Contains("training step 1", trace.ProcessNames[TraceChecks.Measured]);
            foreach (int pid in new[] { TraceChecks.Measured, TraceChecks.Predicted })
            {
                Assert.Equal([1, 2, 3], trace.Tracks[(pid, 0)].Where(s => s.Category == "send").Select(s => s.Peer!.Value).Distinct().Order());
                for (int rank = 1; rank < 4; rank++) Assert.Single(trace.Tracks[(pid, rank)], s => s.Name == "all-reduce stage 1");
            }
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void Trace_OfAPlanLoadedFromTheCache_StillHasThePredictedTracks()
    {
        string path = TempPath();
        string cache = Directory.CreateTempSubdirectory("rannc-trace-cache-").FullName;
        try
        {
            var lines = new List<string>();
            var options = new RanncOptions { ForcedShape = (2, 1), MicroBatches = 2 };
            Train(2, options, steps: 1, cacheDirectory: cache);
            Train(2, options with { TracePath = path, TraceStep = 1, Log = l => { lock (lines) lines.Add(l); } }, steps: 1, cacheDirectory: cache);

            Assert.Contains(lines, l => l.StartsWith("Rannc: loaded the plan", StringComparison.Ordinal));
            Assert.Contains(lines, l => l.Contains("profiling the nodes for the trace", StringComparison.Ordinal));
            TraceChecks.Check(path); // requires the predicted process and every rank's actions in it
        }
        finally
        {
            File.Delete(path);
            Directory.Delete(cache, recursive: true);
        }
    }

    [Fact]
    public void Trace_OfAModelReturningLogits_RecordsTheBackwardThatRunsInLossBackward()
    {
        string path = TempPath();
        try
        {
            var options = new RanncOptions { ForcedShape = (2, 1), MicroBatches = 2, PlanCacheDirectory = "", ProfileRepeats = 1, Log = _ => { }, TracePath = path, TraceStep = 1 };
            RankLauncher.Run(2, comm =>
            {
                torch.set_num_threads(1);
                nn.Module model = SeededModels.Create(() => new LogitsNet(), 17);
                var optimizer = torch.optim.SGD(model.parameters(), 0.1);
                using var rannc = new RanncModule(model, optimizer, options);
                using var inputs = torch.randn([8, 5], ScalarType.Float64, generator: new Generator(3));
                using var labels = torch.randint(0, 4, [8], ScalarType.Int64, generator: new Generator(4));
                optimizer.zero_grad();
                nn.functional.cross_entropy(rannc.forward(inputs), labels).backward();
                optimizer.step();
            }, new InProcessOptions(Timeout: TimeSpan.FromMinutes(2)));

            TraceChecks.Trace trace = TraceChecks.Check(path); // forwards and backwards both, on every rank
            Assert.Contains(trace.Tracks[(TraceChecks.Measured, 0)], s => s.Category == "backward");
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void Trace_RunShorterThanTheTracedStep_WritesNothingAndSaysSo()
    {
        string path = TempPath();
        var lines = new List<string>();
        Train(2, new RanncOptions { ForcedShape = (2, 1), TracePath = path, TraceStep = 5, Log = line => { lock (lines) lines.Add(line); } }, steps: 2);

        Assert.False(File.Exists(path));
        Assert.Contains(lines, l => l.Contains("no trace written", StringComparison.Ordinal) && l.Contains("step 5", StringComparison.Ordinal));
    }

    private static string TempPath() => Path.Combine(Path.GetTempPath(), $"rannc-trace-{Guid.NewGuid():N}.json");

    /// <summary>Trains the small MLP with SGD on <paramref name="ranks"/> in-process ranks; rank 0's losses.</summary>
    private static double[] Train(int ranks, RanncOptions options, int steps, int batch = 8, string cacheDirectory = "")
    {
        options = options with { PlanCacheDirectory = cacheDirectory, ProfileRepeats = 1, Log = options.Log ?? (_ => { }) };
        var losses = new double[steps];
        RankLauncher.Run(ranks, comm =>
        {
            torch.set_num_threads(1);
            nn.Module model = SeededModels.Create(Task.CreateModel, 5);
            var optimizer = torch.optim.SGD(model.parameters(), 0.1);
            using var rannc = new RanncModule(model, optimizer, options);
            for (int step = 0; step < steps; step++)
            {
                Tensor[] data = Task.CreateBatch(batch, step).Select(t => t.is_floating_point() ? t.to_type(ScalarType.Float64) : t).ToArray();
                optimizer.zero_grad();
                Tensor loss = rannc.forward(data);
                loss.backward();
                optimizer.step();
                if (comm.Rank == 0) losses[step] = loss.item<double>();
            }
        }, new InProcessOptions(Timeout: TimeSpan.FromMinutes(2)));
        return losses;
    }
}

/// <summary>The trace under <c>mpiexec -n 2</c>: ranks are processes, their slices reach rank 0 through MPI.</summary>
[Collection(MpiCollection.Name)]
public sealed class TraceMpiTests
{
    [Fact]
    public void Trace_UnderMpiexec_TwoProcesses_HasEveryActionOfEachRank()
    {
        string path = Path.Combine(Path.GetTempPath(), $"rannc-trace-mpi-{Guid.NewGuid():N}.json");
        try
        {
            // The tied-GPT scenario checks its losses and parameters against plain TorchSharp while it is traced.
            MpiJobResult result = MpiJob.RunWorker(2, "tied-gpt-adam", TimeSpan.FromMinutes(3), new Dictionary<string, string> { ["RANNC_TRACE"] = path });
            Assert.False(result.TimedOut, $"timed out after {result.Elapsed}:\n{result.Output}");
            Assert.True(result.ExitCode == 0, $"exit code {result.ExitCode}:\n{result.Output}");

            TraceChecks.Trace trace = TraceChecks.Check(path);
            Assert.Equal(2, trace.Plan.Stages.Count);
            // The tied weight is summed between the two stages after the schedule, on both tracks of both ranks.
            foreach (int pid in new[] { TraceChecks.Measured, TraceChecks.Predicted })
            {
                for (int rank = 0; rank < 2; rank++)
                    Assert.Contains(trace.Tracks[(pid, rank)], s => s.Name.StartsWith("all-reduce shared gradients", StringComparison.Ordinal));
            }
        }
        finally
        {
            File.Delete(path);
        }
    }
}
