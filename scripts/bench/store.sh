#!/usr/bin/env bash
# The rendezvous store under attack (issue bar: 256 honest clients x 30 s beside 64 hostile threads:
# 0 honest errors, 0 keys lost, the server's RSS and descriptors flat, honest operations/s >= 0.8x
# the same load alone) and the handshake's cost per connection (<= 1 ms). Also runs the honest
# load beside the same attackers aimed at a decoy server, which is what the attackers' own CPU takes
# from the honest clients on this machine: the ceiling for the ratio.
#   scripts/bench/store.sh [SECONDS] [CLIENTS] [ATTACKERS]
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${COHORT_BUILD_DIR:-build}
scripts/build.sh >/dev/null
"$build/launcher/cohort" bench store --seconds "${1:-30}" --clients "${2:-256}" \
  --attackers "${3:-64}" 2>/dev/null
