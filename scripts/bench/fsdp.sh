#!/usr/bin/env bash
# ZeRO-2 and FSDP against DDP, side by side in one invocation on this machine:
#  1. memory: a GPT (dim 512, 8 layers, 25M parameters, AdamW) at 4 ranks; each rank's model
#     state (parameters + gradients + optimizer, measured from its tensors) and peak RSS and
#     address space; goals fsdp <= 0.3x ddp's model state, zero2 <= 0.6x;
#  2. the cap: every rank limited (ulimit -v) halfway between fsdp's and ddp's peak address
#     space: fsdp must train, ddp must fail with an out-of-memory message naming a rank (exit 6);
#  3. speed: the small GPT (configs/tiny_gpt.yaml) on 2 ranks, RUNS runs of STEPS steps each,
#     alternating (median samples/s); goals zero2 >= 0.95x ddp, fsdp >= 0.8x; and the share of
#     fsdp's all-gather time that ran beside compute (the timeline);
#  4. checkpoints: the 25M GPT's checkpoint written by one process against the same model's
#     sharded checkpoint written by 2 ranks (mean of every write); goal <= 0.6x.
#   scripts/bench/fsdp.sh [RUNS] [STEPS]
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${COHORT_BUILD_DIR:-build}
runs=${1:-3}
steps=${2:-60}
scripts/build.sh >/dev/null
cohort="$PWD/$build/launcher/cohort"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "machine: $(nproc) cores, $(lscpu | sed -nE 's/^Model name: +//p')"

big=(configs/tiny_gpt.yaml model.dim=512 model.layers=8 model.context=64 data.batch_size=2
     train.log_every=1000 eval.max_batches=1 eval.batch_size=2 eval.every_steps=0
     logging.tensorboard=false threads=1 distributed.timeout_s=120)
# A rank's {"event":"rank"} field, rank 0's.
field() { sed -nE "s/.*\"event\":\"rank\".*\"$2\":([0-9.e+-]+).*\"rank\":0,.*/\1/p" "$1/metrics.jsonl"; }

echo "== 1. model state per rank, 25M-parameter GPT, 4 ranks"
"$cohort" train "${big[@]}" --estimate-memory --world-size 4 | sed 's/^/   /'
declare -A state rss vm
for s in ddp zero2 fsdp; do
  "$cohort" launch --nproc-per-node 4 -- "$cohort" train "${big[@]}" train.steps=3 \
    checkpoint.every_steps=1000 distributed.strategy=$s logging.dir="$tmp/mem_$s" >/dev/null 2>&1
  state[$s]=$(field "$tmp/mem_$s" model_state_mb)
  rss[$s]=$(field "$tmp/mem_$s" peak_mem_mb)
  vm[$s]=$(field "$tmp/mem_$s" peak_vm_mb)
  printf '   %-6s model state %8.1f MB  peak RSS %7.1f MB  peak address space %7.1f MB\n' \
    "$s" "${state[$s]}" "${rss[$s]}" "${vm[$s]}"
done
awk -v f="${state[fsdp]}" -v z="${state[zero2]}" -v d="${state[ddp]}" -v fr="${rss[fsdp]}" \
  -v dr="${rss[ddp]}" 'BEGIN {
  printf "   model state: fsdp %.2fx ddp (goal <= 0.30: %s), zero2 %.2fx (goal <= 0.60: %s); peak RSS: fsdp %.2fx ddp\n",
    f / d, (f / d <= 0.3 ? "met" : "NOT met"), z / d, (z / d <= 0.6 ? "met" : "NOT met"), fr / dr }'

echo "== 2. every rank capped halfway between fsdp's and ddp's peak address space"
cap_mb=$(awk -v f="${vm[fsdp]}" -v d="${vm[ddp]}" 'BEGIN { printf "%d", (f + d) / 2 }')
echo "   ulimit -v ${cap_mb} MB (fsdp peaked at ${vm[fsdp]} MB, ddp at ${vm[ddp]} MB)"
for s in fsdp ddp; do
  set +e
  (ulimit -v $((cap_mb * 1024)); "$cohort" launch --nproc-per-node 4 -- "$cohort" train \
    "${big[@]}" train.steps=3 checkpoint.every_steps=1000 distributed.strategy=$s \
    logging.dir="$tmp/cap_$s") >"$tmp/cap_$s.log" 2>&1
  rc=$?
  set -e
  printf '   %-5s exit %d: %s\n' "$s" "$rc" \
    "$(grep -m1 -oE 'rank [0-9]+ ran out of memory \([^)]*\)|summary: steps [0-9]+' "$tmp/cap_$s.log" || echo "(see log)")"
