#!/usr/bin/env bash
# The flight recorder's cost and a hang's diagnosis, in one invocation:
# - 2-rank DDP on the MLP (per-rank batch 64, 1 epoch of Fashion-MNIST) with the recorder on
#   (the default) and off (COHORT_FLIGHT_RECORDER_SIZE=0), alternating for $rounds rounds; the
#   median of the on/off ratios of samples/s (goal: the recorder costs <= 1%), and the cost of one
#   recorded operation measured alone.
# - a rank slowed past distributed.timeout_s: seconds from the timeout firing (rank 0's error
#   line) to the launcher's diagnosis line (goal: <= 5 s).
# - the mpi backend's check that every rank issues the same collective and size, on vs off.
#   scripts/bench/diagnose.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${COHORT_BUILD_DIR:-build}
rounds=${1:-5}
scripts/build.sh >/dev/null
cohort=$build/launcher/cohort
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OPENBLAS_NUM_THREADS=1
field() { sed -nE "s/.*$1[= ]([0-9.]+).*/\1/p" | tail -n 1; }
mlp=(train configs/fashion_mnist_mlp.yaml data.batch_size=64 train.log_every=100000 logging.tensorboard=false)
ddp() { env "$@" "$cohort" launch --nproc-per-node 2 -- "$cohort" "${mlp[@]}" logging.dir="$tmp/run$RANDOM" 2>&1 | field samples_per_s; }
echo "== 2-rank DDP, MLP, batch 64 per rank, 1 epoch: flight recorder on / off (samples/s) =="
ratios=()
for r in $(seq "$rounds"); do
  on=$(ddp COHORT_FLIGHT_RECORDER_SIZE=2048)
  off=$(ddp COHORT_FLIGHT_RECORDER_SIZE=0)
  ratios+=("$(awk -v a="$on" -v b="$off" 'BEGIN { printf "%.3f", a / b }')")
  printf 'round %d: on %s, off %s, on/off %s\n' "$r" "$on" "$off" "${ratios[-1]}"
done
med=$(printf '%s\n' "${ratios[@]}" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
echo "median on/off: ${med}x (goal: >= 0.99x)"

# The mpi backend's agreement check (every rank's operation and size, compared before each
# collective) on vs off: the latency of one all-reduce, 8 bytes and 32 KB, 2 ranks under mpirun.
if ls "$build"/lib/libcohort_mpi.so* >/dev/null 2>&1; then
  echo "== the mpi backend's collective check: one all-reduce, 2 ranks under mpirun (us; median of $rounds runs) =="
  lat() { env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 COHORT_MPI_CHECK_COLLECTIVES="$1" \
    mpirun --oversubscribe -np 2 -x COHORT_MPI_CHECK_COLLECTIVES "$cohort" bench collectives --backend mpi \
    -b 8 -e 32K -f 4096 --iters 500 2>/dev/null | awk -v b="$2" '$1 == b { print $2 }'; }
  for bytes in 8 32768; do
    on=() off=()
    for r in $(seq "$rounds"); do on+=("$(lat 1 "$bytes")"); off+=("$(lat 0 "$bytes")"); done
    m_on=$(printf '%s\n' "${on[@]}" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
    m_off=$(printf '%s\n' "${off[@]}" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
    awk -v b="$bytes" -v a="$m_on" -v o="$m_off" \
      'BEGIN { printf "%6d bytes: check on %.1f us, off %.1f us: +%.1f us per collective\n", b, a, o, a - o }'
  done
fi

# One operation's bookkeeping alone: queued, started and ended, a million times.
cat >"$tmp/one.cc" <<'CC'
#include <chrono>
#include <cstdio>
#include "collectives/flight_recorder.h"
int main() {
  cohort::collectives::FlightRecorder r(2048);
  const int g = r.next_group();
  const int n = 1000000;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < n; ++i) {
    const uint64_t id = r.queued(g, true, "allreduce", 4096, -1);
    r.started(id, i);
    r.ended(id, true);
  }
  std::printf("%.0f", std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count() / n);
}
CC
g++ -O2 -std=c++20 -I. -I"$build/generated" "$tmp/one.cc" -L"$build/lib" -lcohort_collectives -lcohort_core \
  -Wl,-rpath,"$(cd "$build/lib" && pwd)" -o "$tmp/one"
echo "one recorded operation: $("$tmp/one") ns"

echo "== a rank slowed past the timeout (2 s): the timeout to the launcher's diagnosis =="
start=$(date +%s.%N)
COHORT_TEST_STEP_DELAY_MS=1:4000 "$cohort" launch --nproc-per-node 2 -- "$cohort" train configs/tiny_gpt.yaml \
  data.dataset=synthetic model.vocab=256 model.dim=32 model.context=16 data.batch_size=8 eval.max_batches=1 \
  train.steps=5 distributed.timeout_s=2 logging.dir="$tmp/hang" 2>&1 |
  while IFS= read -r line; do printf '%s %s\n' "$(date +%s.%N)" "$line"; done >"$tmp/hang.log" || true
fired=$(grep -m1 'timed out after' "$tmp/hang.log" | cut -d' ' -f1)
said=$(grep -m1 'cohort launch: diagnosis' "$tmp/hang.log" | cut -d' ' -f1)
grep -m1 'cohort launch: diagnosis' "$tmp/hang.log" | cut -d' ' -f2-
[ -n "$fired" ] && [ -n "$said" ] || { echo "diagnose.sh: no timeout or no diagnosis in the launcher's output" >&2; exit 1; }
awk -v a="$said" -v b="$fired" 'BEGIN { printf "timeout to diagnosis: %.2f s (goal: <= 5 s)\n", a - b }'
