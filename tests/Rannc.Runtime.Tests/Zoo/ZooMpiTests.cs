using System.Text.Json;
using Rannc.Mpi.Worker;
using Rannc.Partitioner;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Tests.Zoo;

/// <summary>
/// Zoo models under <c>mpiexec -n 2</c> (one process per rank) train as plain TorchSharp does: two on the planner's cut, and
/// the rotary model on a hand-made cut that carries complex128, Tensor[], bool, integer, float16 and bfloat16 values.
/// </summary>
[Collection(MpiCollection.Name)]
public sealed class ZooMpiTests
{
    [Theory]
    [InlineData("zoo-resnet", "resnet", "adam", "")]
    [InlineData("zoo-vgg", "vgg", "sgd", "")]
    [InlineData("zoo-rotary", "rotary", "adam", "index_1")]
    public void UnderMpiexec_MatchesPlainTorchSharp(string scenario, string model, string optimizer, string cutBefore)
    {
        ZooModel zoo = model switch
        {
            "resnet" => ZooCatalog.ResNet,
            "vgg" => ZooCatalog.Vgg,
            _ => ZooRotaryTests.Rotary,
        };
        string? deployment = cutBefore.Length > 0
            ? ZooHarness.WriteDeployment(zoo, [1, 1], [cutBefore], "1f1b", insideSequential: false, inputBatching: null)
            : null;
        MpiJobResult result;
        try
        {
            result = MpiJob.RunWorker(2, scenario, TimeSpan.FromMinutes(3),
                deployment is null ? null : new Dictionary<string, string> { ["RANNC_LOAD_DEPLOYMENT"] = deployment });
        }
        finally
        {
            if (deployment is not null) File.Delete(deployment);
        }
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
