#!/usr/bin/env bash
# Data-parallel training on one node: Cohort's `cohort launch … cohort train` on 2 ranks of one
# thread against our own single process and against PyTorch (single process and DDP over Gloo,
# ../shared/bench/ddp_fmnist.py), 1 epoch of Fashion-MNIST, in one invocation, printing ratios;
# beside them two single-rank runs at once that never communicate: the node's own ceiling.
# With root and network namespaces it also trains the CNN across two nodes joined by a 1 Gbit/s
# link and reports how much of the all-reduce time the timeline shows hidden behind backward.
#   scripts/bench/ddp.sh [mlp] [cnn] [zero1] [overlap]       (default: all four)
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${COHORT_BUILD_DIR:-build}
ref=$(cd "${COHORT_REF_DIR:-../shared/bench}" && pwd)
what=${*:-mlp cnn zero1 overlap}
scripts/build.sh >/dev/null
cohort=$build/launcher/cohort
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
ref_env=()
grep -q avx512f /proc/cpuinfo && ref_env=(OPENBLAS_CORETYPE=SkylakeX)
tmp=$(mktemp -d)
prefix="cdb$$n"
cleanup() {
  [ -d "/run/netns" ] && ls /run/netns 2>/dev/null | grep -q "^$prefix" && scripts/netns.sh down "$prefix"
  [ -n "${KEEP_TMP:-}" ] && echo "kept $tmp" || rm -rf "$tmp"
}
trap cleanup EXIT

field() { sed -nE "s/.*$1[= ]([0-9.]+).*/\1/p" | tail -n 1; }
div() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
diff_points() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.2f", 100 * (a - b) }'; }

ours() {  # model global_batch ranks [overrides...]
  local model=$1 global=$2 n=$3; shift 3
  local args=(train "configs/fashion_mnist_$model.yaml" data.batch_size=$((global / n))
              train.log_every=100000 logging.tensorboard=false logging.dir="$tmp/run$RANDOM" "$@")
  if [ "$n" = 1 ]; then
    "$cohort" "${args[@]}" threads=1
  else
    "$cohort" launch --nproc-per-node "$n" -- "$cohort" "${args[@]}"
  fi
}

# Two independent single-rank trainings at once, each with a 2-rank run's per-rank batch and one
# core: their summed samples/s is what this node gives two processes that never communicate, the
# ceiling for any 2-rank run here (memory bandwidth and caches are shared; a 1-rank run's loader
# thread also has the other core to itself).
alone_pair() {  # model global_batch: prints the two summed samples/s
  local model=$1 global=$2 c pids=()
  for c in 0 1; do
    taskset -c $c "$cohort" train "configs/fashion_mnist_$model.yaml" data.batch_size=$((global / 2)) \
      threads=1 train.log_every=100000 logging.tensorboard=false logging.dir="$tmp/alone$c" \
      >"$tmp/alone$c.out" 2>&1 &
    pids+=($!)
  done
  # A run that failed would leave half a sum that reads as a ceiling: stop instead.
  for c in 0 1; do
    if ! wait "${pids[$c]}"; then
      echo "ddp.sh: the single-rank run on core $c failed; its last lines:" >&2
      tail -n 5 "$tmp/alone$c.out" >&2
      exit 1
    fi
  done
  awk '/summary/ { for (i = 1; i < NF; i++) if ($i == "samples_per_s") { s += $(i + 1); n++ } }
       END { if (n != 2) exit 1; printf "%.0f", s }' "$tmp/alone0.out" "$tmp/alone1.out"
}

median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
# This machine's speed wanders by tens of percent from one minute to the next (a shared host), so
# each comparison runs in $rounds rounds, each giving its ratios, and the medians are the result.
rounds=${COHORT_BENCH_ROUNDS:-3}

