#!/usr/bin/env bash
# Bring-your-own model and data against the built-ins, in one invocation on this machine:
# - the built-in CNN (model.type cnn) against the same network written as a sequential config
#   (configs/fashion_mnist_sequential.yaml without its batch norms): samples/s and test accuracy;
#   goal >= 0.95x the samples/s, the same accuracy;
# - Fashion-MNIST from the built-in IDX loader against the same images as .npy arrays (uint8
#   [N, 1, 28, 28], written here with numpy) with the built-in's normalisation: goal within 5%.
# Runs alternate, RUNS of each (median), STEPS steps each.
#   scripts/bench/byo.sh [RUNS] [STEPS]
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${COHORT_BUILD_DIR:-build}
runs=${1:-5}
steps=${2:-300}
scripts/build.sh >/dev/null
cohort="$build/launcher/cohort"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
/usr/bin/python3 - "$tmp" <<'PY'
import gzip, struct, sys, numpy as np
def idx(p):
    raw = gzip.open(p).read(); d = raw[3]
    shape = struct.unpack(">" + "I" * d, raw[4:4 + 4 * d])
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * d).reshape(shape)
D = "/usr/share/datasets/fashion-mnist/"
np.save(sys.argv[1] + "/x.npy", idx(D + "train-images-idx3-ubyte.gz").reshape(-1, 1, 28, 28))
np.save(sys.argv[1] + "/y.npy", idx(D + "train-labels-idx1-ubyte.gz").astype(np.int64))
PY
cat >"$tmp/seq.yaml" <<'YAML'
model:
  type: sequential
  layers:
    - conv2d: {out: 32, kernel: 3, padding: 1}
    - relu
    - max_pool2d: {kernel: 2}
    - conv2d: {out: 64, kernel: 3, padding: 1}
    - relu
    - max_pool2d: {kernel: 2}
    - flatten
    - linear: {out: 128}
    - relu
    - linear: {out: 10}
optimizer: {type: sgd, lr: 0.02, momentum: 0.9}
YAML
common=(train.steps="$steps" train.log_every=100000 eval.max_batches=2 logging.tensorboard=false
        checkpoint.every_steps=100000 data.batch_size=64)
# 0.2860 and 0.3530 of 255: the built-in loader's normalisation.
npy=(data.dataset=npy data.inputs="$tmp/x.npy" data.targets="$tmp/y.npy" data.val_fraction=0
     data.mean=[72.93] data.std=[90.015])
run() {  # prints "samples_per_s test_acc"
  "$cohort" train "$@" logging.dir="$tmp/run$RANDOM$RANDOM" "${common[@]}" |
    sed -nE 's/^summary: .*samples_per_s ([0-9.]+) test_acc ([0-9.]+).*/\1 \2/p'
}
cnn=() seq=() idx=() arr=()
for ((i = 0; i < runs; i++)); do
  read -r s a_cnn < <(run configs/fashion_mnist_cnn.yaml); cnn+=("$s")
  read -r s a_seq < <(run "$tmp/seq.yaml"); seq+=("$s")
  read -r s _ < <(run configs/fashion_mnist_cnn.yaml eval.max_batches=1); idx+=("$s")
  read -r s _ < <(run configs/fashion_mnist_cnn.yaml "${npy[@]}"); arr+=("$s")
done
med() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }
echo "== model from the config vs built-in (CNN, batch 64, $steps steps, median of $runs) =="
printf '%-36s %12s %10s\n' "" samples/s test_acc
printf '%-36s %12s %10s\n' "built-in model.type cnn" "$(med "${cnn[@]}")" "$a_cnn"
printf '%-36s %12s %10s\n' "model.type sequential (same layers)" "$(med "${seq[@]}")" "$a_seq"
echo "sequential / built-in: $(ratio "$(med "${seq[@]}")" "$(med "${cnn[@]}")")x (goal >= 0.95x, same test_acc)"
echo "== data from .npy vs the built-in Fashion-MNIST loader (CNN, same shapes, median of $runs) =="
printf '%-36s %12s\n' "" samples/s
printf '%-36s %12s\n' "data.dataset fashion_mnist" "$(med "${idx[@]}")"
printf '%-36s %12s\n' "data.dataset npy (uint8, mapped)" "$(med "${arr[@]}")"
echo "npy / built-in: $(ratio "$(med "${arr[@]}")" "$(med "${idx[@]}")")x (goal within 5%)"
