#!/usr/bin/env bash
# checkpoint.async against synchronous checkpoints, in one invocation: 2-rank DDP on a small GPT
# (configs/tiny_gpt.yaml at dim $dim, $layers layers: parameters and AdamW's two moments, written
# as every rank's shard of each tensor), a checkpoint every $every steps. For each mode, the mean
# stall per checkpoint (training waits: the whole write when synchronous, the copy to host memory
# when async), the background write's own time, and the run's training seconds.
# Goal: the async stall <= 10% of the synchronous write.
#   scripts/bench/checkpoint.sh [STEPS] [EVERY]
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${COHORT_BUILD_DIR:-build}
steps=${1:-60}
every=${2:-10}
dim=${COHORT_BENCH_DIM:-384}
layers=${COHORT_BENCH_LAYERS:-6}
scripts/build.sh >/dev/null
cohort=$build/launcher/cohort
tmp=$(mktemp -d "${COHORT_BENCH_TMP:-/var/tmp}/cohort-ckpt-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
export OPENBLAS_NUM_THREADS=1
gpt=(train configs/tiny_gpt.yaml model.dim="$dim" model.layers="$layers" model.heads=6 data.batch_size=4
  train.steps="$steps" train.log_every=100000 eval.every_steps=0 eval.max_batches=1
  logging.tensorboard=false checkpoint.every_steps="$every" checkpoint.keep=2)
run() { "$cohort" launch --nproc-per-node 2 -- "$cohort" "${gpt[@]}" checkpoint.async="$1" logging.dir="$tmp/$1" 2>&1 |
  sed -nE 's/.*summary: .*train_s ([0-9.]+).*/\1/p' | tail -n 1; }
mean() { # EVENT [ASYNC]: the mean "seconds" of rank 0's records of EVENT in $tmp/$2/metrics.jsonl
  /usr/bin/python3 - "$tmp/$2/metrics.jsonl" "$1" <<'PY'
import json, sys
v = [r["seconds"] for r in map(json.loads, open(sys.argv[1])) if r.get("event") == sys.argv[2]]
print(f"{sum(v) / len(v):.4f} {len(v)}" if v else "nan 0")
PY
}
echo "== 2-rank DDP, GPT dim $dim x $layers layers, $steps steps, a checkpoint every $every steps =="
sync_train=$(run false)
async_train=$(run true)
read -r sync_stall n_sync <<<"$(mean checkpoint false)"
read -r async_stall n_async <<<"$(mean checkpoint true)"
read -r async_write n_write <<<"$(mean checkpoint_written true)"
size=$(du -sb "$(ls -d "$tmp"/false/checkpoints/step_* | tail -n 1)" | cut -f1)
printf 'checkpoint size: %.1f MB (2 shards)\n' "$(awk -v b="$size" 'BEGIN { print b / 1e6 }')"
printf 'synchronous: stall %.4f s per checkpoint (%d), training %s s\n' "$sync_stall" "$n_sync" "$sync_train"
printf 'async:       stall %.4f s per checkpoint (%d), background write %.4f s (%d), training %s s\n' \
  "$async_stall" "$n_async" "$async_write" "$n_write" "$async_train"
awk -v a="$async_stall" -v s="$sync_stall" -v ta="$async_train" -v ts="$sync_train" 'BEGIN {
  printf "async stall / synchronous write: %.3f (goal: <= 0.10)\n", a / s
  printf "training time async / synchronous: %.3f\n", ta / ts }'
