namespace Rannc.Execution.Checkpoints;

/// <summary>
/// What a checkpoint folder holds: every tensor (parameters, buffers) and every optimizer state blob, with the file it
/// is in, where, its size and an XxHash3 of its bytes. Written last, so a folder with a readable manifest is complete.
/// </summary>
/// <param name="Format">Layout version of the folder (1).</param>
/// <param name="Sequence">Increases with every checkpoint saved into the same root folder.</param>
/// <param name="CreatedUtc">When it was written (ISO 8601).</param>
/// <param name="WorldSize">Ranks of the run that wrote it.</param>
/// <param name="Plan">The plan it was written under, as the plan summary's first line.</param>
/// <param name="Optimizer">The optimizer's type name, or null when no optimizer state was written.</param>
/// <param name="Entries">Every tensor and optimizer state blob.</param>
internal sealed record CheckpointManifest(
    int Format, long Sequence, string CreatedUtc, int WorldSize, string Plan, string? Optimizer, IReadOnlyList<CheckpointEntry> Entries)
{
    public const string FileName = "manifest.json";
}

/// <summary>One stored item.</summary>
/// <param name="Name">Its name in <c>state_dict()</c> (tensors) or <c>named_parameters()</c> (optimizer state).</param>
/// <param name="Kind"><c>tensor</c> or <c>optimizer</c>.</param>
/// <param name="DType">Element type (tensors only).</param>
/// <param name="Shape">Shape (tensors only).</param>
/// <param name="File">The rank file that holds it.</param>
/// <param name="Offset">Byte offset in that file.</param>
/// <param name="Length">Byte length.</param>
/// <param name="Hash">XxHash3 of the bytes, hexadecimal.</param>
internal sealed record CheckpointEntry(
    string Name, string Kind, string? DType, long[]? Shape, string File, long Offset, long Length, string Hash)
{
    public const string TensorKind = "tensor";
    public const string OptimizerKind = "optimizer";
}
