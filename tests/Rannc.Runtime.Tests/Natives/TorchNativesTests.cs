namespace Rannc.Tests.Natives;

/// <summary>When TorchSharp's natives cannot load, Rannc names the real cause instead of TorchSharp's guess.</summary>
public sealed class TorchNativesTests
{
    [Fact]
    public void Diagnose_TheTestOutput_FindsNothingWrong() => Assert.Null(TorchNatives.Diagnose(AppContext.BaseDirectory));

    [Fact]
    public void Diagnose_AFolderWithoutNatives_NamesTheBackendPackageAndTheRuntimeIdentifier()
    {
        string empty = Directory.CreateTempSubdirectory("rannc-natives-").FullName;
        try
        {
            string message = TorchNatives.Diagnose(empty)!;
            Assert.Contains("libtorch-cpu-linux-x64", message);
            Assert.Contains("RuntimeIdentifier", message);
        }
        finally
        {
            Directory.Delete(empty, recursive: true);
        }
    }

    /// <summary>
    /// The NuGet cache's glue next to the test output's other natives: where the system libstdc++ lacks
    /// GLIBCXX_3.4.32 (Debian 12) the message names that version and the remedy; elsewhere the glue loads.
    /// </summary>
    [Fact]
    public void Diagnose_TheUnpatchedGlue_NamesTheMissingLibStdCxxVersionWhereTheSystemLacksIt()
    {
        string cache = Environment.GetEnvironmentVariable("NUGET_PACKAGES") is { Length: > 0 } packages
            ? packages
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        string original = Path.Combine(cache, "torchsharp", "0.107.0", "runtimes", "linux-x64", "native", "libLibTorchSharp.so");
        Assert.True(File.Exists(original), $"TorchSharp's glue is not in the NuGet cache at {original}");
        string folder = Directory.CreateTempSubdirectory("rannc-unpatched-").FullName;
        try
        {
            foreach (string library in Directory.GetFiles(AppContext.BaseDirectory, "*.so*"))
            {
                if (Path.GetFileName(library) != "libLibTorchSharp.so")
                    File.CreateSymbolicLink(Path.Combine(folder, Path.GetFileName(library)), library);
            }
            File.Copy(original, Path.Combine(folder, "libLibTorchSharp.so"));
            string? message = TorchNatives.Diagnose(folder);
            if (SystemLibStdCxxHas("GLIBCXX_3.4.32"))
            {
                Assert.Null(message);
            }
            else
            {
                Assert.NotNull(message);
                Assert.Contains("needs GLIBCXX_3.4.32 of", message);
                Assert.Contains("PackageReference to Rannc", message);
            }
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    private static bool SystemLibStdCxxHas(string version)
    {
        string library = new[] { "/lib/x86_64-linux-gnu/libstdc++.so.6", "/usr/lib64/libstdc++.so.6", "/usr/lib/libstdc++.so.6" }
            .First(File.Exists);
        return System.Text.Encoding.ASCII.GetString(File.ReadAllBytes(library)).Contains(version + "\0", StringComparison.Ordinal);
    }
}
