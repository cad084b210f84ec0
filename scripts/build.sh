#!/usr/bin/env bash
# Configures and builds Cohort into ${COHORT_BUILD_DIR:-build} (incremental; ccache when present).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${COHORT_BUILD_DIR:-build}
if [ ! -f "$build/build.ninja" ]; then
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release ${COHORT_CMAKE_ARGS:-}
fi
cmake --build "$build" -j "$(nproc)"
