#!/usr/bin/env bash
# Network namespaces standing in for the nodes of a cluster, on one machine (needs root):
#   scripts/netns.sh up PREFIX N [RATE]   nodes PREFIX0..PREFIX<N-1>; prints the /24 they share
#                                         (e.g. 10.57.0): node k is <subnet>.<k+1> on eth0
#   scripts/netns.sh down PREFIX          kills what runs in them and removes them
# Exit code 3: this environment cannot have network namespaces (a chroot: / is no mount point).
# The nodes hang off one bridge (PREFIXbr, <subnet>.254) that routes nowhere else, so traffic stays
# inside. RATE (e.g. 1gbit) caps each node's egress with tbf, like a node's network link.
# PREFIX must be short (interface names have 15 characters at most).
set -euo pipefail

cmd=${1:?usage: netns.sh up PREFIX N [RATE] | down PREFIX}
prefix=${2:?missing PREFIX}
[ ${#prefix} -le 11 ] || { echo "netns.sh: prefix '$prefix' is longer than 11 characters" >&2; exit 2; }
# A /24 per prefix, so concurrent clusters do not share addresses.
subnet="10.$(( $(printf '%s' "$prefix" | cksum | cut -d' ' -f1) % 200 + 20 )).0"

down() {
  for ns in $(ip netns list | awk '{print $1}' | grep -E "^${prefix}[0-9]+$" || true); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  # Deleting a namespace removes its veth peers asynchronously; remove the host ends now.
  for link in $(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E "^${prefix}v[0-9]+$" || true); do
    ip link del "$link" 2>/dev/null || true
  done
  ip link del "${prefix}br" 2>/dev/null || true
}

case "$cmd" in
  up)
    n=${3:?missing N}
    # `ip netns` bind-mounts /run/netns and makes / a slave mount, which fails where / is no mount
    # point (a chroot) and leaves a mount behind: say so with exit code 3 instead of trying.
    if ! mountpoint -q /; then
      echo "netns.sh: / is not a mount point here (a chroot?); network namespaces need the machine's real root" >&2
      exit 3
    fi
    rate=${4:-}
    down
    trap 'down' ERR
    ip link add "${prefix}br" type bridge
    ip addr add "${subnet}.254/24" dev "${prefix}br"
    ip link set "${prefix}br" up
    for k in $(seq 0 $((n - 1))); do
      ns="${prefix}${k}"
      ip netns add "$ns"
      ip link add "${prefix}v${k}" type veth peer name eth0 netns "$ns"
      ip link set "${prefix}v${k}" master "${prefix}br"
      ip link set "${prefix}v${k}" up
      ip -n "$ns" addr add "${subnet}.$((k + 1))/24" dev eth0
      ip -n "$ns" link set eth0 up
      ip -n "$ns" link set lo up
      if [ -n "$rate" ]; then
        ip netns exec "$ns" tc qdisc replace dev eth0 root tbf rate "$rate" burst 256kb latency 10ms
      fi
    done
    echo "$subnet"
    ;;
  down)
    down
    ;;
  *)
    echo "netns.sh: unknown command '$cmd' (up or down)" >&2
    exit 2
    ;;
esac
