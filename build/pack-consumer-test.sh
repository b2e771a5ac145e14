#!/usr/bin/env bash
# Proves that the Rannc NuGet package carries the capture generator and its analyzer: packs the committed runtime
# (and the partitioner it depends on) from a clean copy of HEAD, then builds a small consumer project that references
# only the Rannc package and checks that
#   1. the package holds analyzers/dotnet/cs/Rannc.Generators.dll,
#   2. the consumer's [RaNNC] class gets the generated ICapturedModule implementation (it would not compile otherwise),
#   3. a model with a tensor-dependent `if` gets warning RANNC0001 at the right line,
#   4. the package's build step makes TorchSharp's native glue load on this machine (one build message when the
#      system libstdc++ lacks GLIBCXX_3.4.32, none on a rebuild, the NuGet cache untouched),
#   5. the consumer runs: a torch op, then a [RaNNC] MLP trained with the one-line `new RanncModule(model, optimizer)`
#      on 2 in-process ranks and under `mpiexec.hydra -n 2`, with SGD and Adam, losses equal to plain TorchSharp's
#      (float64, 1e-9 relative),
#   6. with TorchSharp's unpatched glue where the machine needs the fix, the first Rannc call names the real cause.
# Usage: build/pack-consumer-test.sh            (about 2 minutes; needs the NuGet feed for TorchSharp and MPI.NET)
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/rannc-pack.XXXXXX")"
trap 'rm -rf "$work"' EXIT
# a fresh version per run, so the global NuGet cache never serves a stale package
version="0.1.0-packtest.$(date +%s)"

echo "== copying HEAD to $work/repo"
mkdir -p "$work/repo"
git -C "$repo" archive HEAD src Directory.Build.props Directory.Build.targets Directory.Packages.props \
    .editorconfig global.json nuget.config | tar -x -C "$work/repo"

echo "== packing Rannc $version"
dotnet pack "$work/repo/src/Rannc.Partitioner" -c Release -o "$work/feed" -p:Version="$version" --nologo -v quiet
dotnet pack "$work/repo/src/Rannc.Runtime" -c Release -o "$work/feed" -p:Version="$version" --nologo -v quiet
package="$work/feed/Rannc.$version.nupkg"
# the listing is read whole: `unzip | grep -q` would fail under pipefail when grep stops reading early
listing="$(unzip -l "$package")"
for file in analyzers/dotnet/cs/Rannc.Generators.dll build/Rannc.targets buildTransitive/Rannc.targets \
            buildTransitive/WeakenElfVersionNeed.cs; do
    if ! grep -q " $file\$" <<< "$listing"; then
        echo "FAIL: $package has no $file" >&2
        echo "$listing" >&2
        exit 1
    fi
done
echo "ok: the package carries the generator (analyzers/dotnet/cs) and the libstdc++ fix (build/, buildTransitive/)"

echo "== building a consumer that references only the Rannc package"
mkdir -p "$work/consumer"
cat > "$work/consumer/nuget.config" <<XML
<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <packageSources>
    <clear />
    <add key="local" value="$work/feed" />
XML
# keep the repository's own sources for TorchSharp and MPI.NET
sed -n '/<add /p' "$repo/nuget.config" >> "$work/consumer/nuget.config"
cat >> "$work/consumer/nuget.config" <<'XML'
  </packageSources>
