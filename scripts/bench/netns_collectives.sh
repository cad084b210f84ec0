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

# Several ranks per node: the flat ring against the hierarchical all-reduce (a chain inside each
# node over shared memory, one leader per node over TCP), bytes counted on the nodes' links.
hier_size=${HIER_SIZE:-16M}
echo
echo "== 2 nodes x 2 ranks, links capped at $rate: flat ring vs hierarchical all-reduce of $hier_size =="
printf '%-13s %10s %14s %14s %16s\n' algorithm time_us bytes_on_links link_bytes/op link_use/rate
tx_total() {  # bytes sent by every node on its link
  local t=0
  for ((k = 0; k < 2; k++)); do
    t=$((t + $(ip netns exec "$prefix$k" cat /sys/class/net/eth0/statistics/tx_bytes)))
  done
  echo "$t"
}
iters=10
for algorithm in ring hierarchical; do
  scripts/netns.sh up "$prefix" 2 "$rate" >/dev/null
  before=$(tx_total)
  pids=()
  for ((r = 0; r < 4; r++)); do
    COHORT_RANK=$r COHORT_WORLD_SIZE=4 COHORT_STORE="file:$tmp/store.h.$algorithm" \
      ip netns exec "$prefix$((r / 2))" "$build/launcher/cohort" bench collectives --op allreduce \
      --algorithm "$algorithm" -b "$hier_size" -e "$hier_size" --iters $iters --warmup 0 \
      >"$tmp/hier.$algorithm.$r" 2>&1 & pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  after=$(tx_total)
  # The bench runs the size once unchecked-timed... plus one checked run and its error count.
  ops=$((iters + 1))
  awk -v a="$algorithm" -v b=$((after - before)) -v ops=$ops -v l="$link_gbs" '
    $1 ~ /^[0-9]+$/ { t = $2; bytes = $1 }
    END {
      per_op = b / ops
      # each node sends its share of per_op over its own link in the time of one all-reduce
      printf "%-13s %10.0f %14d %14.0f %15.1f%%\n", a, t, b, per_op, 100 * (per_op / 2) / (t * 1e-6) / (l * 1e9)
    }' "$tmp/hier.$algorithm.0"
  echo "$algorithm $((after - before))" >>"$tmp/hier.bytes"
  scripts/netns.sh down "$prefix"
done
awk '{ b[$1] = $2 } END { printf "hierarchical / ring bytes on the links: %.3f (goal <= 0.55)\n", b["hierarchical"] / b["ring"] }' "$tmp/hier.bytes"
echo "goal: hierarchical link busbw >= 90% of the rate"
