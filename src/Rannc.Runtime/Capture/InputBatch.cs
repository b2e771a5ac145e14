namespace Rannc.Capture;

/// <summary>How a <c>forward()</c> argument holds the samples of the batch.</summary>
public enum InputBatchKind
{
    /// <summary>The samples lie along <see cref="InputBatch.Dim"/>; a slice narrows that dimension.</summary>
    Along,
    /// <summary>Every sample shares the argument (a mask, a table, a number): every slice gets it whole.</summary>
    NotBatched,
    /// <summary>One start offset per sample into the flat argument <see cref="InputBatch.OffsetsInto"/>; a slice re-bases them.</summary>
    Offsets,
}

/// <summary>
/// How one <c>forward()</c> argument is split into slices of samples: declared on the parameter (<c>[Batch(1)]</c>,
/// <c>[NotBatched]</c>, <c>[OffsetsOf("tokens")]</c>, read by the generator) or given in
/// <see cref="Execution.RanncOptions.InputBatching"/>. Tensors default to dimension 0; other values are not batched.
/// </summary>
public sealed record InputBatch(InputBatchKind Kind, int Dim = 0, string? OffsetsInto = null)
{
    /// <summary>Samples along dimension <paramref name="dim"/>.</summary>
    public static InputBatch Along(int dim) => new(InputBatchKind.Along, dim);

    /// <summary>Shared by every sample: passed whole to every slice.</summary>
    public static InputBatch NotBatched { get; } = new(InputBatchKind.NotBatched);

    /// <summary>Per-sample start offsets into the flat argument named <paramref name="input"/>.</summary>
    public static InputBatch OffsetsOf(string input) => new(InputBatchKind.Offsets, 0, input);

    public override string ToString() => Kind switch
    {
        InputBatchKind.Along => $"batch along dimension {Dim}",
        InputBatchKind.NotBatched => "not batched",
        _ => $"offsets into '{OffsetsInto}'",
    };
}
