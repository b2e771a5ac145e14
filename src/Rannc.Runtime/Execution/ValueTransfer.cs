using Rannc.Communication;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Execution;

/// <summary>
/// Sends graph values (tensors, shape arrays, scalars) between ranks without the receiver knowing their shape in
/// advance: a fixed 12-number header (kind, dtype, rank, dims) goes first, then the data. Stage boundaries carry
/// activations whose batch dimension varies with the micro-batch, and small shape-derived values, so both sides
/// agree on the shape this way instead of through a separate protocol. An array of tensors (<c>chunk</c>'s result) is
/// a header with its length followed by each tensor as a value of its own, on the same tag (messages between two
/// ranks on one tag arrive in the order they were sent, in both communicators).
/// </summary>
internal static class ValueTransfer
{
    private const int MaxDims = 8;
    private const int HeaderLength = 4 + MaxDims;

    private enum ValueKind : long
    {
        Tensor = 0,
        Shape = 1,
        Int64 = 2,
        Int32 = 3,
        Float64 = 4,
        Boolean = 5,
        Float32 = 6,
        Device = 7,
        DType = 8,
        TensorArray = 9,
    }

    /// <summary>Starts sending <paramref name="value"/>; the returned requests keep its tensors alive until done.</summary>
    public static IReadOnlyList<ICommRequest> StartSend(ICommunicator comm, object? value, int destination, int tag)
    {
        if (value is Tensor[] array)
        {
            var arrayHeader = new long[HeaderLength];
            arrayHeader[0] = (long)ValueKind.TensorArray;
            arrayHeader[3] = array.Length;
            var requests = new List<ICommRequest> { comm.StartSend(torch.tensor(arrayHeader), destination, tag) };
            foreach (Tensor element in array) requests.AddRange(StartSend(comm, element, destination, tag));
            return requests;
        }
        (ValueKind kind, Tensor data) = Encode(value);
        var header = new long[HeaderLength];
        header[0] = (long)kind;
        header[1] = (long)data.dtype;
        header[2] = data.dim();
        if (data.dim() > MaxDims) throw new NotSupportedException($"Tensors with more than {MaxDims} dimensions cannot cross stages.");
        for (int d = 0; d < data.dim(); d++) header[4 + d] = data.shape[d];
        Tensor headerTensor = torch.tensor(header);
        return [comm.StartSend(headerTensor, destination, tag), comm.StartSend(data, destination, tag)];
    }

    /// <summary>Receives a value sent by <see cref="StartSend"/>.</summary>
    public static object Receive(ICommunicator comm, int source, int tag)
    {
        using Tensor header = torch.empty(HeaderLength, ScalarType.Int64);
        comm.Receive(header, source, tag);
        long[] h = header.data<long>().ToArray();
        var kind = (ValueKind)h[0];
        if (kind == ValueKind.TensorArray)
        {
            var array = new Tensor[h[3]];
            for (int i = 0; i < array.Length; i++)
            {
                array[i] = Receive(comm, source, tag) as Tensor
                    ?? throw new CommunicationException($"Element {i} of an array of tensors from rank {source} (tag {tag}) is not a tensor.");
            }
            return array;
        }
        long[] shape = h.AsSpan(4, (int)h[2]).ToArray();
        Tensor data = torch.empty(shape, (ScalarType)h[1]);
        comm.Receive(data, source, tag);
        return Decode(kind, data);
    }

    /// <summary>Bytes of a value's data on the wire (the fixed header not counted), for the trace.</summary>
    public static long PayloadBytes(object? value) => value switch
    {
        Tensor t => t.numel() * t.element_size(),
        Tensor[] array => array.Sum(t => t.numel() * t.element_size()),
        long[] shape => shape.Length * sizeof(long),
        Device => 2 * sizeof(long),
        null => 0,
        _ => sizeof(long),
    };

    /// <summary>
    /// Whether a graph value of this kind can be sent between stages: tensors, arrays of tensors (the result of
    /// <c>chunk</c> or <c>split</c>; tuples of tensors are separate values already), numbers, booleans, shapes, devices
    /// and dtypes. Other objects cannot.
    /// </summary>
    public static bool CanCross(Capture.CapturedValue value) => value.Kind switch
    {
        Capture.ValueKind.Tensor or Capture.ValueKind.Scalar => true,
        _ => value.TypeName is "long[]" or "global::TorchSharp.torch.Device" or "global::TorchSharp.torch.ScalarType"
            || value.TypeName.EndsWith("TorchSharp.torch.Device", StringComparison.Ordinal)
            || value.TypeName.EndsWith("TorchSharp.torch.ScalarType", StringComparison.Ordinal)
            || value.TypeName.EndsWith("TorchSharp.torch.Tensor[]", StringComparison.Ordinal),
    };

    /// <summary>
    /// Why a value of a kind that <see cref="CanCross"/> cannot be sent as measured (a dtype the communicators do not
    /// carry, too many dimensions), or null when it can.
    /// </summary>
    public static string? WhyNotSendable(Capture.ValueMeasurement measured)
    {
        foreach (Capture.ValueMeasurement tensor in measured.Elements ?? [measured])
        {
            if (tensor.DType is ScalarType dtype && !TensorBuffers.SupportedTypes.Contains(dtype))
                return $"its {dtype} tensor cannot travel between stages (supported: {string.Join(", ", TensorBuffers.SupportedTypes)})";
            if (tensor.Shape is { Length: > MaxDims } shape)
                return $"its tensor has {shape.Length} dimensions; tensors with more than {MaxDims} cannot travel between stages";
        }
        return null;
    }

    private static (ValueKind Kind, Tensor Data) Encode(object? value) => value switch
    {
        Tensor t => (ValueKind.Tensor, t.detach().contiguous()),
        long[] shape => (ValueKind.Shape, torch.tensor(shape)),
        long l => (ValueKind.Int64, torch.tensor(l)),
        int i => (ValueKind.Int32, torch.tensor((long)i)),
        double d => (ValueKind.Float64, torch.tensor(d)),
        float f => (ValueKind.Float32, torch.tensor((double)f)),
        bool b => (ValueKind.Boolean, torch.tensor(b ? 1L : 0L)),
        Device device => (ValueKind.Device, torch.tensor(new[] { (long)device.type, device.index })),
        ScalarType dtype => (ValueKind.DType, torch.tensor((long)dtype)),
        null => throw new NotSupportedException("A null value cannot cross a stage boundary."),
        _ => throw new NotSupportedException(
            $"A value of type {value.GetType().Name} cannot cross a stage boundary; only tensors, arrays of tensors, shapes, numbers, devices and dtypes can."),
    };

    private static object Decode(ValueKind kind, Tensor data)
    {
        if (kind == ValueKind.Tensor) return data;
        using (data)
        {
            return kind switch
            {
                ValueKind.Shape => data.data<long>().ToArray(),
                ValueKind.Int64 => data.item<long>(),
                ValueKind.Int32 => (int)data.item<long>(),
                ValueKind.Float64 => data.item<double>(),
                ValueKind.Float32 => (float)data.item<double>(),
                ValueKind.Boolean => data.item<long>() != 0,
                ValueKind.Device => new Device((DeviceType)data[0].item<long>(), (int)data[1].item<long>()),
                ValueKind.DType => (ScalarType)data.item<long>(),
                _ => throw new CommunicationException($"Unknown value kind {(long)kind} in a stage message."),
            };
        }
    }
}
