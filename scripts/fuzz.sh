#!/usr/bin/env bash
# Fuzzes every reader of untrusted bytes with libFuzzer under ASan and UBSan: the store's request
# path, IDX, tokens, safetensors, checkpoint manifests, configs, .npy, CSV and images. Builds them with clang into
# ${COHORT_FUZZ_BUILD_DIR:-build-fuzz} (no CUDA, MPI or gRPC: none of them parse these inputs) and
# runs each target for SECONDS (default 30) from its seed corpus in fuzz/corpus/<target>, in a
# scratch copy so that the repository's seeds stay as committed. Exits non-zero on the first crash,
# sanitizer report or leak, leaving the input that caused it in the build directory.
#   usage: scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(store_protocol idx token safetensors manifest config npy csv image)
build=${COHORT_FUZZ_BUILD_DIR:-build-fuzz}
if [ ! -f "$build/build.ninja" ]; then
  CC=clang CXX=clang++ cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCOHORT_BUILD_FUZZERS=ON -DCOHORT_SANITIZE=address,undefined -DCOHORT_USE_CUDA=OFF \
    -DCOHORT_USE_NCCL=OFF -DCOHORT_USE_MPI=OFF -DCOHORT_USE_GRPC=OFF -DCOHORT_BUILD_TESTS=OFF \
    -DCOHORT_BUILD_BENCHMARKS=OFF -DCOHORT_BUILD_EXAMPLES=OFF >/dev/null
fi
cmake --build "$build" -j "$(nproc)" --target "${targets[@]/#/fuzz_}"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
passed=0
for t in "${targets[@]}"; do
  corpus="$build/corpus/$t"
  mkdir -p "$corpus"
  cp -n fuzz/corpus/"$t"/* "$corpus"/ 2>/dev/null || true
  log="$build/fuzz_$t.log"
  if ! (cd "$build" && "./fuzz/fuzz_$t" -max_total_time="$seconds" -rss_limit_mb=2048 \
    -timeout=10 -print_final_stats=1 "corpus/$t" >"fuzz_$t.log" 2>&1); then
    echo "fuzz: $t failed; its report and the input are in $build:" >&2
    tail -40 "$log" >&2
    exit 1
  fi
  runs=$(grep -m1 'stat::number_of_executed_units' "$log" | awk '{print $2}')
  echo "fuzz: $t: ${runs:-?} executions in ${seconds} s, no crash, no sanitizer report, no leak"
  passed=$((passed + 1))
done
echo "fuzz: $passed passed, 0 failed"