</configuration>
XML
libtorch_version="$(sed -n 's/.*PackageVersion Include="libtorch-cpu-linux-x64" Version="\([^"]*\)".*/\1/p' "$repo/Directory.Packages.props")"
cat > "$work/consumer/Consumer.csproj" <<XML
<Project Sdk="Microsoft.NET.Sdk">
  <PropertyGroup>
    <OutputType>Exe</OutputType>
    <TargetFramework>net10.0</TargetFramework>
    <RuntimeIdentifier>linux-x64</RuntimeIdentifier>
    <SelfContained>false</SelfContained>
    <Nullable>enable</Nullable>
    <ImplicitUsings>enable</ImplicitUsings>
    <EmitCompilerGeneratedFiles>true</EmitCompilerGeneratedFiles>
  </PropertyGroup>
  <ItemGroup>
    <PackageReference Include="Rannc" Version="$version" />
    <PackageReference Include="libtorch-cpu-linux-x64" Version="$libtorch_version" />
  </ItemGroup>
</Project>
XML
cat > "$work/consumer/Net.cs" <<'CS'
using Rannc;
using Rannc.Capture;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace Consumer;

[RaNNC]
public sealed partial class Net : Module<Tensor, Tensor, Tensor>
{
    private readonly Linear fc1 = Linear(4, 8);
    private readonly Linear fc2 = Linear(8, 8);
    private readonly Linear fc3 = Linear(8, 3);

    public Net() : base(nameof(Net)) => RegisterComponents();

    public override Tensor forward(Tensor x, Tensor labels) =>
        functional.cross_entropy(fc3.forward(functional.relu(fc2.forward(functional.relu(fc1.forward(x))))), labels);

    // compiles only if the generator added ICapturedModule to this sealed class
    public static ICapturedModule AsCaptured(Net net) => net;
}
CS
cat > "$work/consumer/Bad.cs" <<'CS'
using Rannc;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace Consumer;

[RaNNC]
public sealed partial class Bad : Module<Tensor, Tensor>
{
    public Bad() : base(nameof(Bad)) { }

    public override Tensor forward(Tensor x)
    {
        if (x.sum().item<float>() > 0)
        {
            x = x * 2;
        }
        return x;
    }
}
CS
cat > "$work/consumer/Program.cs" <<'CS'
using Consumer;
using Rannc;
using Rannc.Communication;
using Rannc.Execution;
using TorchSharp;
using static TorchSharp.torch;

// Run directly: 2 ranks as threads; under `mpiexec -n 2`: one rank per process. Every rank checks its losses
// against plain TorchSharp training of the same model, seed and data, and fails (non-zero exit) on a mismatch.
const int Steps = 3;
const int Batch = 8;
const double Tolerance = 1e-9;
var seedLock = new object();

RankLauncher.Run(inProcessRanks: 2, comm =>
{
    using (var a = torch.tensor(new double[] { 1, 2, 3, 4 }, 2, 2))
    using (var product = torch.matmul(a, a))
    {
        if (!product.data<double>().ToArray().SequenceEqual(new double[] { 7, 10, 15, 22 }))
            throw new InvalidOperationException("matmul gave a wrong result");
    }
    if (comm.Rank == 0) Console.WriteLine("consumer: torch op ok");
    foreach (string optimizerName in new[] { "sgd", "adam" })
    {
        double[] expected = Train(optimizerName, rannc: false);
        double[] actual = Train(optimizerName, rannc: true);
        for (int step = 0; step < Steps; step++)
        {
            double relative = Math.Abs(actual[step] - expected[step]) / Math.Max(Math.Abs(expected[step]), 1e-300);
            if (!(relative <= Tolerance))
                throw new InvalidOperationException($"{optimizerName} step {step}: Rannc loss {actual[step]:R}, plain TorchSharp {expected[step]:R}");
        }
        if (comm.Rank == 0)
            Console.WriteLine($"consumer: {comm.Size} ranks, {optimizerName}: losses {string.Join(", ", actual.Select(l => l.ToString("R")))} equal plain TorchSharp's");
    }
});
return 0;

double[] Train(string optimizerName, bool rannc)
{
    Net model;
    lock (seedLock) // in-process ranks share libtorch's random generator
    {
        torch.manual_seed(7);
        model = new Net();
        model.to(ScalarType.Float64);
    }
    optim.Optimizer optimizer = optimizerName == "sgd"
        ? torch.optim.SGD(model.parameters(), 0.1)
        : torch.optim.Adam(model.parameters(), lr: 0.01);
    var options = new RanncOptions { ForcedShape = (2, 1), PlanCacheDirectory = "", ProfileRepeats = 1, Log = _ => { } };
    using RanncModule? module = rannc ? new RanncModule(model, optimizer, options) : null; // the one added line
    var losses = new double[Steps];
    for (int step = 0; step < Steps; step++)
    {
        var generator = new torch.Generator(100UL + (ulong)step);
        Tensor input = torch.randn([Batch, 4], ScalarType.Float64, generator: generator);
        Tensor labels = torch.randint(0, 3, [Batch], ScalarType.Int64, generator: generator);
        optimizer.zero_grad();
        Tensor loss = module is null ? model.forward(input, labels) : module.forward(input, labels);
        loss.backward();
        optimizer.step();
        losses[step] = loss.item<double>();
    }
    return losses;
}
CS

# A run past its limit is killed with everything it started (its own session).
run_limited() {
    local limit="$1" log="$2"; shift 2
    setsid "$@" > "$log" 2>&1 &
    local pid=$!
    (
        for _ in $(seq "$limit"); do sleep 1; kill -0 "$pid" 2>/dev/null || exit 0; done
        kill -KILL -- "-$pid"; pkill -KILL -s "$pid"
    ) > /dev/null 2>&1 &
    local watcher=$!
    local rc=0
    wait "$pid" 2>/dev/null || rc=$?
    kill "$watcher" 2>/dev/null; wait "$watcher" 2>/dev/null
    return "$rc"
}

libstdcxx="$(ldconfig -p | sed -n 's/.*libstdc++\.so\.6 (libc6,x86-64) => //p' | head -n 1)"
needs_fix=false
if [ -n "$libstdcxx" ] && ! grep -qa 'GLIBCXX_3\.4\.32' "$libstdcxx"; then needs_fix=true; fi
cache_glue="${NUGET_PACKAGES:-$HOME/.nuget/packages}/torchsharp/0.107.0/runtimes/linux-x64/native/libLibTorchSharp.so"

cache_sum="$(sha256sum "$cache_glue" 2>/dev/null | cut -d' ' -f1)"
log="$work/consumer-build.log"
# Hard links instead of copies of the 480 MB of natives (same file system as the NuGet cache): nothing writes them.
build_args=(-c Release --nologo -clp:NoSummary -p:CreateHardLinksForCopyLocalIfPossible=true)
if ! dotnet build "$work/consumer" "${build_args[@]}" > "$log" 2>&1; then
    cat "$log" >&2
    echo "FAIL: the consumer does not build" >&2
    exit 1
fi
generated="$(find "$work/consumer/obj" -name 'Consumer.Net.Rannc.g.cs' | head -n 1)"
if [ -z "$generated" ] || ! grep -q "TemplateNode(" "$generated"; then
    echo "FAIL: no captured template was generated for Consumer.Net" >&2
    exit 1
fi
echo "ok: Consumer.Net was captured ($(grep -c 'TemplateNode(' "$generated") template nodes in $(basename "$generated"))"
if ! grep -q "Bad.cs(15,13): warning RANNC0001" "$log"; then
    cat "$log" >&2
    echo "FAIL: expected 'Bad.cs(15,13): warning RANNC0001' in the build output" >&2
    exit 1
fi
echo "ok: $(grep -o 'Bad.cs(15,13): warning RANNC0001[^[]*' "$log" | head -n 1)"
if find "$work/consumer/obj" -name '*.cs' | xargs grep -l 'class RanncWeakenElfVersionNeed' >/dev/null 2>&1; then
    echo "FAIL: the package's build task source landed in the consumer's project" >&2
    exit 1
fi

messages="$(grep -c 'Rannc: the system libstdc++ lacks GLIBCXX_3.4.32' "$log" || true)"
if $needs_fix && [ "$messages" -ne 1 ]; then
    cat "$log" >&2
    echo "FAIL: this machine's libstdc++ lacks GLIBCXX_3.4.32, but the build printed $messages Rannc fix messages (expected 1)" >&2
    exit 1
fi
if ! $needs_fix && [ "$messages" -ne 0 ]; then
    echo "FAIL: this machine's libstdc++ has GLIBCXX_3.4.32, yet the build patched TorchSharp's glue" >&2
    exit 1
fi
$needs_fix && echo "ok: one build message: $(grep -o 'Rannc: the system libstdc++ lacks[^(]*' "$log" | head -n 1)"
if ! dotnet build "$work/consumer" "${build_args[@]}" --no-restore > "$log.2" 2>&1; then
    cat "$log.2" >&2
    echo "FAIL: the consumer does not rebuild" >&2
    exit 1
fi
if grep -q 'Rannc: the system libstdc++ lacks' "$log.2"; then
    echo "FAIL: a rebuild patched TorchSharp's glue again" >&2
    exit 1
fi
if [ -n "$cache_sum" ] && [ "$(sha256sum "$cache_glue" | cut -d' ' -f1)" != "$cache_sum" ]; then
    echo "FAIL: the NuGet cache's libLibTorchSharp.so changed" >&2
    exit 1
fi
if $needs_fix && cmp -s "$cache_glue" "$work/consumer/bin/Release/net10.0/linux-x64/libLibTorchSharp.so"; then
    echo "FAIL: the build output holds TorchSharp's unpatched glue" >&2
    exit 1
fi
echo "ok: a rebuild leaves the glue alone; the NuGet cache's copy is untouched"

bin="$work/consumer/bin/Release/net10.0/linux-x64"
export MALLOC_MMAP_THRESHOLD_=131072 DOTNET_CLI_TELEMETRY_OPTOUT=1
echo "== running the consumer on 2 in-process ranks"
if ! run_limited 120 "$work/run-inprocess.log" dotnet "$bin/Consumer.dll"; then
    cat "$work/run-inprocess.log" >&2
    echo "FAIL: the consumer does not run on 2 in-process ranks" >&2
    exit 1
fi
sed -n 's/^consumer: /ok: /p' "$work/run-inprocess.log"
[ "$(grep -c 'equal plain TorchSharp' "$work/run-inprocess.log")" -eq 2 ] || { cat "$work/run-inprocess.log" >&2; echo "FAIL: missing loss checks" >&2; exit 1; }

launcher="$(command -v mpiexec.hydra || command -v mpiexec.mpich || true)"
if [ -z "$launcher" ]; then
    echo "FAIL: MPICH's mpiexec.hydra is not installed (apt-get install mpich)" >&2
    exit 1
fi
echo "== running the consumer under $(basename "$launcher") -n 2"
if ! run_limited 120 "$work/run-mpi.log" "$launcher" -n 2 dotnet "$bin/Consumer.dll"; then
    cat "$work/run-mpi.log" >&2
    echo "FAIL: the consumer does not run under $(basename "$launcher") -n 2 (or ran past 120 s)" >&2
    exit 1
fi
sed -n 's/^consumer: /ok: /p' "$work/run-mpi.log"
if [ "$(grep -c 'consumer: 2 ranks, .*equal plain TorchSharp' "$work/run-mpi.log")" -ne 2 ]; then
    cat "$work/run-mpi.log" >&2
    echo "FAIL: missing loss checks under mpiexec" >&2
    exit 1
fi

if $needs_fix; then
    echo "== running with TorchSharp's unpatched glue (as if the natives were copied from the NuGet cache)"
    cp -al "$bin" "$work/unpatched"
    rm "$work/unpatched/libLibTorchSharp.so"
    cp "$cache_glue" "$work/unpatched/libLibTorchSharp.so"
    if run_limited 60 "$work/run-unpatched.log" dotnet "$work/unpatched/Consumer.dll"; then
        echo "FAIL: the consumer ran with an unpatched glue library on a machine that needs the fix" >&2
        exit 1
    fi
    if ! grep -q 'TorchLoadException: .*needs GLIBCXX_3.4.32 of .*libstdc++' "$work/run-unpatched.log"; then
        cat "$work/run-unpatched.log" >&2
        echo "FAIL: the failure does not name the missing GLIBCXX_3.4.32" >&2
        exit 1
    fi
    echo "ok: $(grep -o 'TorchLoadException: [^,]*' "$work/run-unpatched.log" | head -n 1)"
fi
echo "PASS"
