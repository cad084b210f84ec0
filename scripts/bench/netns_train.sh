#!/usr/bin/env bash
# Time to accuracy across nodes joined by a shaped link: `cohort train` of the Fashion-MNIST MLP
# and CNN on network-namespace nodes (scripts/netns.sh, each node's egress capped by tbf), one
# rank per node, plain DDP and each gradient compression (bf16, fp16, PowerSGD rank 4) in one
# invocation. For each run: the training seconds (evaluations left out) until the test accuracy
# first reaches TARGET, the final test accuracy, and both against plain DDP's. Needs root.
#   scripts/bench/netns_train.sh                     (everything below, defaults in brackets)
#   MODELS="mlp cnn" NODES="2 4" RATES="1gbit 100mbit" MODES="none bf16 fp16 powersgd"
#   EPOCHS=1 EVAL_EVERY=10 TARGET_MLP=0.82 TARGET_CNN=0.82 POWERSGD_RANK=4 PER_NODE=1
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${COHORT_BUILD_DIR:-build}
cohort=$(pwd)/$build/launcher/cohort
models=${MODELS:-mlp cnn}
nodes_list=${NODES:-2 4}
rates=${RATES:-1gbit 100mbit}
modes=${MODES:-none bf16 fp16 powersgd}
epochs=${EPOCHS:-1}
eval_every=${EVAL_EVERY:-10}
per_node=${PER_NODE:-1}
psgd_rank=${POWERSGD_RANK:-4}
cores=$(nproc --all)
scripts/build.sh >/dev/null
prefix="cht$$n"
tmp=$(mktemp -d)
trap 'scripts/netns.sh down "$prefix" >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
export OMP_NUM_THREADS=1

# run MODEL NODES RATE MODE: trains on a fresh cluster; the leader's metrics land in $tmp/run.
run() {
  local model=$1 n=$2 rate=$3 mode=$4
  local subnet
  subnet=$(scripts/netns.sh up "$prefix" "$n" "$rate")
  rm -rf "$tmp/run"
  local extra="distributed.compression=$mode"
  [ "$mode" = powersgd ] && extra="$extra distributed.powersgd.rank=$psgd_rank"
  local pids=()
  for ((k = 0; k < n; k++)); do
    # Each node's launcher would bind its ranks from core 0 up, as on a machine of its own: here
    # the nodes share this one, so each node gets its own cores (while there are enough).
    local first=$(((k * per_node) % cores)) last=$(((k * per_node + per_node - 1) % cores))
    ip netns exec "$prefix$k" taskset -c "$first-$last" "$cohort" launch --cpu-bind none \
      --nnodes "$n" --node-rank "$k" \
      --nproc-per-node "$per_node" --rdzv-endpoint "$subnet.1:29400" --rdzv-timeout 60 -- \
      "$cohort" train "configs/fashion_mnist_$model.yaml" train.epochs="$epochs" \
      eval.every_steps="$eval_every" checkpoint.every_steps=0 distributed.timeout_s=600 \
      logging.dir="$tmp/run" checkpoint.dir="$tmp/run/ck" $extra >"$tmp/log.$k" 2>&1 &
    pids+=($!)
  done
  local status=0
  for p in "${pids[@]}"; do wait "$p" || status=1; done
  scripts/netns.sh down "$prefix"
  if [ $status -ne 0 ]; then
    echo "netns_train.sh: $model on $n nodes at $rate with $mode failed:" >&2
    tail -20 "$tmp/log.0" >&2
    exit 1
  fi
}

# steps, seconds to the target (or "-"), final accuracy, from the leader's metrics.jsonl
measure() {
  /usr/bin/python3 - "$tmp/run/metrics.jsonl" "$1" <<'EOF'
import json, sys
target = float(sys.argv[2])
evals = [r for r in map(json.loads, open(sys.argv[1])) if r.get("event") == "eval"]
hit = next((r for r in evals if r["test_acc"] >= target), None)
steps = [r["rank_step_ms"][0] for r in map(json.loads, open(sys.argv[1])) if "rank_step_ms" in r]
print(evals[-1]["step"], hit["step"] if hit else "-", "%.2f" % hit["train_s"] if hit else "-",
      "%.4f" % evals[-1]["test_acc"], "%.1f" % (sum(steps) / len(steps)) if steps else "-")
EOF
}

echo "# cohort netns_train: Fashion-MNIST on network-namespace nodes, $per_node rank(s) per node,"
echo "# $epochs epoch(s), evaluations every $eval_every steps (10,000 test images), $(lscpu | sed -n 's/^Model name: *//p'), $cores cores"
echo "# node k runs on core(s) k*PER_NODE.. mod $cores: beyond $cores ranks, nodes share cores"
for model in $models; do
  target_var="TARGET_${model^^}"
  target=${!target_var:-0.82}
  echo
  echo "== $model: training seconds until test_acc >= $target, final test_acc; against plain ddp"
  printf '%-8s %5s %-9s %6s %8s %8s %11s %9s %12s %11s\n' link nodes mode steps step_ms \
    at_step to_target_s final_acc sooner_than_ddp acc_vs_ddp
  for rate in $rates; do
    for n in $nodes_list; do
      base_t="" base_acc=""
      for mode in $modes; do
        run "$model" "$n" "$rate" "$mode"
        read -r steps at t acc step_ms < <(measure "$target")
        if [ "$mode" = none ]; then
          base_t=$t
          base_acc=$acc
        fi
        ratio=$(awk -v b="$base_t" -v t="$t" 'BEGIN { if (b == "" || b == "-" || t == "-") print "-"; else printf "%.2fx", b / t }')
        dacc=$(awk -v b="$base_acc" -v a="$acc" 'BEGIN { if (b == "") print "-"; else printf "%+.2f pt", 100 * (a - b) }')
        printf '%-8s %5s %-9s %6s %8s %8s %11s %9s %12s %11s\n' "$rate" "$n" "$mode" "$steps" \
          "$step_ms" "$at" "$t" "$acc" "$ratio" "$dacc"
      done
    done
  done
done
echo
echo "goals (2 nodes at 1gbit, mlp): bf16 >= 1.7x sooner, powersgd >= 3x sooner and within 0.5 pt"
