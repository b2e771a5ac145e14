using System.Diagnostics;
using System.Globalization;
using Rannc.Capture;
using Rannc.Samples.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Bench;

/// <summary>
/// Interleaved A/B timing of forward+backward through the captured graph against calling forward() directly, on the
/// same BERT configuration as <see cref="CaptureBenchmarks"/>. On a shared machine the background load drifts during a
/// BenchmarkDotNet run, which measures one method after the other; alternating the two calls gives both the same load,
/// so the median of per-pair ratios and the ratio of minimums stay meaningful.
/// </summary>
public static class CaptureOverheadProbe
{
    public static int Run(string[] args)
    {
        var pairs = args.Length > 0 ? int.Parse(args[0], CultureInfo.InvariantCulture) : 40;
        var config = new BertConfig(
            VocabularySize: 2000, HiddenSize: 256, Layers: 4, Heads: 4, IntermediateSize: 1024, MaxPositions: 128, DropoutProbability: 0.1);
        torch.manual_seed(0);
        var model = new BertForMaskedLM(config);
        var graph = CapturedGraph.Build(model);
        var ids = torch.randint(config.VocabularySize, [8, 64], dtype: ScalarType.Int64);
        var labels = torch.randint(config.VocabularySize, [8, 64], dtype: ScalarType.Int64);

        double Direct()
        {
            using var scope = torch.NewDisposeScope();
            model.zero_grad();
            var loss = model.forward(ids, labels);
            loss.backward();
            return loss.item<float>();
        }

        double Captured()
        {
            using var scope = torch.NewDisposeScope();
            model.zero_grad();
            var loss = (Tensor)graph.Execute(ids, labels)[0]!;
            loss.backward();
            return loss.item<float>();
        }

        for (var i = 0; i < 5; i++)
        {
            Direct();
            Captured();
        }
        var direct = new List<double>();
        var captured = new List<double>();
        var ratios = new List<double>();
        var clock = new Stopwatch();
        for (var i = 0; i < pairs; i++)
        {
            // alternate which one goes first, so neither always runs on a warmer cache
            var capturedFirst = i % 2 == 1;
            var first = capturedFirst ? Time(Captured) : Time(Direct);
            var second = capturedFirst ? Time(Direct) : Time(Captured);
            var (d, c) = capturedFirst ? (second, first) : (first, second);
            direct.Add(d);
            captured.Add(c);
            ratios.Add(c / d);
        }

        double Time(Func<double> run)
        {
            clock.Restart();
            run();
            return clock.Elapsed.TotalMilliseconds;
        }

        Console.WriteLine($"BERT (hidden {config.HiddenSize}, {config.Layers} layers, batch 8 x 64 tokens), {graph.Nodes.Count} graph nodes, {pairs} interleaved pairs");
        Console.WriteLine($"  forward()+backward        median {Median(direct):F1} ms   min {direct.Min():F1} ms");
        Console.WriteLine($"  captured graph+backward   median {Median(captured):F1} ms   min {captured.Min():F1} ms");
        Console.WriteLine($"  overhead: median of pair ratios {(Median(ratios) - 1) * 100:+0.0;-0.0}%, ratio of minimums {(captured.Min() / direct.Min() - 1) * 100:+0.0;-0.0}%");
        return 0;
    }

    private static double Median(List<double> values)
    {
        var sorted = values.Order().ToList();
        return sorted.Count % 2 == 1 ? sorted[sorted.Count / 2] : (sorted[(sorted.Count / 2) - 1] + sorted[sorted.Count / 2]) / 2;
    }
}
