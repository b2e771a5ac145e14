using System.Globalization;
using System.IO.Hashing;
using System.Text.Json;
using Rannc.Communication;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Execution.Checkpoints;

/// <summary>
/// Checkpoints as folders that survive a crash. A save writes <c>checkpoint-NNNNNN</c> under a temporary name: each
/// rank writes only what it owns into its own file (<c>rank-R.bin</c>, flushed to disk), rank 0 then writes the
/// manifest and renames the folder into place, so the previous checkpoint stays valid until the new one is complete;
/// the last <c>keep</c> are kept. Loading finds the newest folder with a manifest, checks every item's size and hash,
/// and reads items by name, so any plan and world size can load it.
/// </summary>
internal static class CheckpointFolder
{
    private const string Prefix = "checkpoint-";

    /// <summary>Rank 0's choice of folder and sequence number, shared with every rank.</summary>
    private sealed record SaveTicket(string Folder, long Sequence);

    /// <summary>The item this rank writes: a tensor's bytes or an optimizer state blob.</summary>
    public sealed record Item(string Name, string Kind, Tensor? Tensor, byte[]? Blob);

    /// <summary>Writes a checkpoint into <paramref name="root"/>; every rank calls it with the items it owns.</summary>
    public static string Save(ICommunicator world, string root, IReadOnlyList<Item> mine, string plan, string? optimizer, int keep)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(keep, 1);
        SaveTicket? ticket = null;
        if (world.Rank == 0)
        {
            Directory.CreateDirectory(root);
            long next = Completed(root).Select(c => c.Sequence).DefaultIfEmpty(0).Max() + 1;
            ticket = new SaveTicket($".{Prefix}{next:D6}.tmp-{Guid.NewGuid():N}", next);
            Directory.CreateDirectory(Path.Combine(root, ticket.Folder));
        }
        ticket = world.AllGather(ticket)[0]!;
        long sequence = ticket.Sequence;
        string temporary = Path.Combine(root, ticket.Folder);
        world.Barrier();

