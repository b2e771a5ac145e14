using System.Globalization;
using System.IO.Hashing;
using System.Text;
using Rannc.Communication;
using TorchSharp;
using static TorchSharp.torch;

namespace Rannc.Execution.Checks;

/// <summary>
/// What one rank brings to a step, compared across ranks before the step runs: every rank must pass the same batch,
/// train or not train together, and have applied (or skipped) the previous step's backward together. A mismatch
/// would otherwise train silently wrong.
/// </summary>
/// <param name="Inputs">One fingerprint per input: dtype, shape and an XxHash3 of the bytes.</param>
/// <param name="Training">Whether the step computes gradients.</param>
/// <param name="MissedBackward">The number of a previous training step whose <c>backward()</c> this rank never ran, if any.</param>
internal sealed record StepAgreement(string[] Inputs, bool Training, long? MissedBackward)
{
    public static StepAgreement Of(IReadOnlyList<object?> inputs, bool training, long? missedBackward, bool hashContents) =>
        new(inputs.Select(input => input switch
        {
            Tensor t => Fingerprint(t, hashContents),
            null => "null",
            _ => $"{input.GetType().Name} {Convert.ToString(input, CultureInfo.InvariantCulture)}",
        }).ToArray(), training, missedBackward);

    /// <summary>"float64[8, 6] #1a2b…": enough to tell two batches apart without moving them.</summary>
    public static string Fingerprint(Tensor tensor, bool hashContents)
    {
        var text = new StringBuilder();
        text.Append(tensor.dtype.ToString().ToLowerInvariant()).Append('[').Append(string.Join(", ", tensor.shape)).Append(']');
        if (hashContents && tensor.numel() > 0)
        {
            using var contiguous = tensor.is_contiguous() && tensor.device_type == DeviceType.CPU ? null : tensor.cpu().contiguous();
            ulong hash = XxHash3.HashToUInt64((contiguous ?? tensor).bytes);
            text.Append(" #").Append(hash.ToString("x16", CultureInfo.InvariantCulture));
        }
        return text.ToString();
    }

    /// <summary>Gathers every rank's agreement and throws, naming the ranks and inputs, when they differ.</summary>
    public static void Check(ICommunicator world, StepAgreement mine, long step)
    {
        StepAgreement[] all;
        using (TrainingPosition.Enter("checking that every rank passes the same inputs")) all = world.AllGather(mine);
        StepAgreement first = all[0];
        var problems = new List<string>();
        if (all.Any(a => a.Inputs.Length != first.Inputs.Length))
            problems.Add("ranks pass different numbers of inputs: " + Describe(all, a => a.Inputs.Length.ToString(CultureInfo.InvariantCulture)));
        else
        {
            for (int i = 0; i < first.Inputs.Length; i++)
            {
                int input = i;
                if (all.Any(a => a.Inputs[input] != first.Inputs[input]))
                    problems.Add($"input {input} differs: " + Describe(all, a => a.Inputs[input]));
            }
        }
        if (all.Any(a => a.Training != first.Training))
            problems.Add("some ranks train and others do not (model.train()/eval() or torch.no_grad() differ): " + Describe(all, a => a.Training ? "training" : "no gradients"));
        if (all.Any(a => a.MissedBackward != first.MissedBackward))
        {
            problems.Add("some ranks did not call backward() on the loss of the previous training step: " +
                Describe(all, a => a.MissedBackward is long s ? $"skipped backward of step {s}" : "ran backward"));
        }
        if (problems.Count == 0) return;
        throw new InvalidOperationException(
            $"Rank {world.Rank}: the ranks disagree at step {step}, so training would silently diverge. Every rank must call forward with the " +
            "same whole batch and call backward() on what it returned.\n  " + string.Join("\n  ", problems));
    }

    private static string Describe(StepAgreement[] all, Func<StepAgreement, string> what) =>
        string.Join("; ", all.Select((a, rank) => (rank, what: what(a))).GroupBy(x => x.what)
            .Select(g => $"rank{(g.Count() > 1 ? "s" : "")} {string.Join(", ", g.Select(x => x.rank))}: {g.Key}"));
}
