#!/usr/bin/env bash
# Two "hosts" on one Linux machine, made of network namespaces joined by a veth pair, for multi-host MPI tests.
#   netns-hosts.sh up PREFIX      creates namespaces PREFIX-a (10.213.0.1) and PREFIX-b (10.213.0.2)
#   netns-hosts.sh down PREFIX    removes them (and the veth pair with them)
#   netns-hosts.sh [-x] HOST CMD...   as hydra's launcher (mpiexec -launcher ssh -launcher-exec netns-hosts.sh),
#                                 called like ssh: runs CMD in the namespace that owns HOST
# The namespaces see the same files and memory; only the network differs, so MPI traffic between them goes over
# TCP on the veth pair (UCX_TLS=tcp,self keeps UCX from taking shared memory between the two "hosts").
set -euo pipefail
cmd=${1:?usage: netns-hosts.sh up|down PREFIX, or as a launcher: [-x] HOST CMD...}
shift

case "$cmd" in
up)
    prefix=${1:?prefix}
    ip netns add "$prefix-a"
    ip netns add "$prefix-b"
    # veth names are limited to 15 characters: derive short ones from the prefix's hash.
    tag=$(printf '%s' "$prefix" | md5sum | cut -c1-6)
    ip link add "va$tag" type veth peer name "vb$tag"
    ip link set "va$tag" netns "$prefix-a"
    ip link set "vb$tag" netns "$prefix-b"
    ip -n "$prefix-a" addr add 10.213.0.1/24 dev "va$tag"
    ip -n "$prefix-b" addr add 10.213.0.2/24 dev "vb$tag"
    for side in a b; do
        ip -n "$prefix-$side" link set lo up
        ip -n "$prefix-$side" link set "v$side$tag" up
    done
    ;;
down)
    prefix=${1:?prefix}
    ip netns del "$prefix-a" 2>/dev/null || true
    ip netns del "$prefix-b" 2>/dev/null || true
    ;;
-*|10.213.0.*)
    # Called by hydra as it calls ssh: options first (-x), then the host, then the command.
    set -- "$cmd" "$@"
    while [ "${1#-}" != "$1" ]; do shift; done
    host=${1:?host}
    shift
    prefix=${RANNC_NETNS_PREFIX:?RANNC_NETNS_PREFIX names the namespaces}
    case "$host" in
    10.213.0.1) ns="$prefix-a" ;;
    10.213.0.2) ns="$prefix-b" ;;
    *) echo "netns-hosts.sh: unknown host $host" >&2; exit 2 ;;
    esac
    # hydra passes the proxy command as one shell string, as ssh would.
    exec ip netns exec "$ns" sh -c "$*"
    ;;
*)
    echo "netns-hosts.sh: unknown command $cmd" >&2
    exit 2
    ;;
esac
