using System.Diagnostics;
using Rannc.Communication;
using Rannc.Execution;
using Rannc.Execution.Checks;
using Rannc.Samples;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Bench;

/// <summary>
/// Cost of the per-step agreement check (fingerprints of every rank's inputs, all-gathered and compared) next to a
/// plain TorchSharp training step of the same BERT batch, measured in the same run.
/// </summary>
public static class StepAgreementBenchmark
{
    public static int Run(string[] args)
    {
        int layers = args.Length > 0 ? int.Parse(args[0]) : 4;
        int hidden = args.Length > 1 ? int.Parse(args[1]) : 256;
        int batch = args.Length > 2 ? int.Parse(args[2]) : 32;
        SampleTask task = SampleTasks.Bert(SampleTasks.BertConfig(layers, hidden), sequenceLength: 64, maskedPerSequence: 8);
        Console.WriteLine($"# Step agreement check, BERT sample batch ({batch} × 64 token ids and labels), {Environment.ProcessorCount} cores, {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC");
        Tensor[] data = task.CreateBatch(batch, 0);

        torch.manual_seed(7);
        nn.Module model = task.CreateModel();
        var optimizer = torch.optim.Adam(model.parameters());
        var steps = new List<double>();
        for (int i = 0; i < 6; i++)
        {
            using var scope = torch.NewDisposeScope();
            var clock = Stopwatch.StartNew();
            optimizer.zero_grad();
            SampleTask.Forward(model, data).backward();
            optimizer.step();
            steps.Add(clock.Elapsed.TotalMilliseconds);
        }

        double[] checks = InProcessLauncher.Run(2, comm =>
        {
            var times = new List<double>();
            for (int i = 0; i < 200; i++)
            {
                var clock = Stopwatch.StartNew();
                StepAgreement.Check(comm, StepAgreement.Of(data, training: true, missedBackward: null, hashContents: true), i);
                times.Add(clock.Elapsed.TotalMilliseconds);
            }
            return Median(times.Skip(10).ToList());
        });
        double stepMs = Median(steps.Skip(1).ToList());
        Console.WriteLine();
        Console.WriteLine("| what | median | ratio to the step |");
        Console.WriteLine("|---|---|---|");
        Console.WriteLine($"| plain TorchSharp training step | {stepMs:0.0} ms | 1.000 |");
        Console.WriteLine($"| agreement check on 2 in-process ranks (hash + all-gather + compare) | {checks[0]:0.000} ms | {checks[0] / stepMs:0.0000} |");
        return 0;
    }

    private static double Median(List<double> values)
    {
        values.Sort();
        return values[values.Count / 2];
    }
}
