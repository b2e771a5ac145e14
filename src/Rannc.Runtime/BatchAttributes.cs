namespace Rannc;

/// <summary>
/// Declares which dimension of a <c>forward()</c> argument holds the samples of the batch (default 0), e.g.
/// <c>[Batch(1)] Tensor src</c> for a sequence-first <c>[seq, batch, d]</c> input. Rannc slices the argument along that
/// dimension for replicas and micro-batches. <see cref="Execution.RanncOptions.InputBatching"/> overrides it.
/// </summary>
[AttributeUsage(AttributeTargets.Parameter, Inherited = false, AllowMultiple = false)]
public sealed class BatchAttribute(int dim) : Attribute
{
    /// <summary>The batch dimension (negative counts from the end, as in TorchSharp).</summary>
    public int Dim { get; } = dim;
}

/// <summary>
/// Declares a <c>forward()</c> argument that every sample shares (an attention mask <c>[seq, seq]</c>, a lookup table):
/// it is passed whole to every slice, never sliced.
/// </summary>
[AttributeUsage(AttributeTargets.Parameter, Inherited = false, AllowMultiple = false)]
public sealed class NotBatchedAttribute : Attribute
{
}

/// <summary>
/// Declares a <c>forward()</c> argument that holds, per sample, where that sample's items start in another argument
/// (<c>EmbeddingBag</c>'s offsets into its flat token tensor): <c>[OffsetsOf("tokens")] Tensor offsets</c>. A slice of
/// samples gets their items of the flat argument and their offsets re-based to start at 0. The offsets are one start per
/// sample (the form without a last offset), starting at 0 and never decreasing.
/// </summary>
[AttributeUsage(AttributeTargets.Parameter, Inherited = false, AllowMultiple = false)]
public sealed class OffsetsOfAttribute(string input) : Attribute
{
    /// <summary>The name of the flat <c>forward()</c> argument the offsets point into.</summary>
    public string Input { get; } = input;
}
