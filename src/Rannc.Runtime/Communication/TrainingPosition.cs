namespace Rannc.Communication;

/// <summary>
/// Where in training this rank is ("step 12, stage 1 replica 0, forward of micro-batch 3"), set by the runtime
/// around its transfers and collectives so that watchdog and leave messages say it. It belongs to the rank: it
/// flows with the rank's thread and the tasks that thread starts, like <see cref="AmbientCommunicator.Current"/>.
/// </summary>
internal static class TrainingPosition
{
    private static readonly AsyncLocal<string?> s_current = new();

    /// <summary>This rank's position, or null outside any step.</summary>
    public static string? Current => s_current.Value;

    /// <summary>
    /// Adds <paramref name="detail"/> to the position (after the enclosing one: "step 3" then "stage 0 replica 1, …")
    /// until the returned scope is disposed.
    /// </summary>
    public static Scope Enter(string detail)
    {
        string? previous = s_current.Value;
        s_current.Value = previous is null ? detail : $"{previous}, {detail}";
        return new Scope(previous);
    }

    /// <summary>Replaces the position with <paramref name="position"/> (a step resumed later, e.g. its backward pass).</summary>
    public static Scope Resume(string? position)
    {
        string? previous = s_current.Value;
        s_current.Value = position;
        return new Scope(previous);
    }

    /// <summary><paramref name="operation"/>, followed by where in training it happens when that is known.</summary>
    public static string Describe(string operation) => Current is { } position ? $"{operation} during {position}" : operation;

    internal readonly struct Scope(string? previous) : IDisposable
    {
        public void Dispose() => s_current.Value = previous;
    }
}
