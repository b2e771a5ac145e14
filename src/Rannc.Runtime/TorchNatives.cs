using System.Runtime.InteropServices;
using System.Text.RegularExpressions;
using TorchSharp;

namespace Rannc;

/// <summary>The native libraries TorchSharp needs could not be loaded; the message names the cause and the remedy.</summary>
public sealed class TorchLoadException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>
/// Checks once, before Rannc's first torch call, that TorchSharp's natives load. TorchSharp's own error for a failed
/// load blames a missing backend package even when the package is there and the real cause is the system's
/// libstdc++, so on failure this loads the glue library itself and reports what the dynamic linker said.
/// </summary>
internal static partial class TorchNatives
{
    private const string GlueLibrary = "libLibTorchSharp.so";
    private static readonly Lazy<bool> s_loaded = new(Load, LazyThreadSafetyMode.ExecutionAndPublication);

    public static void EnsureLoadable() => _ = s_loaded.Value;

    private static bool Load()
    {
        Exception? failure = null;
        try
        {
            if (torch.TryInitializeDeviceType(DeviceType.CPU)) return true;
        }
        catch (Exception e) when (e is NotSupportedException or DllNotFoundException or TypeInitializationException)
        {
            failure = e;
        }
        throw new TorchLoadException(Diagnose(AppContext.BaseDirectory) ?? "TorchSharp could not load its native libraries.", failure);
    }

    /// <summary>Why TorchSharp's glue library in <paramref name="directory"/> does not load, or null if it loads.</summary>
    internal static string? Diagnose(string directory)
    {
        string? glue = new[] { Path.Combine(directory, GlueLibrary), Path.Combine(directory, "runtimes", "linux-x64", "native", GlueLibrary) }
            .FirstOrDefault(File.Exists);
        if (glue is null)
        {
            return $"TorchSharp's native libraries are not in {directory}. Reference a libtorch backend package in the " +
                   "application (<PackageReference Include=\"libtorch-cpu-linux-x64\" Version=\"2.10.0\" />) and build it for " +
                   "a runtime identifier (<RuntimeIdentifier>linux-x64</RuntimeIdentifier>).";
        }
        string error;
        try
        {
            NativeLibrary.Free(NativeLibrary.Load(glue));
            return null;
        }
        catch (DllNotFoundException e)
        {
            error = e.Message;
        }
        if (MissingVersion().Match(error) is { Success: true } version)
        {
            return $"{glue} needs {version.Groups[2].Value} of {version.Groups[1].Value}, which this machine lacks, and this copy " +
                   "was not patched. Rannc's build step marks that need weak in the build output when the machine lacks it " +
                   "(build message \"Rannc: the system libstdc++ lacks ...\"): build the application with a PackageReference " +
                   "to Rannc (not a copy of the natives from elsewhere), or install a libstdc++ from GCC 13 or later. " +
                   $"The dynamic linker said: {error}";
        }
        return $"{glue} does not load (a library it needs is missing or incompatible; install it or rebuild the " +
               $"application with its libtorch package). The dynamic linker said: {error}";
    }

    // glibc's text: "/usr/lib/x86_64-linux-gnu/libstdc++.so.6: version `GLIBCXX_3.4.32' not found (required by ...)"
    [GeneratedRegex(@"([^\s:]+): version `([^']+)' not found")]
    private static partial Regex MissingVersion();
}
