using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Rannc.Partitioner;
using PlanningGraph = Rannc.Partitioner.Graph;

namespace Rannc.Planning;

/// <summary>
/// Plans cached across runs. The key covers what the plan depends on that is known before profiling (graph structure
/// and value sizes, the cluster, the options, the Rannc version, the kind of device), so a second run with the
/// same inputs loads its plan without profiling. Measured times are left out on purpose: they differ a little from
/// run to run, and a plan made with last run's times is as good. Files are written atomically; a file that cannot
/// be read or does not fit the inputs is ignored with a warning.
/// </summary>
internal sealed class DeploymentStore(string directory, Action<string> warn)
{
    private sealed record Deployment(string Key, PartitionPlan Plan);

    public static string Key(PlanningGraph graph, Cluster cluster, PlanningOptions options, string deviceKind)
    {
        // The partitioner's key over the same inputs with costs left out (every node costs zero).
        var noCosts = new CostTable(graph.Nodes.Select(_ => new NodeCost(0, 0, 0, 0)).ToList());
        string inputs = PlanCacheKey.Compute(graph, noCosts, cluster, options);
        return Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes($"rannc-deployment|{inputs}|{deviceKind}")));
    }

    public string PathFor(string key) => Path.Combine(directory, $"deployment-{key}.json");

    /// <summary>The cached plan for <paramref name="key"/>, or null (with a warning when a file was there but unusable).</summary>
    public PartitionPlan? TryLoad(string key, PlanningGraph graph, Cluster cluster, PlanningOptions options)
    {
        string path = PathFor(key);
        return File.Exists(path) ? Read(path, key, graph, cluster, options, warn) : null;
    }

    public void Save(string key, PartitionPlan plan) => Write(PathFor(key), key, plan);

    /// <summary>Reads a deployment file; null with a warning when it is corrupt, for other inputs, or invalid.</summary>
    public static PartitionPlan? Read(string path, string? expectedKey, PlanningGraph graph, Cluster cluster, PlanningOptions options, Action<string> warn)
    {
        Deployment? deployment;
        try
        {
            deployment = JsonSerializer.Deserialize<Deployment>(File.ReadAllText(path));
        }
        catch (Exception e) when (e is JsonException or IOException or NotSupportedException)
        {
            warn($"Ignoring plan file {path}: it cannot be read ({e.Message}).");
            return null;
        }
        if (deployment?.Plan is null)
        {
            warn($"Ignoring plan file {path}: it holds no plan.");
            return null;
        }
        if (expectedKey is not null && deployment.Key != expectedKey)
        {
            warn($"Ignoring plan file {path}: it was made for other inputs ({deployment.Key}).");
            return null;
        }
        var noCosts = new CostTable(graph.Nodes.Select(_ => new NodeCost(0, 0, 0, 0)).ToList());
        IReadOnlyList<string> problems;
        try
        {
            problems = deployment.Plan.FindViolations(graph, noCosts, cluster, options);
        }
        catch (Exception e) when (e is NullReferenceException or ArgumentException or IndexOutOfRangeException or InvalidOperationException)
        {
            // A hand-edited or truncated file can leave nulls or out-of-range ids where the plan needs values.
            warn($"Ignoring plan file {path}: it is malformed ({e.GetType().Name}: {e.Message}).");
            return null;
        }
        if (problems.Count > 0)
        {
            warn($"Ignoring plan file {path}: {string.Join(" ", problems)}");
            return null;
        }
        return deployment.Plan;
    }

    /// <summary>Writes a deployment file atomically (temporary file, then rename).</summary>
    public static void Write(string path, string key, PartitionPlan plan)
    {
        string folder = Path.GetDirectoryName(Path.GetFullPath(path))!;
        Directory.CreateDirectory(folder);
        string temporary = Path.Combine(folder, $".{Path.GetFileName(path)}.{Guid.NewGuid():N}.tmp");
        try
        {
            File.WriteAllText(temporary, JsonSerializer.Serialize(new Deployment(key, plan), new JsonSerializerOptions { WriteIndented = true }));
            File.Move(temporary, path, overwrite: true);
        }
        finally
        {
            File.Delete(temporary);
        }
    }
}
