#!/usr/bin/env bash
# The Debian package where Cohort was never built: `cpack` makes the packages from a build
# directory, a fresh Debian 12 root (debootstrap, the base cached in /var/tmp) installs
# cohort_<version>_amd64.deb with apt (which brings its Depends from the mirror), and there —
# without CUDA, Open MPI or a compiler — the program and libraries link nothing of NVIDIA's or
# MPI's, `cohort env` runs, `cohort train` trains, and device: cuda and backend: mpi get their one
# sentence and exit 2. Needs root (chroot); exits 77, CTest's skip, without it.
#   scripts/package-test.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
build=$(cd "${1:-${COHORT_BUILD_DIR:-build}}" && pwd)
[ "$(id -u)" = 0 ] || { echo "package-test: skipped: a chroot needs root"; exit 77; }
command -v debootstrap >/dev/null || { echo "package-test: debootstrap is missing (scripts/install-deps.sh installs it)" >&2; exit 1; }
tmp=$(mktemp -d /var/tmp/cohort-package-XXXXXX)
root=$tmp/root
cleanup() {
  for m in dev/shm dev proc; do umount -l "$root/$m" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'echo "package-test: FAILED: line $LINENO exited with status $?" >&2' ERR
fail() { echo "package-test: FAILED: $*" >&2; exit 1; }

# The packages.
(cd "$build" && cpack -G DEB -B "$tmp/debs" >"$tmp/cpack.log" 2>&1) || { tail -n 20 "$tmp/cpack.log" >&2; fail "cpack failed"; }
version=$(sed -nE 's/^set\(CPACK_PACKAGE_VERSION "([^"]+)"\)/\1/p' "$build/CPackConfig.cmake")
deb=$tmp/debs/cohort_${version}_amd64.deb
[ -f "$deb" ] || fail "no $deb; cpack made: $(ls "$tmp/debs")"
echo "package-test: made $(cd "$tmp/debs" && ls ./*.deb | tr '\n' ' ')"
depends=$(dpkg-deb -f "$deb" Depends)
echo "package-test: cohort Depends: $depends"
if echo "$depends" | grep -Eiq 'cuda|cudnn|cublas|nccl|openmpi|libmpi'; then
  fail "cohort's Depends name CUDA or MPI packages: $depends"
fi

# A fresh Debian 12 from this machine's mirror, as scripts/../shared/tools/fresh-debian.sh makes it.
# (A machine may have only one of the two kinds of apt sources: a missing file is no failure.)
mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' || true)
[ -n "$mirror" ] || mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '/^deb / && $2 !~ /security/ {print $2; exit}' || true)
[ -n "$mirror" ] || fail "no Debian mirror in /etc/apt"
base=${COHORT_PACKAGE_BASE:-/var/tmp/cohort-package-base}
if [ ! -f "$base/.ok" ]; then
  rm -rf "$base"
  debootstrap --variant=minbase bookworm "$base" "$mirror" >"$tmp/debootstrap.log" 2>&1 ||
    { tail -n 20 "$tmp/debootstrap.log" >&2; fail "debootstrap failed"; }
  touch "$base/.ok"
fi
cp -a "$base" "$root"
cp /etc/resolv.conf "$root/etc/resolv.conf"
[ -f /etc/ssl/certs/ca-certificates.crt ] && mkdir -p "$root/etc/ssl/certs" &&
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
mount -t proc proc "$root/proc"
mount --bind /dev "$root/dev"
mount -t tmpfs tmpfs "$root/dev/shm"
cp "$deb" "$root/tmp/"
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root /bin/bash -c "$1"; }
in_root "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends /tmp/$(basename "$deb")" \
  >"$tmp/apt.log" 2>&1 || { tail -n 20 "$tmp/apt.log" >&2; fail "apt-get could not install $(basename "$deb")"; }
echo "package-test: installed into a fresh Debian 12 root"

# Nothing of NVIDIA's or MPI's is there, nor linked.
in_root 'ls /usr/local/cuda /usr/lib/x86_64-linux-gnu/libcudart* /usr/lib/x86_64-linux-gnu/libmpi.so* 2>/dev/null' && fail "the root has CUDA or MPI"
linked=$(in_root 'ldd /usr/bin/cohort /usr/lib/libcohort_core.so.* /usr/lib/libcohort_collectives.so.* /usr/lib/libcohort_grpc.so')
echo "$linked" | grep -q 'not found' && fail "a library is missing: $(echo "$linked" | grep 'not found')"
echo "$linked" | grep -Eq 'libcuda|libcublas|libcudnn|libnccl|libmpi' && fail "links a vendor library"
in_root 'cohort --version && cohort env' >"$tmp/env.out" 2>&1 || { cat "$tmp/env.out" >&2; fail "cohort env failed"; }
grep -q "^cohort $version" "$tmp/env.out" || fail "cohort --version: $(head -1 "$tmp/env.out")"
echo "package-test: cohort env in the root:"; sed 's/^/  /' "$tmp/env.out"

train="cohort train /usr/share/cohort/configs/tiny_gpt.yaml data.dataset=synthetic model.vocab=256 model.dim=32 model.context=16 data.batch_size=8 eval.max_batches=1 train.steps=20 logging.dir=/tmp/run"
in_root "$train" >"$tmp/train.out" 2>&1 || { tail -n 20 "$tmp/train.out" >&2; fail "cohort train failed"; }
grep -q '^summary: steps 20' "$tmp/train.out" || fail "no summary: $(tail -n 3 "$tmp/train.out")"
echo "package-test: cohort train: $(grep '^summary' "$tmp/train.out")"
rc=0; out=$(in_root "$train device=cuda" 2>&1) || rc=$?
[ "$rc" = 2 ] && echo "$out" | grep -q 'device cuda was requested but' || fail "device=cuda: exit $rc: $out"
echo "package-test: device=cuda: exit 2: $(echo "$out" | tail -n 1)"
rc=0; out=$(in_root "cohort launch --nproc-per-node 2 -- $train distributed.backend=mpi" 2>&1) || rc=$?
[ "$rc" = 2 ] && echo "$out" | grep -q 'the mpi backend is not available' || fail "backend=mpi: exit $rc: $out"
echo "package-test: backend=mpi: exit 2: $(echo "$out" | grep -m1 'mpi backend')"
echo "package-test: passed"
