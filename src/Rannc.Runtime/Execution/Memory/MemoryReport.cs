using System.Globalization;
using System.Text;
using Rannc.Capture;
using Rannc.Communication;
using Rannc.Execution;
using Rannc.Partitioner;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Rannc.Execution.Memory;

/// <summary>
/// The resident memory of this process, from Linux's <c>/proc/self</c>: <c>VmRSS</c> (now) and <c>VmHWM</c> (the peak
/// since the process started or since <see cref="ResetPeak"/>; writing 5 to <c>/proc/self/clear_refs</c> resets it,
/// Linux ≥ 4.0).
/// </summary>
internal static class ProcessMemory
{
    public static bool Available => File.Exists("/proc/self/status");

    public static long ResidentBytes() => StatusKilobytes("VmRSS:") * 1024;

    public static long PeakResidentBytes() => StatusKilobytes("VmHWM:") * 1024;

    /// <summary>Resident pages that are no tensor's: mapped files (library code) and shared memory.</summary>
    public static long FileAndSharedBytes() => (StatusKilobytes("RssFile:") + StatusKilobytes("RssShmem:")) * 1024;

    /// <summary>Makes the peak the current resident size; false where the kernel does not allow it.</summary>
    public static bool ResetPeak()
    {
        try
        {
            File.WriteAllText("/proc/self/clear_refs", "5");
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    private static long StatusKilobytes(string field)
    {
        foreach (string line in File.ReadLines("/proc/self/status"))
        {
            if (!line.StartsWith(field, StringComparison.Ordinal)) continue;
            string number = line[field.Length..].Trim().Split(' ')[0];
            return long.Parse(number, CultureInfo.InvariantCulture);
        }
        throw new InvalidOperationException($"/proc/self/status has no {field} line.");
    }
}

/// <summary>
/// Measures this rank's peak memory attributable to tensors over training steps 1…N and logs it next to the plan's
/// predicted peak of the rank's stage (<see cref="RanncOptions.MemoryReportSteps"/>). libtorch keeps no allocator
/// statistics on CPU, so the measure is resident memory: the non-tensor part of the process is taken at construction
/// of the <see cref="RanncModule"/> as <c>VmRSS</c> minus the bytes of the model's tensors and the optimizer's state
/// (all resident then: initialised, or zeroed by the optimizer); a step's tensor peak is its <c>VmHWM</c> (reset before
/// the step) minus that part and minus the growth of the .NET heap since construction (graph, plan and other managed
/// objects) and minus the growth of resident file pages and shared memory (libtorch's code as new kernels first run,
/// MPI's shared-memory channels). Run with <c>MALLOC_MMAP_THRESHOLD_=65536</c> so that glibc returns freed tensors to the system at once
/// (otherwise freed memory stays resident and is counted). Needs one process per rank (<c>mpiexec</c>).
/// </summary>
internal sealed class MemoryReport
{
    private readonly int _steps;
    private readonly long _nonTensorBytes;
    private readonly long _managedBytesAtStart;
    private readonly long _fileAndSharedBytesAtStart;
    private readonly bool _oneProcessPerRank;
    private readonly long _tensorBytesAtStart;
    private int _measuredSteps = -1;
    private bool _peakResets = true;
    private long _peakTensorBytes;
    private long _heldTensorBytes;
    private bool _done;

    private MemoryReport(int steps, long tensorBytes, bool oneProcessPerRank)
    {
        _steps = steps;
        _tensorBytesAtStart = tensorBytes;
        _oneProcessPerRank = oneProcessPerRank;
        _managedBytesAtStart = GC.GetGCMemoryInfo().TotalCommittedBytes;
        _fileAndSharedBytesAtStart = ProcessMemory.FileAndSharedBytes();
        _nonTensorBytes = ProcessMemory.ResidentBytes() - tensorBytes;
    }

    /// <summary>Starts measuring, or null when it is off or this is not Linux.</summary>
    public static MemoryReport? Start(int steps, nn.Module model, optim.Optimizer optimizer, ICommunicator world)
    {
        if (steps <= 0 || !ProcessMemory.Available) return null;
        return new MemoryReport(steps, TensorBytes(model, optimizer), world is not InProcessCommunicator);
    }

    /// <summary>Bytes of the model's distinct parameters and buffers and of the optimizer's per-parameter state.</summary>
    public static long TensorBytes(nn.Module model, optim.Optimizer optimizer)
    {
        var seen = new HashSet<TensorIdentity>();
        long bytes = 0;
        foreach ((_, Tensor tensor) in model.state_dict())
        {
            // Meta tensors (a deferred model's other stages) hold no memory.
            if (tensor.numel() > 0 && tensor.device_type == TorchSharp.DeviceType.CPU && seen.Add(TensorIdentity.Of(tensor)))
                bytes += tensor.numel() * tensor.ElementSize;
        }
        if (optimizer is OptimizerHelper helper)
        {
            foreach (OptimizerState state in helper.state_dict().State)
            {
                foreach (Tensor tensor in OptimizerStateResidency.TensorsOf(state))
                {
                    if (tensor.numel() > 0 && seen.Add(TensorIdentity.Of(tensor))) bytes += tensor.numel() * tensor.ElementSize;
                }
            }
        }
        return bytes;
    }

    /// <summary>
    /// Called by every rank at the start of each training <c>forward</c> after deployment: the step that ended is
    /// measured, the peak reset for the next; after N measured steps every rank's peak goes to rank 0, which logs them.
    /// </summary>
    public void StepBoundary(ICommunicator world, PartitionPlan plan, Action<string> logOnce)
    {
        if (_done) return;
        if (_measuredSteps >= 0)
        {
            // Not tensors: the .NET heap, and pages of libraries (libtorch's kernels as they first run) and of MPI's shared memory.
            long managedGrowth = Math.Max(0, GC.GetGCMemoryInfo().TotalCommittedBytes - _managedBytesAtStart)
                + Math.Max(0, ProcessMemory.FileAndSharedBytes() - _fileAndSharedBytesAtStart);
            _peakTensorBytes = Math.Max(_peakTensorBytes, ProcessMemory.PeakResidentBytes() - _nonTensorBytes - managedGrowth);
            _heldTensorBytes = Math.Max(_heldTensorBytes, ProcessMemory.ResidentBytes() - _nonTensorBytes - managedGrowth);
        }
        _measuredSteps++;
        _peakResets &= ProcessMemory.ResetPeak();
        if (_measuredSteps < _steps) return;
        _done = true;
        long[][] measured = world.AllGather(new[] { _peakTensorBytes, _heldTensorBytes });
        if (world.Rank == 0) logOnce(Describe(plan, measured.Select(m => m[0]).ToArray(), measured.Select(m => m[1]).ToArray()));
    }

    private string Describe(PartitionPlan plan, long[] peaks, long[] held)
    {
        var text = new StringBuilder();
        text.Append(CultureInfo.InvariantCulture,
            $"Rannc memory over steps 1–{_steps} (peak resident − non-tensor resident at construction, {Format(_nonTensorBytes)} on rank 0; " +
            $"tensors at construction {Format(_tensorBytesAtStart)} on rank 0):");
        if (!_oneProcessPerRank) text.Append(" in-process ranks share one process, so the peaks are the whole process's, not a rank's.");
        if (!_peakResets) text.Append(" The peak could not be reset (/proc/self/clear_refs): it includes deployment.");
        foreach (StagePlan stage in plan.Stages)
        {
            foreach (int rank in stage.ReplicaRanks)
            {
                double ratio = peaks[rank] / (double)Math.Max(1, stage.PeakMemoryBytes);
                text.AppendLine().Append(CultureInfo.InvariantCulture,
                    $"  stage {stage.Index} rank {rank}: measured {Format(peaks[rank])}, predicted {Format(stage.PeakMemoryBytes)} (measured/predicted {ratio:0.00}); held between steps {Format(held[rank])}");
            }
        }
        return text.ToString();
    }

    private static string Format(long bytes) => FormattableString.Invariant($"{bytes / 1048576.0:0.0} MiB");
}
