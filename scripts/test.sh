#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test (GoogleTest through CTest).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --tests
scripts/build.sh
build=${COHORT_BUILD_DIR:-build}
cd "$build"
ctest --output-on-failure -j "$(nproc)" --timeout 900
