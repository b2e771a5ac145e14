using System.Text.Json;
using Rannc.Mpi.Worker;
using Rannc.Partitioner;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Tests.Zoo;

/// <summary>Two zoo models under <c>mpiexec -n 2</c> (one process per rank) train as plain TorchSharp does.</summary>
[Collection(MpiCollection.Name)]
public sealed class ZooMpiTests
{
    [Theory]
    [InlineData("zoo-resnet", "resnet", "adam")]
    [InlineData("zoo-vgg", "vgg", "sgd")]
    public void UnderMpiexec_MatchesPlainTorchSharp(string scenario, string model, string optimizer)
    {
        ZooModel zoo = model == "resnet" ? ZooCatalog.ResNet : ZooCatalog.Vgg;
        MpiJobResult result = MpiJob.RunWorker(2, scenario, TimeSpan.FromMinutes(3));
        Assert.False(result.TimedOut, $"timed out:\n{result.Output}");
        Assert.True(result.ExitCode == 0, $"exit code {result.ExitCode}:\n{result.Output}");

        Tensor[][] batches = Enumerable.Range(0, ZooScenarios.Steps).Select(step => ZooHarness.BatchOf(zoo, step)).ToArray();
        SampleRange[] slices = zoo.BatchNorm
            ? Enumerable.Range(0, ZooScenarios.MicroBatches).Select(m => new MicroBatchLayout(ZooScenarios.Batch, ZooScenarios.MicroBatches).ReplicaSlice(m, 1, 0)).ToArray()
            : [new SampleRange(0, ZooScenarios.Batch)];
        (double[] losses, Dictionary<string, Tensor> gradients, Dictionary<string, Tensor> parameters) =
            ZooHarness.TrainReference(zoo, batches, slices, optimizer);
        double gradientScale = gradients.Values.Max(g => g.abs().max().item<double>());
        double parameterScale = parameters.Values.Max(p => p.abs().max().item<double>());

        var seen = new HashSet<string>();
        foreach (string output in result.RankOutput)
        {
            string json = string.Concat(output.Split('\n').Where(l => l.StartsWith("rannc-zoo: ", StringComparison.Ordinal)).Select(l => l["rannc-zoo: ".Length..]));
            JsonElement report = JsonDocument.Parse(json).RootElement;
            Assert.Equal(2, report.GetProperty("stages").GetInt32());
            double[] rankLosses = report.GetProperty("losses").EnumerateArray().Select(e => e.GetDouble()).ToArray();
            for (int s = 0; s < losses.Length; s++)
                Assert.True(Math.Abs(rankLosses[s] - losses[s]) <= 1e-9 * Math.Abs(losses[s]), $"step {s}: {losses[s]:R} vs {rankLosses[s]:R}");
            foreach (JsonProperty gradient in report.GetProperty("gradients").EnumerateObject())
                ZooHarness.AssertClose(gradients[gradient.Name], Values(gradient, gradients[gradient.Name]), $"gradient of {gradient.Name}", gradientScale);
            foreach (JsonProperty parameter in report.GetProperty("parameters").EnumerateObject())
            {
                seen.Add(parameter.Name);
                ZooHarness.AssertClose(parameters[parameter.Name], Values(parameter, parameters[parameter.Name]), $"parameter {parameter.Name}", parameterScale);
            }
        }
        Assert.Equal(parameters.Keys.Order(), seen.Order());
    }

    private static Tensor Values(JsonProperty property, Tensor like) =>
        torch.tensor(property.Value.EnumerateArray().Select(e => e.GetDouble()).ToArray(), ScalarType.Float64).reshape(like.shape);
}
