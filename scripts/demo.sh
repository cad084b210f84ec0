#!/usr/bin/env bash
# The main job on the embedded default: installs what is missing, builds, and trains the MLP on
# Fashion-MNIST (Debian's dataset-fashion-mnist), printing the test accuracy.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
build=${COHORT_BUILD_DIR:-build}
"$build/launcher/cohort" train configs/fashion_mnist_mlp.yaml logging.dir=runs/demo "$@"
acc=$(grep '"event":"summary"' runs/demo/metrics.jsonl | sed -E 's/.*"test_acc":([0-9.]+).*/\1/')
echo "demo: Fashion-MNIST MLP test accuracy ${acc} (metrics in runs/demo/metrics.jsonl)"
