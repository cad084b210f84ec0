#!/usr/bin/env bash
# GPT-2 small (124M) on one GPU: Cohort and PyTorch 2 (scripts/bench/torch_gpt2.py, the same model
# with the same parameter names) in one invocation, batch 8 x 1024 tokens, AdamW, bf16.
#  1. loss: both start from the same initial weights (written by PyTorch, read by Cohort through
#     model.init_from) and train 50 steps on the same sequential batches of a byte-token file made
#     from this repository's sources; prints the largest relative difference of the step losses.
#  2. speed: tokens/s of Cohort (precision: bf16) against PyTorch eager under bf16 autocast and
#     PyTorch with torch.compile, after 10 warm-up steps, and model FLOPs utilisation (6 x
#     parameters x tokens/s against the GPU's dense bf16 peak, 989 TFLOP/s for an H100/H200 SXM).
#   scripts/bench/gpt2_gpu.sh [STEPS]   (default 60: 10 warm-up + 50 timed)
# GPT2_QUICK=1 times Cohort alone (no loss comparison, no PyTorch): for iterating, not reporting.
set -euo pipefail
cd "$(dirname "$0")/../.."
steps=${1:-60}
cohort=${COHORT_BIN:-build/launcher/cohort}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ref=scripts/bench/torch_gpt2.py
params=124439808 peak=989e12

python3 $ref tokens "$tmp/tok.bin" $(find core collectives trainer launcher tests -name '*.cc' | sort) >/dev/null
python3 $ref init "$tmp/init.safetensors"
common=(configs/gpt2_124m.yaml device=cuda precision=bf16 data.dataset=tokens data.path="$tmp/tok.bin"
        data.shuffle=false data.val_fraction=0 model.init_from="$tmp/init.safetensors"
        schedule.type=constant optimizer.lr=0.0003 eval.every_steps=0)

echo "gpu: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1); torch: $(python3 -c 'import torch; print(torch.__version__)')"
if [[ ${GPT2_QUICK:-0} == 1 ]]; then
  t10=$("$cohort" train "${common[@]}" train.steps=10 train.log_every=100000 logging.dir="$tmp/q10" | sed -nE 's/^summary: .*train_s ([0-9.]+).*/\1/p')
  tn=$("$cohort" train "${common[@]}" train.steps="$steps" train.log_every=100000 logging.dir="$tmp/qn" | sed -nE 's/^summary: .*train_s ([0-9.]+).*/\1/p')
  awk -v a="$t10" -v b="$tn" -v n="$steps" 'BEGIN { printf "cohort bf16 %.0f tokens/s (quick run, no reference)\n", (n - 10) * 8192 / (b - a) }'
  exit 0
fi
# 1. losses
PRINT_LOSSES=1 python3 $ref train "$tmp/tok.bin" "$tmp/init.safetensors" eager-bf16 50 |
  sed -nE 's/^step ([0-9]+) loss ([0-9.]+)/\1 \2/p' >"$tmp/torch.loss"
"$cohort" train "${common[@]}" train.steps=50 train.log_every=1 logging.dir="$tmp/loss" |
  sed -nE 's|^step ([0-9]+)/[0-9]+ .*loss ([0-9.]+).*|\1 \2|p' >"$tmp/cohort.loss"
awk 'NR == FNR { torch[$1] = $2; next }
  ($1 in torch) { n++; d = ($2 - torch[$1]) / torch[$1]; if (d < 0) d = -d
    if (d > worst) { worst = d; at = $1 }
    if ($1 == 1 || $1 % 10 == 0) printf "step %2d loss cohort %.4f torch %.4f\n", $1, $2, torch[$1] }
  END { printf "loss over %d steps: largest relative difference %.2f%% (step %d); goal <= 1%%\n", n, 100 * worst, at }' \
  "$tmp/torch.loss" "$tmp/cohort.loss"

# 2. speed: the difference of a 10-step run and a STEPS-step run leaves out start-up and warm-up.
train_s() {
  "$cohort" train "${common[@]}" train.steps="$1" train.log_every=100000 logging.dir="$tmp/s$1" |
    sed -nE 's/^summary: .*train_s ([0-9.]+).*/\1/p'
}
t10=$(train_s 10)
tn=$(train_s "$steps")
ours=$(awk -v a="$t10" -v b="$tn" -v n="$steps" 'BEGIN { printf "%.0f", (n - 10) * 8192 / (b - a) }')
eager=$(python3 $ref train "$tmp/tok.bin" "$tmp/init.safetensors" eager-bf16 "$steps" | sed -nE 's/.*tokens_per_s ([0-9]+).*/\1/p')
compiled=$(python3 $ref train "$tmp/tok.bin" "$tmp/init.safetensors" compile-bf16 "$steps" 2>/dev/null | sed -nE 's/.*tokens_per_s ([0-9]+).*/\1/p')
mfu() { awk -v t="$1" -v p=$params -v k=$peak 'BEGIN { printf "%.1f%%", 100 * 6 * p * t / k }'; }
printf 'cohort bf16        %8d tokens/s  MFU %s\n' "$ours" "$(mfu "$ours")"
printf 'torch eager bf16   %8d tokens/s  MFU %s  cohort/eager   %.2fx (goal >= 1.0)\n' "$eager" "$(mfu "$eager")" "$(awk -v a="$ours" -v b="$eager" 'BEGIN { print a / b }')"
printf 'torch compile bf16 %8d tokens/s  MFU %s  cohort/compile %.2fx (goal >= 0.8)\n' "$compiled" "$(mfu "$compiled")" "$(awk -v a="$ours" -v b="$compiled" 'BEGIN { print a / b }')"
