#!/usr/bin/env bash
# `cohort launch` as torchrun for an unchanged PyTorch Gloo DDP script (tests/torch_ddp_script.py:
# init_process_group, an all-reduce, DDP construction and 3 steps, an all-gather) against the same
# ranks started as plain processes with env:// (../shared/bench/spawn.sh; Debian 12's own torchrun
# fails on its Python 3.11). Alternating runs, wall seconds from start to the last rank's exit,
# median of RUNS; goal: cohort launch within 1.2x.
#   scripts/bench/torchrun.sh [RUNS] [RANKS...]
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${COHORT_BUILD_DIR:-build}
ref=$(cd "${COHORT_REF_DIR:-../shared/bench}" && pwd)
runs=${1:-5}
shift || true
ranks=("${@:-2 4}")
# shellcheck disable=SC2206
ranks=(${ranks[*]})
scripts/build.sh >/dev/null
cohort="$PWD/$build/launcher/cohort"
script="$PWD/tests/torch_ddp_script.py"
export PATH=/usr/bin:/bin:$PATH  # Debian's python3, which has python3-torch

wall() {
  local s e
  s=$(date +%s.%N)
  "$@" >/dev/null 2>&1 || { echo "torchrun.sh: failed: $*" >&2; exit 1; }
  e=$(date +%s.%N)
  awk -v s="$s" -v e="$e" 'BEGIN { printf "%.3f\n", e - s }'
}
med() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

echo "== PyTorch Gloo DDP script: cohort launch vs plain env:// processes (wall s, median of $runs, alternating) =="
printf '%-6s %14s %14s %8s\n' ranks "spawn.sh" "cohort launch" ratio
for n in "${ranks[@]}"; do
  a=() b=()
  for ((i = 0; i < runs; i++)); do
    a+=("$(wall "$ref/spawn.sh" "$n" "$script" --steps 3)")
    b+=("$(wall "$cohort" launch --nproc_per_node="$n" "$script" --steps 3)")
  done
  am=$(med "${a[@]}") bm=$(med "${b[@]}")
  printf '%-6s %14s %14s %7.2fx\n' "$n" "$am" "$bm" "$(awk -v a="$am" -v b="$bm" 'BEGIN { print b / a }')"
done
echo "goal: cohort launch <= 1.2x"