compare() {  # model global_batch [overrides for the 2-rank run...]
  local model=$1 global=$2; shift 2
  local one two t1 t2 label=${1:-ddp} r
  local s1 s2 a1 a2 ts1 ts2 ta2 al own=() vs_torch=() torch_own=() acc=() ceiling=() of_ceiling=()
  echo "== $model, global batch $global, 1 epoch; 2 ranks of 1 thread ($label) =="
  printf "%-6s %12s %12s %12s %12s %12s %9s %9s\n" round "cohort 1" "cohort 2" "2 alone" "torch 1" \
    "torch ddp 2" "acc 1" "acc 2"
  for r in $(seq "$rounds"); do
    one=$(ours "$model" "$global" 1)
    two=$(ours "$model" "$global" 2 "$@")
    al=$(alone_pair "$model" "$global")
    t1=$(cd "$ref" && env "${ref_env[@]}" /usr/bin/python3 fmnist.py "$model" 1 "$global")
    t2=$(cd "$ref" && env "${ref_env[@]}" ./spawn.sh 2 ddp_fmnist.py "$model" $((global / 2)))
    s1=$(echo "$one" | field samples_per_s); a1=$(echo "$one" | field test_acc)
    s2=$(echo "$two" | field samples_per_s); a2=$(echo "$two" | field test_acc)
    ts1=$(echo "$t1" | field samples_per_s); ts2=$(echo "$t2" | field samples_per_s)
    ta2=$(echo "$t2" | field test_acc)
    printf "%-6s %12.0f %12.0f %12.0f %12.0f %12.0f %9s %9s\n" "$r" "$s1" "$s2" "$al" "$ts1" "$ts2" \
      "$a1" "$a2"
    own+=("$(div "$s2" "$s1")"); vs_torch+=("$(div "$s2" "$ts2")"); torch_own+=("$(div "$ts2" "$ts1")")
    ceiling+=("$(div "$al" "$s1")"); of_ceiling+=("$(div "$s2" "$al")")
    acc+=("$(diff_points "$a2" "$a1")")
  done
  echo "ratios: medians of $rounds rounds (each round's in brackets)"
  echo "cohort 2 ranks / cohort 1 rank:          $(printf '%s\n' "${own[@]}" | median)x  (${own[*]})"
  echo "cohort 2 ranks / pytorch ddp 2 ranks:    $(printf '%s\n' "${vs_torch[@]}" | median)x  (${vs_torch[*]})"
  echo "pytorch ddp 2 ranks / pytorch 1 process: $(printf '%s\n' "${torch_own[@]}" | median)x  (${torch_own[*]})"
  echo "2 alone / cohort 1 rank (the ceiling):   $(printf '%s\n' "${ceiling[@]}" | median)x  (${ceiling[*]})"
  echo "cohort 2 ranks / 2 alone:                $(printf '%s\n' "${of_ceiling[@]}" | median)x  (${of_ceiling[*]})"
  echo "test accuracy, 2 ranks - 1 rank:         ${acc[-1]} points"
}

for w in $what; do
  case $w in
    mlp) compare mlp 128 ;;
    cnn) compare cnn 64 ;;
    zero1) compare mlp 128 distributed.strategy=zero1 ;;
    overlap)
      if [ "$(id -u)" != 0 ]; then echo "== overlap: skipped (network namespaces need root) =="; continue; fi
      subnet=$(scripts/netns.sh up "$prefix" 2 1gbit) || { echo "== overlap: skipped (no network namespaces here) =="; continue; }
      run=$tmp/overlap
      for k in 0 1; do
        ip netns exec "$prefix$k" "$cohort" launch --nnodes 2 --node-rank $k \
          --rdzv-endpoint "$subnet.1:29400" --nproc-per-node 1 -- "$cohort" train \
          configs/fashion_mnist_cnn.yaml data.batch_size=32 train.steps=60 train.log_every=100000 \
          logging.timeline=true logging.tensorboard=false eval.max_batches=1 logging.dir="$run" \
          >"$tmp/node$k.log" 2>&1 &
      done
      wait
      echo "== cnn across 2 netns nodes, 1 Gbit/s link, batch 32 per rank, 60 steps =="
      grep -h "summary" "$tmp/node0.log"
      # Per rank: of all bucket all-reduce time after warm-up, the part that ran while backward was
      # still computing (backward's span minus its final wait for the reductions).
      /usr/bin/python3 - "$run/timeline.json" <<'PY'
import json, sys
ev = [e for e in json.load(open(sys.argv[1])) if e.get("ph") == "X"]
for pid in sorted({e["pid"] for e in ev}):
    mine = [e for e in ev if e["pid"] == pid]
    back = sorted((e["ts"], e["ts"] + e["dur"]) for e in mine if e["name"] == "backward")[10:]
    wait = sorted(e["ts"] for e in mine if e["name"] == "wait for gradient reduction")[10:]
    compute = [(b[0], w) for b, w in zip(back, wait)]
    comm = [(e["ts"], e["ts"] + e["dur"]) for e in mine if e["name"].startswith("allreduce bucket")]
    comm = [c for c in comm if compute and c[0] >= compute[0][0]]
    total = sum(b - a for a, b in comm)
    hidden = sum(max(0, min(b, ce) - max(a, cs)) for a, b in comm for cs, ce in compute)
    print(f"rank {pid}: all-reduce {total / 1e3:.1f} ms, {100 * hidden / max(total, 1):.1f}% of it "
          f"hidden behind backward's compute")
PY
      scripts/netns.sh down "$prefix"
      ;;
    *) echo "unknown benchmark $w (mlp, cnn, zero1, overlap)" >&2; exit 2 ;;
  esac
done
