#!/usr/bin/env bash
# Start-up and restart cost of `cohort launch`, beside the references in one invocation:
# - 8 workers of `cohort bench collectives --op barrier` (store, group set-up, one barrier) vs
#   `mpirun -np 8` of MPI_Init + MPI_Barrier, and 8 Python ranks initialising torch.distributed
#   (Gloo) + a barrier; best and median of 5 wall times each.
# - the time from a worker's failure to the restarted workers' first line (restarts left).
# - a worker's time from exec to main (the dynamic loader and static initialisers), median of 21.
# - 2-rank DDP on the MLP (per-rank batch 64, 1 epoch of Fashion-MNIST) 5 times in a row, against
#   one rank and the node's ceiling (two independent one-core trainings at once): how steady the
#   placement of `--cpu-bind cores` (the default) keeps it, and the same with --cpu-bind none.
# - with COHORT_BASELINE=path/to/another/cohort (an earlier build), that build's 8 workers + barrier
#   too, run alternately with this one, and the ratio of the medians.
#   scripts/bench/launch.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${COHORT_BUILD_DIR:-build}
ref=$(cd "${COHORT_REF_DIR:-../shared/bench}" && pwd)
runs=${1:-5}
scripts/build.sh >/dev/null
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cohort="$build/launcher/cohort"
cat >"$tmp/barrier.c" <<'C'
#include <mpi.h>
int main(int argc, char** argv) { MPI_Init(&argc, &argv); MPI_Barrier(MPI_COMM_WORLD); MPI_Finalize(); return 0; }
C
mpicc -O2 "$tmp/barrier.c" -o "$tmp/barrier"
cat >"$tmp/barrier.py" <<'PY'
import torch.distributed as dist
dist.init_process_group("gloo"); dist.barrier(); dist.destroy_process_group()
PY

# Wall seconds of "$@", best and median of $runs.
timeit() {
  local t=()
  for ((i = 0; i < runs; i++)); do
    local s e
    s=$(date +%s.%N)
    "$@" >/dev/null 2>&1
    e=$(date +%s.%N)
    t+=("$(awk -v s="$s" -v e="$e" 'BEGIN { print e - s }')")
  done
  printf '%s\n' "${t[@]}" | sort -n | awk '{ a[NR] = $1 } END { printf "%.3f %.3f\n", a[1], a[int((NR + 1) / 2)] }'
}

read -r c_best c_med < <(timeit "$cohort" launch --nproc-per-node 8 -- "$cohort" bench collectives --op barrier -b 4 -e 4 --iters 1 --warmup 0)
read -r m_best m_med < <(timeit mpirun --allow-run-as-root --oversubscribe -np 8 "$tmp/barrier")
read -r p_best p_med < <(timeit "$ref/spawn.sh" 8 "$tmp/barrier.py")
echo "== 8 ranks: start, set up the group, one barrier, exit (wall seconds, best / median of $runs) =="
printf '%-44s %8s %8s %10s\n' "" best median vs_cohort
printf '%-44s %8s %8s %10s\n' "cohort launch + cohort bench --op barrier" "$c_best" "$c_med" "1.00x"
printf '%-44s %8s %8s %9.2fx\n' "mpirun -np 8 (MPI_Init + MPI_Barrier)" "$m_best" "$m_med" "$(awk -v a="$m_med" -v b="$c_med" 'BEGIN { print a / b }')"
printf '%-44s %8s %8s %9.2fx\n' "8 Python ranks (torch.distributed gloo)" "$p_best" "$p_med" "$(awk -v a="$p_med" -v b="$c_med" 'BEGIN { print a / b }')"
echo "goal: cohort median <= 0.25 s and <= 0.5x mpirun's: $(awk -v c="$c_med" -v m="$m_med" 'BEGIN { printf "%s, %.2fx", (c <= 0.25 && c <= 0.5 * m) ? "met" : "NOT met", c / m }')"
if [ -n "${COHORT_BASELINE:-}" ]; then
  # Alternate the two builds, so that the machine's drift falls on both alike.
  a=() b=()
  for ((i = 0; i < runs; i++)); do
    runs_saved=$runs runs=1
    read -r x _ < <(timeit "$cohort" launch --nproc-per-node 8 -- "$cohort" bench collectives --op barrier -b 4 -e 4 --iters 1 --warmup 0)
    read -r y _ < <(timeit "$COHORT_BASELINE" launch --nproc-per-node 8 -- "$COHORT_BASELINE" bench collectives --op barrier -b 4 -e 4 --iters 1 --warmup 0)
    runs=$runs_saved
    a+=("$x") b+=("$y")
  done
  med() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
  am=$(med "${a[@]}") bm=$(med "${b[@]}")
  echo "== this build against COHORT_BASELINE ($COHORT_BASELINE), $runs alternating runs, median wall s =="
  printf 'this build %s, baseline %s: %.2fx the baseline'"'"'s time (goal: within 1.10x)\n' "$am" "$bm" "$(awk -v a="$am" -v b="$bm" 'BEGIN { print a / b }')"
fi