done

echo "== 3. speed: small GPT, 2 ranks, $runs runs of $steps steps (median samples/s)"
small=(configs/tiny_gpt.yaml data.batch_size=8 train.steps="$steps" train.log_every=100000
       eval.every_steps=0 eval.max_batches=1 checkpoint.every_steps=100000
       logging.tensorboard=false)
run() {  # STRATEGY EXTRA... -> samples/s
  local s=$1; shift
  "$cohort" launch --nproc-per-node 2 -- "$cohort" train "${small[@]}" distributed.strategy="$s" \
    logging.dir="$tmp/speed$RANDOM$RANDOM" "$@" 2>/dev/null |
    sed -nE 's/.*summary: .*samples_per_s ([0-9.]+).*/\1/p'
}
median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
declare -A sps
for s in ddp zero2 fsdp; do sps[$s]=""; done
for ((i = 0; i < runs; i++)); do
  for s in ddp zero2 fsdp; do sps[$s]+="$(run $s) "; done
done
for s in ddp zero2 fsdp; do
  m=$(median ${sps[$s]})
  eval "med_$s=$m"
  printf '   %-6s %8.1f samples/s  (runs: %s)\n' "$s" "$m" "${sps[$s]}"
done
awk -v d="$med_ddp" -v z="$med_zero2" -v f="$med_fsdp" 'BEGIN {
  printf "   zero2 %.2fx ddp (goal >= 0.95: %s); fsdp %.2fx ddp (goal >= 0.80: %s)\n",
    z / d, (z / d >= 0.95 ? "met" : "NOT met"), f / d, (f / d >= 0.8 ? "met" : "NOT met") }'
run fsdp logging.timeline=true logging.dir="$tmp/timeline" train.steps=20 >/dev/null
/usr/bin/python3 - "$tmp/timeline/timeline.json" <<'PY'
import json, sys
ev = [e for e in json.load(open(sys.argv[1])) if e.get("ph") == "X"]
out = []
for pid in sorted({e["pid"] for e in ev}):
    mine = [e for e in ev if e["pid"] == pid]
    gathers = sum(e["dur"] for e in mine if e["name"].startswith("all-gather"))
    waits = sum(e["dur"] for e in mine if e["name"] == "wait for all-gather")
    n = sum(1 for e in mine if e["name"].startswith("all-gather"))
    out.append(f"rank {pid}: {n} all-gathers, {100 * (1 - waits / max(gathers, 1)):.0f}% of "
               f"their time hidden behind compute")
print("   timeline: " + "; ".join(out))
PY

echo "== 4. checkpoint write: 25M GPT (+ AdamW state), 1 writer against 2 ranks' shards"
for n in 1 2; do
  args=("${big[@]}" train.steps=4 checkpoint.every_steps=1 checkpoint.keep=1
        logging.dir="$tmp/ckpt$n")
  if [ "$n" = 1 ]; then
    "$cohort" train "${args[@]}" >/dev/null 2>&1
  else
    "$cohort" launch --nproc-per-node 2 -- "$cohort" train "${args[@]}" distributed.strategy=fsdp \
      >/dev/null 2>&1
  fi
  eval "ck$n=$(sed -nE 's/.*"event":"checkpoint".*"seconds":([0-9.e+-]+).*/\1/p' \
    "$tmp/ckpt$n/metrics.jsonl" | awk '{ s += $1 } END { printf "%.4f", s / NR }')"
done
awk -v a="$ck1" -v b="$ck2" 'BEGIN {
  printf "   one writer %.3f s, 2 ranks %.3f s per checkpoint: %.2fx (goal <= 0.60: %s)\n",
    a, b, b / a, (b / a <= 0.6 ? "met" : "NOT met") }'
