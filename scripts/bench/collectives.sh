#!/usr/bin/env bash
# All-reduce bandwidth and latency on one node: Cohort's cpu backend, Open MPI's MPI_Allreduce
# (../shared/bench/mpi_allreduce.c) and Gloo through torch.distributed (../shared/bench/
# gloo_allreduce.py), at 2 and 4 ranks, in one invocation; prints each table and the busbw ratios.
#   scripts/bench/collectives.sh [RANKS...]        (default: 2 4)
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${COHORT_BUILD_DIR:-build}
ref=$(cd "${COHORT_REF_DIR:-../shared/bench}" && pwd)
scripts/build.sh >/dev/null
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mpicc -O2 "$ref/mpi_allreduce.c" -o "$tmp/mpi_ar"
export OMP_NUM_THREADS=1

# Until `cohort launch` exists: N ranks of `cohort bench collectives` over a FileStore.
cohort_ranks() {
  local n=$1 pids=() rc=0
  for ((r = 0; r < n; r++)); do
    COHORT_RANK=$r COHORT_WORLD_SIZE=$n COHORT_STORE="file:$tmp/store.$n" \
      "$build/launcher/cohort" bench collectives --op allreduce -b 4K -e 64M -f 4 & pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  return $rc
}

# busbw (column 4) and time (column 2) by size from a table on stdin
table() { awk '$1 ~ /^[0-9]+$/ { print $1, $2, $4 }'; }

for n in "${@:-2 4}"; do
  for n1 in $n; do
    echo "== $n1 ranks =="
    cohort_ranks "$n1" | tee "$tmp/cohort.$n1"
    echo "-- Open MPI"
    mpirun --allow-run-as-root --oversubscribe -np "$n1" "$tmp/mpi_ar" | tee "$tmp/mpi.$n1"
    echo "-- Gloo (torch $(/usr/bin/python3 -c 'import torch; print(torch.__version__)'))"
    "$ref/spawn.sh" "$n1" gloo_allreduce.py | tee "$tmp/gloo.$n1"
    echo "-- ratios at $n1 ranks: cohort busbw / reference busbw (latency: cohort time / reference time)"
    printf '%12s %12s %12s %14s\n' bytes vs_openmpi vs_gloo time_vs_openmpi
    join <(table <"$tmp/cohort.$n1") <(table <"$tmp/mpi.$n1") | join - <(table <"$tmp/gloo.$n1") |
      awk '{ printf "%12d %11.2fx %11.2fx %13.2fx\n", $1, $3 / $5, $3 / $7, $2 / $4 }'
  done
done
echo "goals: busbw >= 1.0x Open MPI at 1 MiB, >= 1.5x at 16 and 64 MiB; >= 10x Gloo everywhere; 4 KiB time <= 2x Open MPI's"
