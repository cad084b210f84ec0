#!/usr/bin/env bash
# The GPU half of the test suite, for a machine with an NVIDIA GPU, the CUDA toolkit and PyTorch
# but none of our other dependencies (no apt, no network; ../shared/GPU.md).
#
#   scripts/gpu-test.sh --bundle   on a build machine: builds the CUDA targets for Hopper into
#                                  build-gpu and packs them, the shared libraries they need that a
#                                  GPU machine lacks, and Fashion-MNIST into .gpu/ (git-ignored)
#   scripts/gpu-test.sh [BUILD]    on the GPU machine: unpacks .gpu/ (or uses the build folder
#                                  BUILD made there), then runs the CUDA op tests, the NCCL tests
#                                  at world size 1, short training runs and the GPU benchmarks
#   scripts/gpu-test.sh --run CMD  on the GPU machine: only CMD, in that environment ($bin/cohort,
#                                  $tests/*, LD_LIBRARY_PATH, COHORT_BIN); for iterating
#
# Steps are printed as they start; the exit status is the first failure's.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD

if [[ ${1:-} == --bundle ]]; then
  set -e
  arch=${COHORT_CUDA_ARCH:-90}
  cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="$arch" \
    -DCOHORT_USE_CUDA=ON -DCOHORT_USE_MPI=OFF -DCOHORT_USE_GRPC=OFF -DCOHORT_BUILD_EXAMPLES=OFF \
    -DCOHORT_BUILD_BENCHMARKS=OFF >/dev/null
  # The modules too: CUDA and NCCL live in libcohort_cuda.so and libcohort_nccl.so, which the
  # core opens from its own directory (lib/ here).
  ninja -C build-gpu cohort core_cuda_test collectives_nccl_test collectives_ddp_test cohort_cuda \
    cohort_nccl
  stage=$(mktemp -d)
  trap 'rm -rf "$stage"' EXIT
  mkdir -p "$stage/bin" "$stage/lib" .gpu
  cp build-gpu/launcher/cohort build-gpu/tests/core_cuda_test build-gpu/tests/collectives_nccl_test \
    build-gpu/tests/collectives_ddp_test "$stage/bin/"
  cp -P build-gpu/lib/libcohort_*.so* "$stage/lib/"
  # Libraries a GPU machine lacks: everything but glibc's and the CUDA libraries (its toolkit and
  # PyTorch's pip packages have those), plus OpenBLAS, which Cohort opens at run time.
  blas=$(sed -nE 's/#define COHORT_OPENBLAS_PATH "(.*)"/\1/p' build-gpu/generated/cohort/config.h)
  { for b in "$stage"/bin/* "$stage"/lib/libcohort_*.so; do ldd "$b"; done; ldd "$blas"; } |
    awk '$3 ~ /^\// { print $3 }' | sort -u |
    grep -vE '/(libc|libm|libdl|librt|libpthread|ld-linux[^/]*|libgcc_s|libstdc\+\+)\.so' |
    grep -vE '/lib(cuda|cudart|cublas|cublasLt|cudnn[^/]*|nccl)\.so' | grep -v '/libcohort_' |
    while read -r lib; do cp -L "$lib" "$stage/lib/"; done
  cp -L "$blas" "$stage/lib/libopenblas.so.0"
  tar -C "$stage" -cJf .gpu/bundle.tar.xz bin lib
  mkdir -p .gpu/fashion-mnist
  cp /usr/share/datasets/fashion-mnist/*.gz .gpu/fashion-mnist/
  du -sh .gpu/bundle.tar.xz .gpu/fashion-mnist
  exit 0
fi

status=0
step() { echo; echo "=== $*"; }
fail() { echo "FAILED: $*"; [[ $status -ne 0 ]] || status=1; }

# The CUDA libraries: the toolkit's, then those of PyTorch's pip packages (NCCL, cuDNN).
libs=/usr/local/cuda/lib64
site=$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))' 2>/dev/null || true)
if [[ -n $site ]]; then
  for d in "$site"/nvidia/*/lib; do libs="$libs:$d"; done
fi

run_only=
if [[ ${1:-} == --run ]]; then
  run_only=$2
  shift 2
fi
if [[ -n ${1:-} ]]; then
  bin=$1/launcher tests=$1/tests
else
  [[ -f .gpu/bundle.tar.xz ]] || {
    echo "no build: run 'scripts/gpu-test.sh --bundle' on a build machine and bring .gpu/, or pass a build folder"
    exit 2
  }
  unpacked=$(mktemp -d)
  python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
    .gpu/bundle.tar.xz "$unpacked"
  libs="$unpacked/lib:$libs"
  bin=$unpacked/bin tests=$unpacked/bin
fi
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
data=${COHORT_DATA:-/usr/share/datasets/fashion-mnist}
[[ -d $data ]] || data=$root/.gpu/fashion-mnist
export COHORT_BIN=$bin/cohort COHORT_DATA=$data
if [[ -n $run_only ]]; then
  eval "$run_only"
  exit $?
fi

step "GPU"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || fail nvidia-smi

step "CUDA ops against the CPU backend"
"$tests/core_cuda_test" || fail core_cuda_test

step "NCCL process group at world size 1"
"$tests/collectives_nccl_test" || fail collectives_nccl_test

step "DDP over NCCL on one GPU"
"$tests/collectives_ddp_test" --gtest_filter='Ddp.Nccl*' || fail collectives_ddp_test

step "a short CNN training run on the GPU"
run=$(mktemp -d)
"$bin/cohort" train configs/fashion_mnist_cnn.yaml device=cuda data.path="$data" \
  train.steps=300 logging.dir="$run" || fail "cohort train on cuda"

step "a small GPT in bf16 and in fp16 (loss scaling) on the GPU"
for p in bf16 fp16; do
  "$bin/cohort" train configs/tiny_gpt.yaml device=cuda precision=$p data.path=README.md \
    train.steps=100 logging.dir="$run/gpt_$p" | grep -E "^(eval|summary)" || fail "tiny_gpt $p"
done

step "benchmark: scripts/bench/train_gpu.sh"
COHORT_BIN="$bin/cohort" COHORT_DATA="$data" scripts/bench/train_gpu.sh || fail train_gpu.sh

step "benchmark: scripts/bench/gpt2_gpu.sh"
COHORT_BIN="$bin/cohort" scripts/bench/gpt2_gpu.sh || fail gpt2_gpu.sh

echo
[[ $status -eq 0 ]] && echo "gpu-test: all passed" || echo "gpu-test: FAILED"
exit $status
