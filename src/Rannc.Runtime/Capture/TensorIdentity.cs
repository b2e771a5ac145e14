using Rannc.Communication;
using static TorchSharp.torch;

namespace Rannc.Capture;

/// <summary>
/// What makes two tensor wrappers the same parameter: the address of their data, their shape and element type.
/// TorchSharp hands out a new wrapper (a new handle) for each read of a module's weight, so handles do not identify.
/// </summary>
internal readonly record struct TensorIdentity(IntPtr Address, ScalarType DType, string Shape)
{
    public static TensorIdentity Of(Tensor tensor)
    {
        // An empty or strided tensor has no single data span, and a meta tensor (deferred construction) no data at all;
        // its handle is the best identity left (a tied tensor is one object, so one handle).
        var address = tensor.numel() == 0 || !tensor.is_contiguous() || tensor.device_type != TorchSharp.DeviceType.CPU
            ? tensor.Handle
            : TensorBuffers.Address(tensor);
        return new TensorIdentity(address, tensor.dtype, string.Join(",", tensor.shape));
    }
}
