#!/usr/bin/env bash
# Proves that the Rannc NuGet package carries the capture generator and its analyzer: packs the committed runtime
# (and the partitioner it depends on) from a clean copy of HEAD, then builds a small consumer project that references
# only the Rannc package and checks that
#   1. the package holds analyzers/dotnet/cs/Rannc.Generators.dll,
#   2. the consumer's [RaNNC] class gets the generated ICapturedModule implementation (it would not compile otherwise),
#   3. a model with a tensor-dependent `if` gets warning RANNC0001 at the right line.
# Usage: build/pack-consumer-test.sh            (about 1-2 minutes; needs the NuGet feed for TorchSharp and MPI.NET)
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/rannc-pack.XXXXXX")"
trap 'rm -rf "$work"' EXIT
# a fresh version per run, so the global NuGet cache never serves a stale package
version="0.1.0-packtest.$(date +%s)"

echo "== copying HEAD to $work/repo"
mkdir -p "$work/repo"
git -C "$repo" archive HEAD src build Directory.Build.props Directory.Build.targets Directory.Packages.props \
    .editorconfig global.json nuget.config | tar -x -C "$work/repo"

echo "== packing Rannc $version"
dotnet pack "$work/repo/src/Rannc.Partitioner" -c Release -o "$work/feed" -p:Version="$version" --nologo -v quiet
dotnet pack "$work/repo/src/Rannc.Runtime" -c Release -o "$work/feed" -p:Version="$version" --nologo -v quiet
package="$work/feed/Rannc.$version.nupkg"
if ! unzip -l "$package" | grep -q "analyzers/dotnet/cs/Rannc.Generators.dll"; then
    echo "FAIL: $package has no analyzers/dotnet/cs/Rannc.Generators.dll" >&2
    unzip -l "$package" >&2
    exit 1
fi
echo "ok: the package carries analyzers/dotnet/cs/Rannc.Generators.dll"

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
cat > "$work/consumer/Consumer.csproj" <<XML
<Project Sdk="Microsoft.NET.Sdk">
  <PropertyGroup>
    <TargetFramework>net10.0</TargetFramework>
    <Nullable>enable</Nullable>
    <ImplicitUsings>enable</ImplicitUsings>
    <EmitCompilerGeneratedFiles>true</EmitCompilerGeneratedFiles>
  </PropertyGroup>
  <ItemGroup>
    <PackageReference Include="Rannc" Version="$version" />
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
public sealed partial class Net : Module<Tensor, Tensor>
{
    private readonly Linear fc1 = Linear(4, 8);
    private readonly Linear fc2 = Linear(8, 2);

    public Net() : base(nameof(Net)) => RegisterComponents();

    public override Tensor forward(Tensor x) => fc2.forward(functional.relu(fc1.forward(x)));

    // compiles only if the generator added ICapturedModule to this sealed class
    public static CaptureTemplate Template => ((ICapturedModule)new Net()).CaptureTemplate;
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
log="$work/consumer-build.log"
if ! dotnet build "$work/consumer" --nologo -clp:NoSummary > "$log" 2>&1; then
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
echo "PASS"
