#!/usr/bin/env bash
# Runs every Rannc test project from a clean clone. Installs MPICH first when it is missing and we are root
# (the MPI tests launch real `mpiexec` jobs); otherwise says what to install. Ends with "N passed, N failed, N skipped".
# Usage: ./test.sh [extra dotnet test arguments, e.g. --filter FullyQualifiedName~Partitioner]
set -uo pipefail
cd "$(dirname "$0")"

ensure_mpich() {
    if command -v mpiexec.hydra >/dev/null 2>&1 || command -v mpiexec.mpich >/dev/null 2>&1; then
        if ldconfig -p | grep -q 'libmpich\.so\.12'; then return 0; fi
    fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: MPICH not found; installing it (apt-get install mpich)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mpich >/dev/null \
            || echo "test.sh: installing MPICH failed; the MPI tests will fail" >&2
    else
        echo "test.sh: MPICH not found. Install it (Debian/Ubuntu: sudo apt-get install mpich); the MPI tests will fail without it." >&2
    fi
}

# The two-host test makes network namespaces with iproute2's `ip` (it is skipped, with the reason, when not root).
ensure_iproute() {
    command -v ip >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: ip not found; installing iproute2"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null \
            || echo "test.sh: installing iproute2 failed; the two-host test will fail" >&2
    fi
}

ensure_mpich
ensure_iproute

log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Test projects run one after another: the machine has 2 cores and several tests start multi-rank jobs.
dotnet test Rannc.sln -c Release -m:1 "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}

# Sum the per-assembly summaries ("Passed!  - Failed: 0, Passed: 12, Skipped: 0, Total: 12, ...").
read -r passed failed skipped < <(awk '
    /(Passed|Failed)! +- +Failed: / {
        line = $0; gsub(/,/, "", line); n = split(line, w, /[ :]+/)
        for (i = 1; i < n; i++) {
            if (w[i] == "Failed") f += w[i + 1]; else if (w[i] == "Passed") p += w[i + 1]; else if (w[i] == "Skipped") s += w[i + 1]
        }
    }
    END { printf "%d %d %d\n", p, f, s }' "$log")
# A build error or a crashed test host leaves no summary line: count it as a failure, never as success.
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi

# Packaging: the runtime package must carry the generator, so a project referencing only it gets capture and diagnostics.
if [ $# -eq 0 ]; then
    echo "test.sh: packaging check (build/pack-consumer-test.sh)"
    if bash build/pack-consumer-test.sh; then passed=$((passed + 1)); else failed=$((failed + 1)); status=1; fi
fi
echo "$passed passed, $failed failed, $skipped skipped"
exit "$status"
