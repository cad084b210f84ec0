#!/usr/bin/env bash
# The unit suites under sanitizers, built with clang into build-asan / build-tsan:
#   address   ASan + UBSan, every unit suite (core, collectives, parameter server, trainer, launcher)
#   thread    TSan, the suites of the collectives and the store (threads standing in for ranks)
# CUDA is off (nothing CUDA runs on a machine without a GPU). Exits non-zero on the first report.
#   usage: scripts/sanitize.sh [address|thread]...     (default: both)
set -euo pipefail
cd "$(dirname "$0")/.."
kinds=("$@")
[ ${#kinds[@]} -gt 0 ] || kinds=(address thread)
unit=(core_tensor_test core_autograd_test core_gradcheck_test core_threads_test core_data_test
  core_checkpoint_test core_torch_reference_test collectives_store_test
  collectives_process_group_test collectives_ddp_test ps_test trainer_config_test
  trainer_loss_scaler_test launcher_worker_env_test)
collectives=(collectives_store_test collectives_process_group_test collectives_ddp_test)
for kind in "${kinds[@]}"; do
  case "$kind" in
    address) build=build-asan flags=address,undefined suites=("${unit[@]}") ;;
    thread) build=build-tsan flags=thread suites=("${collectives[@]}") ;;
    *) echo "sanitize: unknown kind '$kind' (address or thread)" >&2; exit 2 ;;
  esac
  if [ ! -f "$build/build.ninja" ]; then
    CC=clang CXX=clang++ cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DCOHORT_SANITIZE="$flags" -DCOHORT_USE_CUDA=OFF -DCOHORT_USE_NCCL=OFF \
      -DCOHORT_BUILD_BENCHMARKS=OFF -DCOHORT_BUILD_EXAMPLES=OFF >/dev/null
  fi
  cmake --build "$build" -j "$(nproc)" --target "${suites[@]}" cohort
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:detect_stack_use_after_return=1
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  export TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1
  for s in "${suites[@]}"; do
    log="$build/$s.log"
    if ! (cd "$build" && "tests/$s" --gtest_brief=1 >"$s.log" 2>&1); then
      echo "sanitize: $kind: $s failed; the report is in $log:" >&2
      grep -m1 -A30 -E "ERROR: |WARNING: ThreadSanitizer|runtime error|FAILED" "$log" >&2 || tail -30 "$log" >&2
      exit 1
    fi
    echo "sanitize: $kind: $s clean ($(grep -m1 -oE '[0-9]+ tests? from [0-9]+ test suites? ran' "$log" || echo ran))"
  done
done
