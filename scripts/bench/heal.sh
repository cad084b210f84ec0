#!/usr/bin/env bash
# In-place healing against the restart path, in one invocation: 4-rank DDP on the MLP (per-rank
# batch 16, a log line every step), rank 2 SIGKILLed after step $kill.
# - cohort launch --heal: the other ranks regroup, a replacement joins and takes rank 0's state;
# - the restart path (--max-restarts 1, a checkpoint every 20 steps): every rank stops, all start
#   again and resume from the step-20 checkpoint.
# For each: the time rank 0 lost, from its log line of step kill-1 to that of step kill+1, less two
# median steps. Goal: healing costs <= 2 s plus one step.
#   scripts/bench/heal.sh [KILL_STEP]
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${COHORT_BUILD_DIR:-build}
kill=${1:-30}
scripts/build.sh >/dev/null
cohort=$build/launcher/cohort
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OPENBLAS_NUM_THREADS=1
mlp=(train configs/fashion_mnist_mlp.yaml data.batch_size=16 train.steps=$((kill + 30)) train.log_every=1
  eval.max_batches=1 eval.batch_size=500 logging.tensorboard=false checkpoint.every_steps=20)
run() { # NAME LAUNCH-FLAGS...: rank 0's step lines, each with the time it was printed
  local name=$1
  shift
  COHORT_KILL_AT_STEP=2:$kill "$cohort" launch --nproc-per-node 4 "$@" -- "$cohort" "${mlp[@]}" \
    logging.dir="$tmp/$name" 2>&1 | while IFS= read -r line; do printf '%s %s\n' "$(date +%s.%N)" "$line"; done \
    >"$tmp/$name.log"
}
lost() { # NAME: seconds lost around the kill
  /usr/bin/python3 - "$tmp/$1.log" "$kill" <<'PY'
import re, statistics, sys
kill = int(sys.argv[2])
first, last = {}, {}  # when each step was printed first, and last (after a restart: again)
for line in open(sys.argv[1]):
    t, _, rest = line.partition(" ")
    m = re.search(r"\[0/0\] step (\d+)/", rest)
    if m:
        first.setdefault(int(m.group(1)), float(t))
        last[int(m.group(1))] = float(t)
steps = sorted(first)
gaps = [first[b] - first[a] for a, b in zip(steps, steps[1:]) if b == a + 1 and b < kill - 1]
step = statistics.median(gaps)
print(f"{last[kill + 1] - first[kill - 1] - 2 * step:.3f} {step * 1000:.1f}")
PY
}
echo "== 4-rank DDP, MLP, batch 16 per rank: rank 2 SIGKILLed after step $kill =="
run heal --heal --max-restarts 1
run restart --max-restarts 1
read -r heal_s step_ms <<<"$(lost heal)"
read -r restart_s _ <<<"$(lost restart)"
grep -h "healed in" "$tmp/heal.log" | cut -d' ' -f2- || true
printf 'median step: %s ms\n' "$step_ms"
printf 'healing in place: rank 0 lost %s s (goal: <= 2 s + one step)\n' "$heal_s"
printf 'restart path (stop, restart, reload the step-20 checkpoint, redo the steps since): rank 0 lost %s s\n' "$restart_s"
awk -v h="$heal_s" -v r="$restart_s" 'BEGIN { printf "healing / restart: %.3f\n", h / r }'
