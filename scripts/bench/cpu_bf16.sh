#!/usr/bin/env bash
# precision: bf16 on an AVX512-BF16 CPU against fp32, in one invocation: the GEMM rate of
# Cohort's vdpbf16ps kernel and of OpenBLAS's sgemm on training shapes, then samples/s and test
# accuracy of the CNN and the MLP on Fashion-MNIST (alternating runs, median of RUNS, STEPS each).
#   scripts/bench/cpu_bf16.sh [RUNS] [STEPS]
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${COHORT_BUILD_DIR:-build}
runs=${1:-3}
steps=${2:-300}
scripts/build.sh >/dev/null
cohort="$build/launcher/cohort"
grep -q avx512_bf16 /proc/cpuinfo || { echo "cpu_bf16.sh: this CPU has no AVX512-BF16" >&2; exit 1; }
"$cohort" bench gemm
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
run() {  # prints "samples_per_s test_acc"
  "$cohort" train "$@" logging.dir="$tmp/r$RANDOM$RANDOM" train.steps="$steps" train.log_every=100000 \
    eval.max_batches=2 logging.tensorboard=false |
    sed -nE 's/^summary: .*samples_per_s ([0-9.]+) test_acc ([0-9.]+).*/\1 \2/p'
}
med() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
echo "== training, fp32 vs bf16 (samples/s, median of $runs; test accuracy of the last run) =="
printf '%-10s %12s %12s %8s %10s %10s\n' model fp32 bf16 ratio acc_fp32 acc_bf16
for model in cnn mlp; do
  f=() b=()
  for ((i = 0; i < runs; i++)); do
    read -r s af < <(run configs/fashion_mnist_$model.yaml); f+=("$s")
    read -r s ab < <(run configs/fashion_mnist_$model.yaml precision=bf16); b+=("$s")
  done
  fm=$(med "${f[@]}") bm=$(med "${b[@]}")
  printf '%-10s %12s %12s %7.2fx %10s %10s\n' "$model" "$fm" "$bm" "$(awk -v a="$bm" -v b="$fm" 'BEGIN { print a / b }')" "$af" "$ab"
done
