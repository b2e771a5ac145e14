// MSBuild inline task, compiled by RoslynCodeTaskFactory from Rannc.targets (never part of a user's compilation).
// Copies an ELF64 shared library and marks one required symbol version weak (VER_FLG_WEAK in .gnu.version_r),
// unless the system libstdc++ already provides that version. The copy is always written, so MSBuild's
// Inputs/Outputs check makes the step run once per package change.
using System;
using System.IO;
using System.Text;
using Microsoft.Build.Framework;
using Microsoft.Build.Utilities;

public sealed class RanncWeakenElfVersionNeed : Task
{
    [Required] public string Source { get; set; } = "";
    [Required] public string Destination { get; set; } = "";
    [Required] public string VersionName { get; set; } = "";

    const uint ShtGnuVerneed = 0x6ffffffe;
    const ushort VerFlagWeak = 0x2;

    public override bool Execute()
    {
        byte[] data = File.ReadAllBytes(Source);
        Directory.CreateDirectory(Path.GetDirectoryName(Destination)!);
        if (SystemLibStdCxxHas(VersionName))
        {
            File.WriteAllBytes(Destination, data);
            return true;
        }
        int changed = MarkWeak(data, VersionName);
        File.WriteAllBytes(Destination, data);
        if (changed > 0)
        {
            Log.LogMessage(MessageImportance.High,
                $"Rannc: the system libstdc++ lacks {VersionName}; marked that version need weak in a copy of " +
                $"{Path.GetFileName(Source)} so TorchSharp loads ({Destination}).");
        }
        return true;
    }

    static bool SystemLibStdCxxHas(string version)
    {
        string[] candidates =
        {
            "/lib/x86_64-linux-gnu/libstdc++.so.6", "/usr/lib/x86_64-linux-gnu/libstdc++.so.6",
            "/usr/lib64/libstdc++.so.6", "/usr/lib/libstdc++.so.6",
        };
        foreach (string path in candidates)
        {
            if (!File.Exists(path)) continue;
            byte[] bytes = File.ReadAllBytes(path);
            return IndexOf(bytes, Encoding.ASCII.GetBytes(version + "\0")) >= 0;
        }
        return false; // no libstdc++ found where expected: patching is harmless
    }

    static int IndexOf(byte[] haystack, byte[] needle)
    {
        for (int i = 0; i + needle.Length <= haystack.Length; i++)
        {
            int k = 0;
            while (k < needle.Length && haystack[i + k] == needle[k]) k++;
            if (k == needle.Length) return i;
        }
        return -1;
    }

    /// <summary>Sets VER_FLG_WEAK on every vernaux entry named <paramref name="version"/>; returns how many changed.</summary>
    static int MarkWeak(byte[] d, string version)
    {
        if (d.Length < 64 || d[0] != 0x7f || d[1] != (byte)'E' || d[2] != (byte)'L' || d[3] != (byte)'F' || d[4] != 2 || d[5] != 1)
            throw new InvalidDataException("not a little-endian ELF64 file");
        long shoff = BitConverter.ToInt64(d, 0x28);
        int shentsize = BitConverter.ToUInt16(d, 0x3A);
        int shnum = BitConverter.ToUInt16(d, 0x3C);
        int changed = 0;
        for (int i = 0; i < shnum; i++)
        {
            long sh = shoff + (long)i * shentsize;
            if (BitConverter.ToUInt32(d, (int)sh + 4) != ShtGnuVerneed) continue;
            long offset = BitConverter.ToInt64(d, (int)sh + 0x18);
            int link = (int)BitConverter.ToUInt32(d, (int)sh + 0x28);
            int entries = (int)BitConverter.ToUInt32(d, (int)sh + 0x2C);
            long strtab = BitConverter.ToInt64(d, (int)(shoff + (long)link * shentsize) + 0x18);
            for (int e = 0; e < entries; e++)
            {
                int auxCount = BitConverter.ToUInt16(d, (int)offset + 2);
                long aux = offset + BitConverter.ToUInt32(d, (int)offset + 8);
                for (int k = 0; k < auxCount; k++)
                {
                    long name = strtab + BitConverter.ToUInt32(d, (int)aux + 8);
                    int end = (int)name;
                    while (d[end] != 0) end++;
                    string auxName = Encoding.ASCII.GetString(d, (int)name, end - (int)name);
                    ushort flags = BitConverter.ToUInt16(d, (int)aux + 4);
                    if (auxName == version && (flags & VerFlagWeak) == 0)
                    {
                        d[aux + 4] = (byte)(d[aux + 4] | VerFlagWeak);
                        changed++;
                    }
                    aux += BitConverter.ToUInt32(d, (int)aux + 12);
                }
                offset += BitConverter.ToUInt32(d, (int)offset + 12);
            }
        }
        return changed;
    }
}
