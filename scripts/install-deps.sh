#!/usr/bin/env bash
# Installs every Debian package Cohort's build, tests and demo need. Safe to re-run: it only calls
# apt-get when something is missing. Needs root (or sudo).
#   --tests   also what the tests use: Debian's python3-torch, and the Python tools Debian lacks
#             (TensorBoard, from PyPI, pinned in scripts/requirements-test.txt) in a virtual
#             environment, .venv, beside Debian's Python packages
set -euo pipefail
cd "$(dirname "$0")/.."
tests=0
for arg in "$@"; do
  case "$arg" in
    --tests) tests=1 ;;
    *) echo "install-deps: unknown option '$arg' (--tests)" >&2; exit 2 ;;
  esac
done

packages=(
  build-essential cmake ninja-build pkg-config ccache git
  clang libclang-rt-14-dev
  libopenblas-dev libyaml-cpp-dev libboost-dev zlib1g-dev libssl-dev libpng-dev libjpeg62-turbo-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libopenmpi-dev openmpi-bin
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  nlohmann-json3-dev libcli11-dev
  dataset-fashion-mnist
  python3 python3-numpy python3-protobuf python3-venv
  iproute2
  debootstrap dpkg-dev file
  slurmctld slurmd slurm-client munge
)

# The tests check Cohort against PyTorch (weights both ways, a PyTorch DDP script under cohort
# launch); the benchmarks time PyTorch as their reference.
if [ "$tests" = 1 ]; then
  packages+=(python3-torch)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "install-deps: need root to install: ${missing[*]}" >&2; exit 1; }
    sudo=sudo
  fi
  echo "install-deps: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ "$tests" = 1 ]; then
  want=$(grep -v '^#' scripts/requirements-test.txt)
  if ! .venv/bin/python3 -m pip freeze 2>/dev/null | grep -qxF "$want"; then
    echo "install-deps: installing $want from PyPI into .venv"
    /usr/bin/python3 -m venv --system-site-packages .venv
    .venv/bin/python3 -m pip install -q --disable-pip-version-check -r scripts/requirements-test.txt ||
      { echo "install-deps: pip could not install $want into .venv (is PyPI reachable?)" >&2; exit 1; }
  fi
fi
