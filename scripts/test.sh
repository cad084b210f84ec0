#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test (GoogleTest through CTest).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --tests
scripts/build.sh
build=${COHORT_BUILD_DIR:-build}
(cd "$build" && ctest --output-on-failure -j "$(nproc)" --timeout 900)
# Every reader of untrusted bytes under libFuzzer, ASan and UBSan for a few seconds each (a clang
# build of its own in build-fuzz; scripts/fuzz.sh SECONDS runs longer campaigns).
scripts/fuzz.sh "${COHORT_FUZZ_SECONDS:-10}"
