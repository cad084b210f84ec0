#!/usr/bin/env bash
# Single-core training benchmark: Cohort's `cohort train` and PyTorch's reference
# (../shared/bench/fmnist.py) side by side in one invocation, on core 0, printing ratios.
#   scripts/bench/train_cpu.sh [mlp|cnn|mlp2|matmul|all]
set -euo pipefail
cd "$(dirname "$0")/../.."
what=${1:-all}
build=${COHORT_BUILD_DIR:-build}
ref=${COHORT_REF_DIR:-../shared/bench}
scripts/build.sh >/dev/null

# The reference environment of shared/bench/README.md. SkylakeX kernels only where the CPU has AVX-512
# (elsewhere OpenBLAS would die of an illegal instruction); Cohort picks its kernels by itself.
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
ref_env=()
grep -q avx512f /proc/cpuinfo && ref_env=(OPENBLAS_CORETYPE=SkylakeX)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# peak RSS (KiB) and output of a command
measure() {
  /usr/bin/python3 - "$@" <<'PY'
import resource, subprocess, sys
out = subprocess.run(sys.argv[1:], capture_output=True, text=True)
sys.stdout.write(out.stdout)
if out.returncode: sys.stderr.write(out.stderr); sys.exit(out.returncode)
print("peak_rss_kib=%d" % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
PY
}
div() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f", a / b }'; }
field() { sed -nE "s/.*$1[= ]([0-9.]+).*/\1/p" | tail -n 1; }

median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
# This machine's speed wanders by tens of percent from one minute to the next (a shared host), so
# each pair runs in $rounds alternating rounds, each giving a ratio, and the median ratio is the
# result; every round is printed.
rounds=${COHORT_BENCH_ROUNDS:-3}

run_pair() {  # name model epochs batch
  local name=$1 model=$2 epochs=$3 batch=$4
  local ours theirs speeds=() o_sps o_acc o_rss t_sps t_acc t_rss r
  for r in $(seq "$rounds"); do
    ours=$(measure taskset -c 0 "$build/launcher/cohort" train "configs/fashion_mnist_$model.yaml" threads=1 \
             train.epochs="$epochs" data.batch_size="$batch" train.log_every=100000 logging.dir="$tmp/$name$r")
    theirs=$(cd "$ref" && measure env "${ref_env[@]}" taskset -c 0 /usr/bin/python3 fmnist.py "$model" "$epochs" "$batch")
    o_sps=$(echo "$ours" | field samples_per_s); o_acc=$(echo "$ours" | field test_acc); o_rss=$(echo "$ours" | field peak_rss_kib)
    t_sps=$(echo "$theirs" | field samples_per_s); t_acc=$(echo "$theirs" | field test_acc); t_rss=$(echo "$theirs" | field peak_rss_kib)
    speeds+=("$(div "$o_sps" "$t_sps")")
    printf '%-12s cohort %8.0f samples/s acc %.4f rss %6.0f MiB | torch %8.0f samples/s acc %.4f rss %6.0f MiB | speed %.2fx rss %.2fx\n' \
      "$name.$r" "$o_sps" "$o_acc" "$(div "$o_rss" 1024)" "$t_sps" "$t_acc" "$(div "$t_rss" 1024)" \
      "$(div "$o_sps" "$t_sps")" "$(div "$o_rss" "$t_rss")"
  done
  printf '%-12s speed %.2fx (median of %d rounds: %s)\n' "$name" \
    "$(printf '%s\n' "${speeds[@]}" | median)" "$rounds" "${speeds[*]}"
}

echo "cpu: $(lscpu | sed -nE 's/^Model name: +//p'); torch: $(/usr/bin/python3 -c 'import torch; print(torch.__version__)')"
case $what in mlp|all) run_pair mlp_1epoch mlp 1 128 ;; esac
case $what in cnn|all) run_pair cnn_1epoch cnn 1 64 ;; esac
case $what in mlp2|all) run_pair mlp_2epochs mlp 2 128 ;; esac
case $what in matmul|all) taskset -c 0 "$build/benchmarks/cohort_bench_matmul" ;; esac
echo "goals: mlp speed >= 1.25x, acc >= 0.84; cnn speed >= 1.5x, acc >= 0.875; mlp 2 epochs acc >= 0.87, rss <= 1.0x; matmul >= 0.85"
