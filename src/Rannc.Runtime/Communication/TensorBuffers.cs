using System.Runtime.CompilerServices;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Communication;

/// <summary>Checks and raw memory access shared by the communicator implementations.</summary>
public static class TensorBuffers
{
    /// <summary>The dtypes tensors may have when they cross ranks (every dtype TorchSharp's CPU backend computes with).</summary>
    public static readonly IReadOnlyList<ScalarType> SupportedTypes =
    [
        ScalarType.Float32, ScalarType.Float64, ScalarType.BFloat16, ScalarType.Float16,
        ScalarType.ComplexFloat32, ScalarType.ComplexFloat64,
        ScalarType.Int64, ScalarType.Int32, ScalarType.Int16, ScalarType.Int8, ScalarType.Byte, ScalarType.Bool,
    ];

    /// <summary>Whether <paramref name="dtype"/> holds integers (Bool excluded): sums wrap, averages would truncate.</summary>
    public static bool IsInteger(ScalarType dtype) =>
        dtype is ScalarType.Int64 or ScalarType.Int32 or ScalarType.Int16 or ScalarType.Int8 or ScalarType.Byte;

    /// <summary>Whether <paramref name="dtype"/> is complex (ComplexFloat32 or ComplexFloat64).</summary>
    public static bool IsComplex(ScalarType dtype) => dtype is ScalarType.ComplexFloat32 or ScalarType.ComplexFloat64;

    /// <summary>Largest user tag (the MPI implementation derives two wire tags from each).</summary>
    public const int MaxTag = (1 << 20) - 1;

    /// <summary>Throws a clear error unless <paramref name="tensor"/> can be sent or received as raw memory.</summary>
    public static void CheckTransferable(Tensor tensor, string operation)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        if (tensor.IsInvalid) throw new ObjectDisposedException(nameof(tensor), $"{operation}: the tensor has been disposed.");
        if (!SupportedTypes.Contains(tensor.dtype))
        {
            throw new ArgumentException(
                $"{operation}: dtype {tensor.dtype} is not supported; use one of {string.Join(", ", SupportedTypes)}.",
                nameof(tensor));
        }
        if (!tensor.is_contiguous())
        {
            throw new ArgumentException(
                $"{operation}: the tensor (shape [{string.Join(", ", tensor.shape)}]) is not contiguous; pass tensor.contiguous().",
                nameof(tensor));
        }
        if (tensor.device_type != DeviceType.CPU)
        {
            throw new ArgumentException($"{operation}: only CPU tensors are supported here (got {tensor.device}).", nameof(tensor));
        }
    }

    /// <summary>Checks the tensors of an all-reduce and that <paramref name="op"/> is defined for their dtypes.</summary>
    public static void CheckReducible(IReadOnlyList<Tensor> tensors, ReduceOp op)
    {
        ArgumentNullException.ThrowIfNull(tensors);
        foreach (Tensor t in tensors)
        {
            CheckTransferable(t, "AllReduce");
            if (t.dtype == ScalarType.Bool && op != ReduceOp.Max)
                throw new ArgumentException($"AllReduce {op} is not defined for Bool tensors; use Max (logical or).");
            if (IsInteger(t.dtype) && op == ReduceOp.Average)
                throw new ArgumentException($"AllReduce Average needs a floating-point tensor; {t.dtype} would truncate.");
            if (IsComplex(t.dtype) && op == ReduceOp.Max)
                throw new ArgumentException($"AllReduce Max is not defined for {t.dtype} tensors (complex numbers have no order).");
        }
    }

    /// <summary>The type reductions run in: 16-bit floats are summed in float32 (MPI has no 16-bit float sum). Complex
    /// tensors are summed as their real and imaginary parts (<c>view_as_real</c>), which is the same sum.</summary>
    public static ScalarType ReductionType(ScalarType dtype) =>
        dtype is ScalarType.Float16 or ScalarType.BFloat16 ? ScalarType.Float32 : dtype;

    /// <summary>The checks of every send and receive: the tensor, the peer's rank and the tag.</summary>
    public static void CheckPointToPoint(Tensor tensor, int peer, int size, int tag, string operation)
    {
        CheckTransferable(tensor, operation);
        CheckPeer(peer, size, nameof(peer));
        CheckTag(tag);
    }

    public static void CheckTag(int tag)
    {
        if (tag < 0 || tag > MaxTag) throw new ArgumentOutOfRangeException(nameof(tag), tag, $"Tags must be in [0, {MaxTag}].");
    }

    public static void CheckPeer(int peer, int size, string name)
    {
        if (peer < 0 || peer >= size) throw new ArgumentOutOfRangeException(name, peer, $"Rank must be in [0, {size}).");
    }

    /// <summary>The tensor's storage bytes (a view over native memory; the tensor must be contiguous).</summary>
    public static Span<byte> Bytes(Tensor tensor) => tensor.numel() == 0 ? Span<byte>.Empty : tensor.bytes;

    /// <summary>Stable address of the tensor's storage (native memory does not move); null for an empty tensor.</summary>
    public static unsafe IntPtr Address(Tensor tensor)
    {
        Span<byte> bytes = Bytes(tensor);
        return bytes.IsEmpty ? IntPtr.Zero : (IntPtr)Unsafe.AsPointer(ref bytes[0]);
    }

    public static long ByteCount(Tensor tensor) => tensor.numel() * tensor.ElementSize;

    /// <summary>A readable description for error messages: "float32[3, 4]".</summary>
    public static string Describe(ScalarType dtype, long elements) => $"{dtype} with {elements} element(s)";
}
