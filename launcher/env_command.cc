#include "launcher/env_command.h"

#include <cstdio>
#include <fstream>
#include <string>

#include "cohort/config.h"
#include "collectives/backend_modules.h"
#include "core/ops/cpu/bf16_gemm.h"
#include "core/ops/cpu/blas.h"
#include "core/tensor/cuda/cuda_runtime.h"
#include "core/util/module.h"
#include "core/util/threads.h"
#include "launcher/cpu_binding.h"
#include "launcher/worker_env.h"
#include "parameter_server/server.h"

namespace cohort::launcher {

namespace {

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) return line.substr(colon + 2);
    }
  return "unknown";
}

const char* yes(bool b) { return b ? "yes" : "no"; }

// Each module this build has: where it is looked for, and whether it and the libraries it needs
// load here (which the job's `device: cuda` or `backend: nccl|mpi` would need), with their
// versions. Opening them maps those libraries into this process only.
void print_modules() {
  std::printf("modules (next to libcohort_core, %s):\n", core::module::directory().c_str());
  std::string why;
  if (COHORT_USE_CUDA) {
    const auto* entry = static_cast<const core::cuda::RuntimeEntry*>(
        core::module::open("cuda", core::cuda::kRuntimeEntrySymbol, false, why));
    if (entry)
      std::printf("  cuda: loads: %s\n", entry->runtime()->versions().c_str());
    else
      std::printf("  cuda: does not load: %s\n", why.c_str());
  }
  if (COHORT_USE_NCCL) {
    if (const auto* m = collectives::try_nccl_module(why))
      std::printf("  nccl: loads: NCCL %s\n", m->library_version().c_str());
    else
      std::printf("  nccl: does not load: %s\n", why.c_str());
  }
  if (COHORT_USE_MPI) {
    if (const auto* m = collectives::try_mpi_module(why))
      std::printf("  mpi: loads: %s\n", m->library_version().c_str());
    else
      std::printf("  mpi: does not load: %s\n", why.c_str());
  }
  if (COHORT_USE_GRPC) {
    const std::string v = ps::grpc_version();  // "none (why)" when the module does not load
    if (v.rfind("none (", 0) == 0)
      std::printf("  grpc: does not load: %s\n", v.substr(6, v.size() - 7).c_str());
    else
      std::printf("  grpc: loads: gRPC %s\n", v.c_str());
  }
}

}  // namespace

int env_command() {
  std::printf("cohort %s\n", COHORT_VERSION);
#if defined(__clang__)
  std::printf("compiler: clang %s\n", __clang_version__);
#elif defined(__GNUC__)
  std::printf("compiler: gcc %s\n", __VERSION__);
#endif
  std::printf("built with: cuda %s, nccl %s, mpi %s, grpc %s\n", yes(COHORT_USE_CUDA),
              yes(COHORT_USE_NCCL), yes(COHORT_USE_MPI), yes(COHORT_USE_GRPC));
  print_modules();
  const int gpus = core::cuda::device_count();
  if (gpus == 0) {
    std::printf("gpus: none (%s)\n", core::cuda::unavailable_reason().c_str());
  } else {
    for (int i = 0; i < gpus; ++i)
      std::printf("gpu %d: %s\n", i, core::cuda::device_name(i).c_str());
  }
  std::printf("cpu: %s, %d cores available to this process, %s\n", cpu_model().c_str(),
              core::available_cores(), describe_binding().c_str());
  __builtin_cpu_init();
  std::printf("cpu vector units: avx2 %s, avx512f %s, avx512-bf16 %s\n",
              yes(__builtin_cpu_supports("avx2")), yes(__builtin_cpu_supports("avx512f")),
              yes(core::cpu::bf16_gemm_supported()));
  const core::cpu::BlasInfo& blas = core::cpu::blas_info();
  std::printf("blas: %s%s%s\n", blas.library.c_str(), blas.coretype.empty() ? "" : ", kernels ",
              blas.coretype.c_str());
  try {
    const WorkerEnv env = detect_worker_env();
    if (env.source.empty() || env.world_size <= 1) {
      std::printf("job: none detected (cohort train runs as a single process)\n");
    } else {
      std::printf("job: rank %d of %d (local rank %d of %d), from %s\n", env.rank, env.world_size,
                  env.local_rank, env.local_world_size, env.source.c_str());
    }
  } catch (const std::exception& e) {
    std::printf("job: the environment is malformed: %s\n", e.what());
  }
  return 0;
}

}  // namespace cohort::launcher
