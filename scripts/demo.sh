#!/usr/bin/env bash
# The main job on the embedded default: installs what is missing, builds, and trains the MLP on
# Fashion-MNIST (Debian's dataset-fashion-mnist) data-parallel on 2 ranks through `cohort launch`,
# printing the test accuracy.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
build=${COHORT_BUILD_DIR:-build}
# 2 ranks of batch 64: the global batch of the config's single-process 128. Each demo is a run of
# its own (a run directory holds one run).
run=runs/demo-$(date +%Y%m%d-%H%M%S)
"$build/launcher/cohort" launch --nproc-per-node 2 -- \
  "$build/launcher/cohort" train configs/fashion_mnist_mlp.yaml data.batch_size=64 \
  logging.dir="$run" "$@"
acc=$(grep '"event":"summary"' "$run/metrics.jsonl" | sed -E 's/.*"test_acc":([0-9.]+).*/\1/')
echo "demo: Fashion-MNIST MLP on 2 ranks, test accuracy ${acc} (metrics in $run/metrics.jsonl)"
