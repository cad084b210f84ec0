#!/usr/bin/env bash
# A parameter server's traffic over a shaped link while training: network namespaces on one bridge,
# node 0 runs one server (`cohort ps`), nodes 1..W one worker each (`cohort train`), every node's
# link capped at RATE in both directions (tbf on its egress, and on the bridge's port towards the
# server for its ingress). Samples the server's interface counters every second and prints its
# receive (pushes) and send (pulls) rates as a fraction of the link, per mode. Needs root.
#   scripts/bench/netns_ps.sh [MODES...]      (default: sync async; WORKERS=4, RATE=1gbit, STEPS=150)
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${COHORT_BUILD_DIR:-build}
rate=${RATE:-1gbit}
workers=${WORKERS:-4}
steps=${STEPS:-150}
scripts/build.sh >/dev/null
cohort=$PWD/$build/launcher/cohort
config=$PWD/configs/fashion_mnist_mlp.yaml
prefix="cps$$n"
tmp=$(mktemp -d)
trap 'scripts/netns.sh down "$prefix"; rm -rf "$tmp"' EXIT
link_bps=$(awk -v r="$rate" 'BEGIN { m = 1; if (r ~ /gbit$/) m = 1e9; else if (r ~ /mbit$/) m = 1e6;
  sub(/[a-z]+$/, "", r); printf "%d", r * m }')
subnet=$(scripts/netns.sh up "$prefix" $((workers + 1)) "$rate")
# The server's ingress: the bridge's port towards node 0 sends at most RATE too.
tc qdisc replace dev "${prefix}v0" root tbf rate "$rate" burst 256kb latency 10ms
counters() { ip netns exec "${prefix}0" cat /sys/class/net/eth0/statistics/rx_bytes \
  /sys/class/net/eth0/statistics/tx_bytes | paste -sd' '; }
export COHORT_PS_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d " \n")
echo "== 1 server, $workers workers, each on its own node; links capped at $rate =="
printf '%-8s %12s %12s %10s %10s %12s\n' mode samples/s steps rx_link tx_link "rx+tx"
for mode in ${@:-sync async}; do
  run=$tmp/$mode
  mkdir -p "$run"
  # Momentum 0.5 and a cosine schedule: async diverges with the config's momentum 0.9 (README).
  common=(distributed.strategy=parameter_server parameter_server.mode=$mode
    parameter_server.servers=1 parameter_server.bind=$subnet.1 distributed.timeout_s=120
    optimizer.momentum=0.5 schedule.type=cosine parameter_server.staleness=2
    train.steps=$steps train.log_every=100000 logging.tensorboard=false eval.max_batches=1
    logging.dir=$run)
  COHORT_STORE="file:$run/store" COHORT_WORLD_SIZE=$workers \
    ip netns exec "${prefix}0" "$cohort" ps "$config" "${common[@]}" --index 0 >"$run/server.log" 2>&1 &
  server=$!
  pids=()
  for ((w = 0; w < workers; w++)); do
    COHORT_STORE="file:$run/store" COHORT_RANK=$w COHORT_WORLD_SIZE=$workers COHORT_PS_SERVERS=1 \
      ip netns exec "$prefix$((w + 1))" "$cohort" train "$config" "${common[@]}" \
      >"$run/worker$w.log" 2>&1 & pids+=($!)
  done
  # Once a second: the server's byte counters.
  : >"$run/samples"
  while kill -0 "${pids[0]}" 2>/dev/null; do
    echo "$(date +%s.%N) $(counters)" >>"$run/samples"
    sleep 1
  done
  rc=0
  for p in "${pids[@]}"; do wait "$p" || rc=$?; done
  kill -TERM "$server" 2>/dev/null || true
  wait "$server" || true
  if [ "$rc" != 0 ]; then
    echo "$mode: a worker failed (exit $rc):" >&2
    tail -n 5 "$run"/worker*.log "$run/server.log" >&2
    exit 1
  fi
  sps=$(sed -nE 's/.*summary:.*samples_per_s ([0-9.]+).*/\1/p' "$run/worker0.log" | tail -n 1)
  # Rates over each one-second interval while both directions moved data; the median interval.
  awk -v link="$link_bps" -v mode="$mode" -v sps="$sps" -v steps="$steps" '
    NR > 1 { dt = $1 - t; rx = ($2 - r) * 8 / dt; tx = ($3 - x) * 8 / dt
             if (rx > 0.05 * link && tx > 0.05 * link) { n++; a[n] = rx; b[n] = tx; c[n] = rx + tx } }
    { t = $1; r = $2; x = $3 }
    function median(v, n,   i, j, s) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++)
      if (v[j] < v[i]) { s = v[i]; v[i] = v[j]; v[j] = s } return v[int((n + 1) / 2)] }
    END { if (n == 0) { print mode ": no interval with traffic both ways"; exit 1 }
          printf "%-8s %12s %12s %9.1f%% %9.1f%% %11.1f%%   (median of %d one-second intervals)\n",
            mode, sps, steps, 100 * median(a, n) / link, 100 * median(b, n) / link,
            100 * median(c, n) / link, n }' "$run/samples"
done
echo "goal: a server's traffic >= 80% of the link rate while training"
