using System.Text.Json;
using Rannc.Communication;
using Rannc.Execution;
using Rannc.Tests.Zoo;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Mpi.Worker;

/// <summary>
/// Zoo models trained under mpiexec (one process per rank): 3 steps in float64 on a forced 2-stage plan (or the plan the
/// test wrote, through <c>RANNC_LOAD_DEPLOYMENT</c>); the test
/// compares them with plain TorchSharp training in its own process. Every rank prints its report as lines starting "rannc-zoo: "
/// whose rest, joined, is a JSON object with the losses and its own parameters and last gradients.
/// </summary>
public static class ZooScenarios
{
    public const int Steps = 3;
    public const int Batch = 8;
    public const int MicroBatches = 2;

    public static readonly IReadOnlyDictionary<string, Action<ICommunicator>> All = new Dictionary<string, Action<ICommunicator>>
    {
        ["zoo-resnet"] = comm => Train(comm, () => new ZooResNet([2, 1]), ZooData.Images, classes: 5, "adam", "1f1b"),
        ["zoo-vgg"] = comm => Train(comm, () => new ZooVgg([4, 0, 6, 6, 0]), ZooData.Images, classes: 5, "sgd", "gpipe"),
        // The test passes a hand-made cut (RANNC_LOAD_DEPLOYMENT) that puts complex, Tensor[] and integer values on the boundary.
        ["zoo-rotary"] = comm => Train(comm, () => new ZooRotaryNet(classes: 3),
            (batch, step) => ZooData.Vectors(batch, ZooRotaryNet.Tokens * ZooRotaryNet.Features, step), classes: 3, "adam", "1f1b"),
    };

    public static optim.Optimizer Optimizer(nn.Module model, string name) => name == "adam"
        ? torch.optim.Adam(model.parameters(), lr: 0.01)
        : torch.optim.SGD(model.parameters(), learningRate: 0.1);

    private static void Train(ICommunicator comm, Func<nn.Module> create, Func<int, int, Tensor> input, int classes, string optimizerName, string schedule)
    {
        nn.Module model = ZooData.Seeded(create);
        optim.Optimizer optimizer = Optimizer(model, optimizerName);
        using var rannc = new RanncModule(model, optimizer, comm, new RanncOptions
        {
            ForcedReplicas = [1, 1],
            Schedule = RanncOptions.ParseSchedule(schedule),
            MicroBatches = MicroBatches,
            PlanCacheDirectory = "",
            ProfileRepeats = 1,
            Log = _ => { },
        });
        var losses = new List<double>();
        var gradients = new Dictionary<string, double[]>();
        for (int step = 0; step < Steps; step++)
        {
            optimizer.zero_grad();
            Tensor loss = rannc.forward(input(Batch, step), ZooData.Labels(Batch, classes, step));
            loss.backward();
            if (step == Steps - 1)
            {
                gradients = model.named_parameters().Where(p => p.parameter.grad is not null)
                    .ToDictionary(p => p.name, p => p.parameter.grad!.detach().flatten().data<double>().ToArray());
            }
            optimizer.step();
            losses.Add(loss.item<double>());
        }
        var owned = rannc.Plan!.RoleOf(comm.Rank) is { } role
            ? rannc.Plan.Stages[role.Stage].NodeIds.SelectMany(n => rannc.Graph!.Nodes[n].Parameters).ToHashSet()
            : [];
        var parameters = model.named_parameters().Where(p => owned.Contains(p.name))
            .ToDictionary(p => p.name, p => p.parameter.detach().flatten().data<double>().ToArray());
        // mpiexec breaks long output lines apart: the report goes out in short pieces, one line each, in order.
        string json = JsonSerializer.Serialize(new { losses, gradients, parameters, stages = rannc.Plan.Stages.Count });
        for (int start = 0; start < json.Length; start += 200) Console.WriteLine("rannc-zoo: " + json.Substring(start, Math.Min(200, json.Length - start)));
    }
}
