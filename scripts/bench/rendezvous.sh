#!/usr/bin/env bash
# The launcher's rendezvous at scale, in one invocation:
# - `cohort bench rendezvous --agents N` for N = 256, 1024 and 4096 simulated agents (threads
#   speaking the real protocol to a real store): each phase's time, the store operations per agent
#   (constant as N grows: no all-to-all heartbeat checks) and the store's operations per second.
#   Goal: 4096 agents through rendezvous in <= 5 s.
# - real agents: N `cohort launch` processes on this machine (--nnodes N, one worker each running
#   `true`), from the first start to the last exit, for N = 16 and 64.
#   scripts/bench/rendezvous.sh [AGENTS...]
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${COHORT_BUILD_DIR:-build}
scripts/build.sh >/dev/null
cohort=$build/launcher/cohort
sizes=("${@:-256 1024 4096}")
for n in ${sizes[@]}; do
  "$cohort" bench rendezvous --agents "$n" --beat-seconds 3
  echo
done
echo "== real agents: N cohort launch processes on this machine, one worker each (true) =="
for n in 16 64; do
  port=$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  start=$(date +%s.%N)
  pids=()
  for k in $(seq 0 $((n - 1))); do
    "$cohort" launch --nnodes "$n" --node-rank "$k" --rdzv-endpoint "127.0.0.1:$port" --rdzv-timeout 120 \
      --cpu-bind none -- true >/dev/null 2>&1 &
    pids+=($!)
  done
  failed=0
  for p in "${pids[@]}"; do wait "$p" || failed=$((failed + 1)); done
  end=$(date +%s.%N)
  awk -v a="$start" -v b="$end" -v n="$n" -v f="$failed" \
    'BEGIN { printf "%d agents: started, met, ran and left in %.2f s (%d failed)\n", n, b - a, f }'
done
