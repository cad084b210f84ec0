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
best() { printf '%s\n' "$@" | sort -n | head -1; }

# Start-up is dominated by Python importing torch, whose time swings with the page cache and the
# clock: the best of the runs is the steadier figure, the median is shown beside it.
echo "== PyTorch Gloo DDP script: cohort launch vs plain env:// processes (wall s over $runs alternating runs) =="
printf '%-6s %12s %12s %12s %12s %10s %10s\n' ranks "spawn best" "launch best" "spawn med" "launch med" "best ratio" "med ratio"
for n in "${ranks[@]}"; do
  a=() b=()
  for ((i = 0; i < runs; i++)); do
    a+=("$(wall "$ref/spawn.sh" "$n" "$script" --steps 3)")
    b+=("$(wall "$cohort" launch --nproc_per_node="$n" "$script" --steps 3)")
  done
  am=$(med "${a[@]}") bm=$(med "${b[@]}") ab=$(best "${a[@]}") bb=$(best "${b[@]}")
  printf '%-6s %12s %12s %12s %12s %9.2fx %9.2fx\n' "$n" "$ab" "$bb" "$am" "$bm" \
    "$(awk -v a="$ab" -v b="$bb" 'BEGIN { print b / a }')" "$(awk -v a="$am" -v b="$bm" 'BEGIN { print b / a }')"
done
echo "goal: cohort launch <= 1.2x"
