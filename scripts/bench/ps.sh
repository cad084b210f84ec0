#!/usr/bin/env bash
# Parameter-server mode on one node, in one invocation, printing ratios against our own DDP:
#   train   1 epoch of the Fashion-MNIST MLP: sync PS (2 workers, 1 server) samples/s against DDP
#           on 2 ranks (goal >= 0.8); async and bounded for reference.
#   comm    push plus pull of the MLP's gradients (cohort bench ps, 2 workers, 1 server) against
#           our all-reduce of the same bytes on 2 ranks (goal <= 2x): with the gradients where
#           backward leaves them in training (in the server's shared memory), and copied in from
#           tensors of their own; over gRPC alone, with and without bf16 compression, too.
#   scripts/bench/ps.sh [train] [comm]       (default: both)
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${COHORT_BUILD_DIR:-build}
what=${*:-train comm}
scripts/build.sh >/dev/null
cohort=$build/launcher/cohort
config=configs/fashion_mnist_mlp.yaml
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

field() { sed -nE "s/.*$1[= ]([0-9.]+).*/\1/p" | tail -n 1; }
div() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
ps=(distributed.strategy=parameter_server)

train() {  # launch options, then overrides
  local opts=$1; shift
  # shellcheck disable=SC2086
  "$cohort" launch --nproc-per-node 2 $opts -- "$cohort" train "$config" train.log_every=100000 \
    logging.tensorboard=false logging.dir="$tmp/run$RANDOM" "$@" 2>&1 | grep "summary:"
}

if [[ " $what " == *" train "* ]]; then
  ddp=$(train "") ; ddp_sps=$(field samples_per_s <<<"$ddp"); ddp_acc=$(field test_acc <<<"$ddp")
  echo "DDP 2 ranks:                      $ddp_sps samples/s  test_acc $ddp_acc"
  for mode in sync async bounded; do
    extra=()
    [ "$mode" = bounded ] && extra=(parameter_server.staleness=2)
    r=$(train "--ps-servers 1" "${ps[@]}" parameter_server.mode=$mode "${extra[@]}")
    sps=$(field samples_per_s <<<"$r")
    printf "PS %-7s 2 workers, 1 server:   %s samples/s  test_acc %s  = %sx DDP%s\n" "$mode" \
      "$sps" "$(field test_acc <<<"$r")" "$(div "$sps" "$ddp_sps")" \
      "$([ "$mode" = sync ] && echo "  (goal >= 0.8)")"
  done
fi

if [[ " $what " == *" comm "* ]]; then
  # Mean time per push+pull (what bench collectives reports for the all-reduce: total time over
  # iterations, outliers included). This 2-core machine's timings wander by tens of percent from
  # one minute to the next, so the pair is measured in ${rounds} alternating rounds, each giving a
  # ratio, and the median ratio is the result.
  rounds=${COHORT_BENCH_ROUNDS:-3}
  bench() {
    "$cohort" launch --nproc-per-node 2 --ps-servers 1 -- "$cohort" bench ps "$config" "${ps[@]}" \
      logging.dir="$tmp/b" --iters "$1" "${@:2}" 2>&1 | grep "rank 0" | field mean
  }
  bytes=$("$cohort" launch --nproc-per-node 1 --ps-servers 1 -- "$cohort" bench ps "$config" \
    "${ps[@]}" logging.dir="$tmp/b" --iters 1 2>&1 | sed -nE 's/.*of ([0-9.]+) MB.*/\1/p')
  nbytes=$(awk -v m="$bytes" 'BEGIN { printf "%d", m * 1e6 }')
  allreduce() {
    "$cohort" launch --nproc-per-node 2 -- "$cohort" bench collectives --op allreduce \
      -b "$nbytes" -e "$nbytes" --iters 500 2>&1 | awk '$2 ~ /^[0-9]+$/ { t = $3 } END { printf "%.3f", t / 1000 }'
  }
  ratios=()
  for r in $(seq "$rounds"); do
    ar_ms=$(allreduce)
    f32=$(bench 500)
    ratio=$(div "$f32" "$ar_ms")
    ratios+=("$ratio")
    echo "round $r: all-reduce of $bytes MB, 2 ranks (cpu backend) $ar_ms ms; push+pull, 2 workers, 1 server $f32 ms = ${ratio}x"
  done
  median=$(printf '%s\n' "${ratios[@]}" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
  echo "push+pull of $bytes MB / all-reduce, median of $rounds rounds: ${median}x (goal <= 2)"
  copied=$(bench 100 --copy-gradients)
  grpc=$(bench 100 parameter_server.transport=grpc)
  bf16=$(bench 100 parameter_server.transport=grpc parameter_server.compression=bf16)
  echo "  gradients copied in first:                 $copied ms  = $(div "$copied" "$ar_ms")x the last all-reduce"
  echo "  all of it over gRPC (transport: grpc):     $grpc ms  = $(div "$grpc" "$ar_ms")x the last all-reduce"
  echo "  over gRPC with bf16 on the wire:           $bf16 ms  = $(div "$bf16" "$ar_ms")x the last all-reduce"
fi
