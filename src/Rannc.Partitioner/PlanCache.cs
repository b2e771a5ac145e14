using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace Rannc.Partitioner;

/// <summary>
/// Canonical JSON of plans: camelCase names in declaration order, enums as names, numbers in their shortest
/// round-trip form, two-space indentation, a final newline. The same plan always gives the same bytes.
/// </summary>
public static class PlanJson
{
    private static readonly JsonSerializerOptions s_indented = Create(indented: true);
    private static readonly JsonSerializerOptions s_compact = Create(indented: false);

    /// <summary>The canonical text of <paramref name="plan"/>.</summary>
    public static string Serialize(PartitionPlan plan) => JsonSerializer.Serialize(plan, s_indented) + "\n";

    /// <summary>Reads a plan written by <see cref="Serialize"/>; throws <see cref="JsonException"/> on malformed text.</summary>
    public static PartitionPlan Deserialize(string json) =>
        JsonSerializer.Deserialize<PartitionPlan>(json, s_indented) ?? throw new JsonException("The plan file holds null.");

    /// <summary>Compact canonical JSON of any input record (used for the cache key).</summary>
    internal static byte[] CompactBytes<T>(T value) => JsonSerializer.SerializeToUtf8Bytes(value, s_compact);

    private static JsonSerializerOptions Create(bool indented)
    {
        var options = new JsonSerializerOptions
        {
            WriteIndented = indented,
            IndentSize = 2,
            PropertyNamingPolicy = JsonNamingPolicy.CamelCase,
            RespectNullableAnnotations = true,
            UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow,
        };
        options.Converters.Add(new JsonStringEnumConverter());
        options.MakeReadOnly(populateMissingResolver: true);
        return options;
    }
}

/// <summary>
/// The plan-cache key: SHA-256 (lowercase hex) of the compact canonical JSON of the graph structure, the cost
/// table, the cluster, the options, the Rannc assembly version and <see cref="FormatVersion"/>. Stable across
/// processes and machines (never <c>GetHashCode</c>).
/// </summary>
public static class PlanCacheKey
{
    /// <summary>Bumped whenever the search, the model or the plan format changes meaning.</summary>
    public const int FormatVersion = 4;

    private sealed record KeyMaterial(
        string RanncVersion, int FormatVersion, Graph Graph, CostTable Costs, Cluster Cluster, PlanningOptions Options);

    /// <summary>The Rannc version that goes into every key.</summary>
    public static string RanncVersion { get; } =
        typeof(PlanCacheKey).Assembly.GetName().Version?.ToString() ?? "unknown";

    /// <summary>The key of these planning inputs.</summary>
    public static string Compute(Graph graph, CostTable costs, Cluster cluster, PlanningOptions options)
    {
        byte[] material = PlanJson.CompactBytes(new KeyMaterial(RanncVersion, FormatVersion, graph, costs, cluster, options));
        return Convert.ToHexStringLower(SHA256.HashData(material));
    }
}

/// <summary>How a cache lookup went.</summary>
public enum PlanCacheStatus
{
    /// <summary>A valid plan for these inputs was found.</summary>
    Hit,

    /// <summary>No file for this key.</summary>
    Miss,

    /// <summary>A file exists but cannot be read as a plan; treated as a miss.</summary>
    Corrupt,

    /// <summary>A file exists but its plan is for other inputs or breaks an invariant; treated as a miss.</summary>
    Stale,
}

/// <summary>The result of <see cref="FilePlanStore.TryLoad"/>: <see cref="Plan"/> is set only on a hit.</summary>
public sealed record PlanCacheLookup(PlanCacheStatus Status, PartitionPlan? Plan, string? Warning);

/// <summary>
/// Plans on disk, one canonical JSON file per key. Writes go to a temporary file in the same folder that is
/// then renamed over the target, so readers never see half a plan. A file that cannot be read or does not
/// match the inputs is a miss with a warning (sent to the optional callback), never a plan.
/// </summary>
/// <param name="directory">Folder of the cache (created on first save).</param>
/// <param name="warn">Receives a sentence for each corrupt or stale file; may be null.</param>
public sealed class FilePlanStore(string directory, Action<string>? warn = null)
{
    /// <summary>The file of <paramref name="key"/>.</summary>
    public string PathFor(string key)
    {
        if (key.Length != 64 || !key.All(char.IsAsciiHexDigitLower))
        {
            throw new ArgumentException($"'{key}' is not a plan-cache key (64 lowercase hex digits).", nameof(key));
        }

        return Path.Combine(directory, $"plan-{key}.json");
    }

    /// <summary>Looks up the plan of these inputs.</summary>
    public PlanCacheLookup TryLoad(Graph graph, CostTable costs, Cluster cluster, PlanningOptions options)
    {
        string key = PlanCacheKey.Compute(graph, costs, cluster, options);
        string path = PathFor(key);
        if (!File.Exists(path))
        {
            return new PlanCacheLookup(PlanCacheStatus.Miss, null, null);
        }

        PartitionPlan plan;
        try
        {
            plan = PlanJson.Deserialize(File.ReadAllText(path, Encoding.UTF8));
        }
        catch (Exception e) when (e is JsonException or IOException or NotSupportedException or ArgumentException)
        {
            return Warn(PlanCacheStatus.Corrupt, $"Ignoring the cached plan {path}: it cannot be read ({e.Message}).");
        }

        if (plan.Fingerprint != key)
        {
            return Warn(PlanCacheStatus.Stale, $"Ignoring the cached plan {path}: it was made for inputs {plan.Fingerprint}, not {key}.");
        }

        IReadOnlyList<string> problems = plan.FindViolations(graph, costs, cluster, options);
        if (problems.Count > 0)
        {
            return Warn(PlanCacheStatus.Stale, $"Ignoring the cached plan {path}: {string.Join(" ", problems)}");
        }

        return new PlanCacheLookup(PlanCacheStatus.Hit, plan, null);
    }

    /// <summary>Stores <paramref name="plan"/> under its <see cref="PartitionPlan.Fingerprint"/>, atomically.</summary>
    public void Save(PartitionPlan plan)
    {
        string path = PathFor(plan.Fingerprint);
        Directory.CreateDirectory(directory);
        string temporary = Path.Combine(directory, $".plan-{plan.Fingerprint}.{Guid.NewGuid():N}.tmp");
        try
        {
            File.WriteAllText(temporary, PlanJson.Serialize(plan), new UTF8Encoding(encoderShouldEmitUTF8Identifier: false));
            File.Move(temporary, path, overwrite: true);
        }
        finally
        {
            File.Delete(temporary);
        }
    }

    /// <summary>The cached plan of these inputs, or a new one from <see cref="Planner.Plan"/> that is then saved.</summary>
    public PartitionPlan GetOrPlan(Graph graph, CostTable costs, Cluster cluster, PlanningOptions options)
    {
        PlanCacheLookup lookup = TryLoad(graph, costs, cluster, options);
        if (lookup.Plan is { } cached)
        {
            return cached;
        }

        PartitionPlan plan = Planner.Plan(graph, costs, cluster, options);
        Save(plan);
        return plan;
    }

    private PlanCacheLookup Warn(PlanCacheStatus status, string message)
    {
        warn?.Invoke(message);
        return new PlanCacheLookup(status, null, message);
    }
}
