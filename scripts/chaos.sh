#!/usr/bin/env bash
# Crash safety, measured: N trials of each kind against one unbroken reference run, every model
# compared byte for byte with it.
#   restart kills     a random rank SIGKILLs itself after a random step (COHORT_KILL_AT_STEP);
#                     `cohort launch --max-restarts 3` restarts the job, which resumes from its
#                     last checkpoint (checkpoint.resume=auto)
#   checkpoint kills  rank 0 (the one that writes checkpoints, one every step here) is SIGKILLed
#                     from outside at a random moment; how many kills landed inside a write is
#                     counted from the half-written directory they left
# Prints the counts and exits 1 if any trial ended with a different model, or failed.
#   usage: scripts/chaos.sh [N]        (default 10; the test suite runs it with 2)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-10}
build=${COHORT_BUILD_DIR:-build}
case "$build" in /*) ;; *) build="$PWD/$build" ;; esac
cohort="$build/launcher/cohort"
[ -x "$cohort" ] || { echo "chaos: $cohort is missing; run scripts/build.sh" >&2; exit 2; }
work=$(mktemp -d "${TMPDIR:-/tmp}/cohort-chaos-XXXXXX")
launcher=""
cleanup() {
  [ -n "$launcher" ] && kill -9 "$launcher" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

steps=24
# A 2-rank MLP run that checkpoints every `every` steps into DIR and resumes from it. Its 5 MB
# of checkpoint take longer to write than a step takes to train, so that a kill at a random
# moment of a run that checkpoints every step often lands inside a write.
train() { # DIR EVERY
  echo "$cohort" train configs/fashion_mnist_mlp.yaml model.hidden=[512,512] data.batch_size=32 \
    threads=1 train.steps=$steps train.log_every=100 eval.max_batches=1 \
    checkpoint.every_steps="$2" checkpoint.keep=2 checkpoint.resume=auto logging.dir="$1"
}
# The final model as one file (2 ranks write a sharded checkpoint), the same bytes for the same
# values.
final() {
  "$cohort" checkpoint consolidate "$1/checkpoints/step_$steps" -o "$1/final.safetensors" >/dev/null
  echo "$1/final.safetensors"
}

"$cohort" launch --nproc-per-node 2 -- $(train "$work/reference" 4) >"$work/reference.log" 2>&1 ||
  { echo "chaos: the reference run failed:" >&2; tail -20 "$work/reference.log" >&2; exit 1; }
reference=$(final "$work/reference")

failed=0
same_restart=0
for i in $(seq 1 "$n"); do
  rank=$((RANDOM % 2))
  step=$((1 + RANDOM % (steps - 1)))
  dir="$work/restart$i"
  if ! COHORT_KILL_AT_STEP=$rank:$step "$cohort" launch --max-restarts 3 --nproc-per-node 2 -- \
    $(train "$dir" 4) >"$dir.log" 2>&1; then
    echo "chaos: restart trial $i (rank $rank killed after step $step) failed:" >&2
    tail -20 "$dir.log" >&2
    failed=1
  elif cmp -s "$(final "$dir")" "$reference"; then
    same_restart=$((same_restart + 1))
  else
    echo "chaos: restart trial $i (rank $rank killed after step $step) ended with another model" >&2
    failed=1
  fi
done

same_write=0
mid_write=0
for i in $(seq 1 "$n"); do
  dir="$work/write$i"
  "$cohort" launch --max-restarts 3 --nproc-per-node 2 -- $(train "$dir" 1) >"$dir.log" 2>&1 &
  launcher=$!
  # Once training runs (its first checkpoint is there), wait a random 0-199 ms and kill rank 0
  # wherever it is.
  for _ in $(seq 1 3000); do
    compgen -G "$dir/checkpoints/step_*" >/dev/null && break
    sleep 0.01
  done
  sleep "0.$(printf %03d $((RANDOM % 200)))"
  victim=""
  for pid in $(pgrep -P "$launcher" || true); do
    if tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx COHORT_RANK=0; then victim=$pid; fi
  done
  if [ -n "$victim" ]; then
    kill -9 "$victim" 2>/dev/null || true
    compgen -G "$dir/checkpoints/.step_*" >/dev/null && mid_write=$((mid_write + 1))
  fi
  if ! wait "$launcher"; then
    echo "chaos: checkpoint trial $i failed:" >&2
    tail -20 "$dir.log" >&2
    failed=1
  elif cmp -s "$(final "$dir")" "$reference"; then
    same_write=$((same_write + 1))
  else
    echo "chaos: checkpoint trial $i ended with another model" >&2
    failed=1
  fi
  launcher=""
done

echo "chaos: restart kills: $same_restart of $n runs byte-equal to the unbroken run"
echo "chaos: checkpoint kills: $same_write of $n runs byte-equal ($mid_write kills landed inside a checkpoint write)"
leftover=$(find /dev/shm -maxdepth 1 -name 'cohort-*' -user "$(id -u)" 2>/dev/null | while read -r f; do
  pid=$(basename "$f" | sed -E 's/^cohort-([0-9]+)_.*/\1/')
  [ -d "/proc/$pid" ] || echo "$f"
done)
if [ -n "$leftover" ]; then
  echo "chaos: shared memory left by dead processes: $leftover" >&2
  failed=1
fi
exit "$failed"