        string file = $"rank-{world.Rank}.bin";
        var entries = new List<CheckpointEntry>();
        using (var stream = new FileStream(Path.Combine(temporary, file), FileMode.CreateNew, FileAccess.Write))
        {
            foreach (Item item in mine)
            {
                byte[] bytes = item.Blob ?? TensorBytes(item.Tensor!);
                entries.Add(new CheckpointEntry(item.Name, item.Kind, item.Tensor?.dtype.ToString(), item.Tensor?.shape, file, stream.Position,
                    bytes.LongLength, Hash(bytes)));
                stream.Write(bytes);
            }
            stream.Flush(flushToDisk: true);
        }
        List<CheckpointEntry>[] all = world.AllGather(entries);
        string final = Path.Combine(root, $"{Prefix}{sequence:D6}");
        if (world.Rank == 0)
        {
            var manifest = new CheckpointManifest(1, sequence, DateTime.UtcNow.ToString("O", CultureInfo.InvariantCulture), world.Size, plan, optimizer,
                all.SelectMany(e => e).ToList());
            using (var stream = new FileStream(Path.Combine(temporary, CheckpointManifest.FileName), FileMode.CreateNew, FileAccess.Write))
            {
                JsonSerializer.Serialize(stream, manifest, new JsonSerializerOptions { WriteIndented = true });
                stream.Flush(flushToDisk: true);
            }
            Directory.Move(temporary, final);
            RemoveOld(root, keep);
        }
        world.Barrier();
        return final;
    }

    /// <summary>
    /// The checkpoint to load from <paramref name="path"/>: the folder itself when it has a manifest, else the newest
    /// complete checkpoint under it.
    /// </summary>
    public static (string Folder, CheckpointManifest Manifest) Open(string path)
    {
        if (File.Exists(Path.Combine(path, CheckpointManifest.FileName))) return (path, ReadManifest(path));
        if (!Directory.Exists(path)) throw new DirectoryNotFoundException($"There is no checkpoint at {path}: the folder does not exist.");
        var newest = Completed(path).OrderByDescending(c => c.Sequence).FirstOrDefault();
        if (newest.Folder is null)
        {
            throw new FileNotFoundException(
                $"There is no complete checkpoint in {path}: no {Prefix}NNNNNN folder with a {CheckpointManifest.FileName}" +
                (File.Exists(Path.Combine(path, "model.bin")) ? " (model.bin there is a plain TorchSharp save: load it with module.load)." : "."));
        }
        return (newest.Folder, newest.Manifest!);
    }

    /// <summary>Reads one item's bytes and checks their length and hash.</summary>
    public static byte[] Read(string folder, CheckpointEntry entry)
    {
        string file = Path.Combine(folder, entry.File);
        if (!File.Exists(file)) throw new InvalidDataException($"Checkpoint {folder} is damaged: {entry.File}, which holds '{entry.Name}', is missing.");
        var bytes = new byte[entry.Length];
        using (var stream = new FileStream(file, FileMode.Open, FileAccess.Read))
        {
            if (stream.Length < entry.Offset + entry.Length)
                throw new InvalidDataException($"Checkpoint {folder} is damaged: {entry.File} is shorter than the manifest says ('{entry.Name}' is cut off).");
            stream.Position = entry.Offset;
            stream.ReadExactly(bytes);
        }
        if (Hash(bytes) != entry.Hash)
            throw new InvalidDataException($"Checkpoint {folder} is damaged: the bytes of '{entry.Name}' in {entry.File} do not match their checksum.");
        return bytes;
    }

    /// <summary>A tensor of the entry's dtype and shape holding <paramref name="bytes"/>.</summary>
    public static Tensor ToTensor(CheckpointEntry entry, byte[] bytes)
    {
        var dtype = Enum.Parse<ScalarType>(entry.DType!);
        Tensor tensor = torch.empty(entry.Shape!, dtype);
        if (bytes.Length > 0) bytes.CopyTo(TensorBuffers.Bytes(tensor));
        return tensor;
    }

    private static byte[] TensorBytes(Tensor tensor)
    {
        using Tensor contiguous = tensor.detach().contiguous().cpu();
        return TensorBuffers.Bytes(contiguous).ToArray();
    }

    private static string Hash(ReadOnlySpan<byte> bytes) => XxHash3.HashToUInt64(bytes).ToString("x16", CultureInfo.InvariantCulture);

    private static CheckpointManifest ReadManifest(string folder)
    {
        string path = Path.Combine(folder, CheckpointManifest.FileName);
        try
        {
            CheckpointManifest? manifest = JsonSerializer.Deserialize<CheckpointManifest>(File.ReadAllText(path));
            if (manifest?.Entries is null || manifest.Entries.Any(e => e is null || e.Name is null || e.File is null || e.Hash is null))
                throw new InvalidDataException($"The checkpoint manifest {path} is incomplete.");
            return manifest;
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"The checkpoint manifest {path} cannot be read: {e.Message}", e);
        }
    }

    /// <summary>Complete checkpoints under <paramref name="root"/> (their manifest reads), by sequence.</summary>
    private static IEnumerable<(string Folder, long Sequence, CheckpointManifest? Manifest)> Completed(string root)
    {
        foreach (string folder in Directory.EnumerateDirectories(root, Prefix + "*"))
        {
            if (!long.TryParse(Path.GetFileName(folder)[Prefix.Length..], NumberStyles.None, CultureInfo.InvariantCulture, out long sequence)) continue;
            CheckpointManifest? manifest;
            try
            {
                manifest = ReadManifest(folder);
            }
            catch (Exception e) when (e is IOException or InvalidDataException or UnauthorizedAccessException)
            {
                continue;
            }
            yield return (folder, sequence, manifest);
        }
    }

    /// <summary>Deletes all but the newest <paramref name="keep"/> checkpoints, and temporary folders of saves that died.</summary>
    private static void RemoveOld(string root, int keep)
    {
        foreach (var (folder, _, _) in Completed(root).OrderByDescending(c => c.Sequence).Skip(keep).ToList()) Directory.Delete(folder, recursive: true);
        foreach (string stale in Directory.EnumerateDirectories(root, "." + Prefix + "*.tmp-*")) Directory.Delete(stale, recursive: true);
    }
}
