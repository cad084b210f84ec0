#!/usr/bin/env bash
# GPU training benchmark: `cohort train` and PyTorch (scripts/bench/torch_fmnist_gpu.py, eager,
# data resident on the GPU) on the same GPU in one invocation, printing the ratios.
#   scripts/bench/train_gpu.sh [cnn|mlp|all]
# COHORT_BIN (default build/launcher/cohort) and COHORT_DATA (default Debian's Fashion-MNIST)
# point elsewhere, as scripts/gpu-test.sh does on the GPU machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
what=${1:-all}
cohort=${COHORT_BIN:-build/launcher/cohort}
data=${COHORT_DATA:-/usr/share/datasets/fashion-mnist}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
div() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
field() { sed -nE "s/.*$1[= ]([0-9.]+).*/\1/p" | tail -n 1; }

run_pair() {  # model batch
  local model=$1 batch=$2 ours theirs
  ours=$("$cohort" train "configs/fashion_mnist_$model.yaml" device=cuda data.path="$data" \
    train.epochs=1 data.batch_size="$batch" train.log_every=100000 logging.dir="$tmp/$model")
  theirs=$(python3 scripts/bench/torch_fmnist_gpu.py "$model" 1 "$batch" "$data")
  local o_sps o_acc t_sps t_acc
  o_sps=$(echo "$ours" | field samples_per_s); o_acc=$(echo "$ours" | field test_acc)
  t_sps=$(echo "$theirs" | field samples_per_s); t_acc=$(echo "$theirs" | field test_acc)
  printf '%-4s batch %-4s cohort %8.0f samples/s acc %.4f | torch %8.0f samples/s acc %.4f | speed %sx\n' \
    "$model" "$batch" "$o_sps" "$o_acc" "$t_sps" "$t_acc" "$(div "$o_sps" "$t_sps")"
}

echo "gpu: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1); torch: $(python3 -c 'import torch; print(torch.__version__)')"
case $what in cnn|all) run_pair cnn 64 ;; esac
case $what in mlp|all) run_pair mlp 128 ;; esac
echo "goal: cnn speed >= 1.0x PyTorch on the same GPU"