# Restart: attempt 0 of rank 1 fails at once; the time until each rank of attempt 1 prints.
"$cohort" launch --nproc-per-node 4 --max-restarts 1 -- sh -c \
  'if [ $COHORT_RESTART_COUNT = 0 ] && [ $COHORT_RANK = 1 ]; then date +fail%s.%N; exit 1; fi;
   [ $COHORT_RESTART_COUNT = 1 ] && date +back%s.%N; [ $COHORT_RESTART_COUNT = 1 ] || sleep 30' \
  >"$tmp/restart.out" 2>/dev/null
fail=$(grep -o 'fail[0-9.]*' "$tmp/restart.out" | tr -d fail)
back=$(grep -o 'back[0-9.]*' "$tmp/restart.out" | tr -d back | sort -n | tail -1)
echo "== restart: a worker fails, the other 3 are stopped (SIGTERM), all 4 start again =="
printf 'failure to the last restarted worker running: %.3f s (goal: <= 1 s plus checkpoint load)\n' "$(awk -v a="$back" -v b="$fail" 'BEGIN { print a - b }')"

# Exec to main: the loader maps what `cohort` links (no CUDA, NCCL or MPI since the modules) and
# runs the static initialisers. posix_spawn from Python, the clock read just before it.
cat >"$tmp/exec.py" <<'PY'
import os, subprocess, sys, time
cohort, n = sys.argv[1], int(sys.argv[2])
ms = []
for _ in range(n):
    env = dict(os.environ, COHORT_EXEC_NS=str(time.clock_gettime_ns(time.CLOCK_MONOTONIC)))
    r = subprocess.run([cohort, "--version"], env=env, capture_output=True, text=True)
    ms.append(float(r.stderr.split("exec to main ")[1].split()[0]))
ms.sort()
print("%.2f %.2f" % (ms[0], ms[len(ms) // 2]))
PY
read -r e_best e_med < <(/usr/bin/python3 "$tmp/exec.py" "$cohort" 21)
echo "== a worker's exec to main (ms, best / median of 21) =="
printf 'cohort: %s / %s ms (goal: <= 15 ms: %s)\n' "$e_best" "$e_med" "$(awk -v m="$e_med" 'BEGIN { print m <= 15 ? "met" : "NOT met" }')"

# 2-rank DDP, 5 rounds in a row. Each round runs --cpu-bind cores, --cpu-bind none and the node's
# ceiling (two independent one-core trainings at once, as scripts/bench/ddp.sh), so that the
# ceiling a run is held to was measured beside it on this host, whose speed drifts.
export OPENBLAS_NUM_THREADS=1
field() { sed -nE "s/.*$1[= ]([0-9.]+).*/\1/p" | tail -n 1; }
mlp=(train configs/fashion_mnist_mlp.yaml data.batch_size=64 train.log_every=100000 logging.tensorboard=false)
one=$("$cohort" "${mlp[@]}" threads=1 logging.dir="$tmp/one" 2>&1 | field samples_per_s)
ceiling() {
  local c
  for c in 0 1; do
    taskset -c $c "$cohort" "${mlp[@]}" threads=1 logging.dir="$tmp/alone$c$RANDOM" >"$tmp/alone$c.out" 2>&1 &
  done
  wait
  cat "$tmp/alone0.out" "$tmp/alone1.out" | awk '/summary/ { for (i = 1; i < NF; i++) if ($i == "samples_per_s") s += $(i + 1) } END { printf "%.0f", s }'
}
ddp() { "$cohort" launch --nproc-per-node 2 --cpu-bind "$1" -- "$cohort" "${mlp[@]}" logging.dir="$tmp/two$RANDOM" 2>&1 | field samples_per_s; }
echo "== 2-rank DDP, MLP, batch 64 per rank, 1 epoch, 5 rounds in a row (samples/s) =="
printf '%-6s %10s %10s %10s %12s %12s\n' round cores none ceiling "cores/ceil" "none/ceil"
for r in 1 2 3 4 5; do
  echo "$r $(ddp cores) $(ddp none) $(ceiling)"
done >"$tmp/rounds"
awk '{ printf "%-6s %10.0f %10.0f %10.0f %11.2fx %11.2fx\n", $1, $2, $3, $4, $2 / $4, $3 / $4 }' "$tmp/rounds"
verdict() {  # column label
  local col=$1 label=$2 med
  med=$(awk -v c="$col" '{ print $c / $4 }' "$tmp/rounds" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
  awk -v c="$col" -v one="$one" -v med="$med" -v label="$label" '
    { if (NR == 1 || $c < lo) lo = $c; if ($c > hi) hi = $c }
    END {
      printf "--cpu-bind %-5s: min / one rank (%d) %.2fx (goal >= 1.25), max / min %.2f (goal <= 1.15), median of run / its ceiling %.2fx (goal >= 0.85): %s\n",
        label, one, lo / one, hi / lo, med, (lo / one >= 1.25 && hi / lo <= 1.15 && med >= 0.85) ? "met" : "NOT met"
    }' "$tmp/rounds"
}
verdict 2 cores
verdict 3 none
