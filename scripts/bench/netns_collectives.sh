#!/usr/bin/env bash
# All-reduce across nodes joined by a shaped link: network namespaces on one bridge, each node's
# egress capped at RATE (tbf), one rank per node. Runs Cohort's cpu backend (TCP between nodes) and
# Gloo through torch.distributed (../shared/bench/gloo_allreduce.py) in one invocation and prints
# busbw as a fraction of the link rate and against Gloo. Needs root.
#   scripts/bench/netns_collectives.sh [NODES...]        (default: 2 4; RATE=1gbit)
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${COHORT_BUILD_DIR:-build}
ref=$(cd "${COHORT_REF_DIR:-../shared/bench}" && pwd)
rate=${RATE:-1gbit}
scripts/build.sh >/dev/null
prefix="chb$$n"
tmp=$(mktemp -d)
trap 'scripts/netns.sh down "$prefix"; rm -rf "$tmp"' EXIT
export OMP_NUM_THREADS=1
# The link rate in GB/s (tbf's rate, in bits per second).
link_gbs=$(awk -v r="$rate" 'BEGIN { m = 1; if (r ~ /gbit$/) m = 1e9; else if (r ~ /mbit$/) m = 1e6;
  sub(/[a-z]+$/, "", r); printf "%.4f", r * m / 8 / 1e9 }')

# bytes, time and busbw by size from a table on stdin, sorted for join
table() { awk '$1 ~ /^[0-9]+$/ { print $1, $2, $4 }' | sort -k1,1; }

for n in ${@:-2 4}; do
  subnet=$(scripts/netns.sh up "$prefix" "$n" "$rate")
  echo "== $n nodes, one rank each, links capped at $rate ($link_gbs GB/s) =="
  pids=()
  for ((r = 0; r < n; r++)); do
    COHORT_RANK=$r COHORT_WORLD_SIZE=$n COHORT_STORE="file:$tmp/store.$n" \
      ip netns exec "$prefix$r" "$build/launcher/cohort" bench collectives --op allreduce \
      -b 1M -e 64M -f 4 --iters 5 --warmup 1 >"$tmp/cohort.$n.$r" 2>&1 & pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  cat "$tmp/cohort.$n.0"
  echo "-- Gloo (torch $(/usr/bin/python3 -c 'import torch; print(torch.__version__)'))"
  pids=()
  for ((r = 0; r < n; r++)); do
    GLOO_SOCKET_IFNAME=eth0 MASTER_ADDR="$subnet.1" MASTER_PORT=29500 RANK=$r WORLD_SIZE=$n \
      ip netns exec "$prefix$r" /usr/bin/python3 "$ref/gloo_allreduce.py" >"$tmp/gloo.$n.$r" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  awk '$1 >= 1048576 || $1 == "bytes"' "$tmp/gloo.$n.0"
  echo "-- at $n nodes: busbw / link rate, and cohort busbw / Gloo busbw"
  printf '%12s %12s %12s %12s\n' bytes cohort_link gloo_link vs_gloo
  join <(table <"$tmp/cohort.$n.0") <(table <"$tmp/gloo.$n.0") |
    sort -n | awk -v l="$link_gbs" '{ printf "%12d %11.1f%% %11.1f%% %11.2fx\n", $1, 100 * $3 / l, 100 * $5 / l, $3 / $5 }'
  scripts/netns.sh down "$prefix"
done
echo "goal: cohort busbw >= 90% of the link rate from 4 MiB up"
