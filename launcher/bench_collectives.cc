#include "launcher/bench_collectives.h"

#include <chrono>
#include <cstdio>
#include <cstring>

#include "collectives/process_group.h"
#include "core/ops/ops.h"
#include "core/tensor/cuda/cuda_device.h"
#include "core/util/error.h"
#include "launcher/worker_env.h"

namespace cohort::launcher {

using collectives::ProcessGroup;
using core::Tensor;

int64_t parse_bytes(const std::string& flag, const std::string& text) {
  size_t pos = 0;
  int64_t v = -1;
  try {
    v = std::stoll(text, &pos);
  } catch (const std::exception&) {
    v = -1;
  }
  const std::string suffix = text.substr(pos);
  int64_t mult = 0;
  if (suffix.empty() || suffix == "B") mult = 1;
  if (suffix == "K" || suffix == "KiB" || suffix == "k") mult = 1 << 10;
  if (suffix == "M" || suffix == "MiB") mult = 1 << 20;
  if (suffix == "G" || suffix == "GiB") mult = int64_t{1} << 30;
  if (v < 0 || mult == 0)
    COHORT_THROW(ConfigError, flag, " '", text, "' is not a size like 4096, 4K, 64M or 1G");
  return v * mult;
}

namespace {

double bus_factor(const std::string& op, int n) {
  if (op == "allreduce") return 2.0 * (n - 1) / n;
  if (op == "allgather" || op == "reduce_scatter" || op == "alltoall") return (n - 1.0) / n;
  return 1.0;  // broadcast, barrier
}

// Runs one collective of `bytes` (float32) and returns the number of wrong elements when `check`.
// a and b live on the group's device; values are set and checked through host copies.
int64_t run_once(ProcessGroup& pg, const std::string& op, Tensor& a, Tensor& b, bool check) {
  const int n = pg.size(), r = pg.rank();
  const int64_t count = a.numel();
  if (check) a = core::full({count}, r + 1).to(a.device());
  if (op == "allreduce") {
    pg.allreduce(a)->wait();
  } else if (op == "broadcast") {
    pg.broadcast(a, {0})->wait();
  } else if (op == "allgather") {
    Tensor in = a.slice(0, 0, count / n);
    pg.allgather(b, in)->wait();
  } else if (op == "reduce_scatter") {
    Tensor out = b.slice(0, 0, count / n);
    pg.reduce_scatter(out, a)->wait();
  } else if (op == "alltoall") {
    pg.alltoall(b, a)->wait();
  } else {
    pg.barrier()->wait();
  }
  if (!check) return 0;
  int64_t wrong = 0;
  const Tensor ha = a.to(core::Device::cpu()), hb = b.to(core::Device::cpu());
  const float* pa = ha.data_ptr<float>();
  const float* pb = hb.data_ptr<float>();
  const int64_t block = count / n;
  if (op == "allreduce") {
    for (int64_t i = 0; i < count; ++i) wrong += pa[i] != n * (n + 1) / 2.0f;
  } else if (op == "broadcast") {
    for (int64_t i = 0; i < count; ++i) wrong += pa[i] != 1.0f;
  } else if (op == "allgather" || op == "alltoall") {
    for (int64_t i = 0; i < block * n; ++i) wrong += pb[i] != static_cast<float>(i / block + 1);
  } else if (op == "reduce_scatter") {
    for (int64_t i = 0; i < block; ++i) wrong += pb[i] != n * (n + 1) / 2.0f;
  }
  return wrong;
}

}  // namespace

int bench_collectives(const BenchCollectivesOptions& o) {
  static const char* kOps[] = {"allreduce",      "broadcast", "allgather",
                               "reduce_scatter", "alltoall",  "barrier"};
  bool known = false;
  for (const char* k : kOps) known = known || o.op == k;
  if (!known)
    COHORT_THROW(
        ConfigError, "--op ", o.op,
        " is not one of allreduce, broadcast, allgather, reduce_scatter, alltoall, barrier");
  if (o.min_bytes < 4 || o.max_bytes < o.min_bytes || o.factor < 2)
    COHORT_THROW(ConfigError, "sizes must satisfy 4 <= -b <= -e and -f >= 2");
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(o.timeout_s * 1000));
  WorkerEnv env = detect_worker_env();
  auto store = connect_store(env, timeout);
  collectives::ProcessGroupOptions po;
  po.timeout = timeout;
  po.transport = o.transport;
  po.allreduce_algorithm = o.algorithm;
  auto pg = collectives::create_process_group(
      o.backend, std::make_shared<collectives::PrefixStore>("bench", store), env.rank,
      env.world_size, po);
  const int n = pg->size();
  const bool leader = pg->rank() == 0;
  // nccl works on GPU memory: one GPU per local rank.
  core::Device device = core::Device::cpu();
  if (o.backend == "nccl") {
    const int gpus = core::cuda::device_count();
    if (gpus == 0)
      COHORT_THROW(ConfigError, "--backend nccl needs a GPU: ", core::cuda::unavailable_reason());
    device = core::Device::cuda(env.local_rank % gpus);
  }
  if (leader) {
    std::printf("# cohort bench collectives: %s, backend %s, transport %s, %d ranks, float32%s\n",
                o.op.c_str(), o.backend.c_str(), o.transport.c_str(), n,
                device.is_cuda() ? (" on " + core::cuda::device_name(device.index)).c_str() : "");
    if (!pg->topology().empty()) std::printf("# %s\n", pg->topology().c_str());
    std::printf("%12s %10s %10s %10s %8s%s\n", "bytes", "time_us", "algbw_GBs", "busbw_GBs",
                "errors", o.op == "allreduce" ? "  algorithm" : "");
    std::fflush(stdout);
  }
  int64_t total_wrong = 0;
  for (int64_t bytes = o.min_bytes; bytes <= o.max_bytes; bytes *= o.factor) {
    // Whole blocks per rank for the block-wise collectives.
    int64_t count = std::max<int64_t>(bytes / 4, 1);
    count = std::max<int64_t>(count / n * n, n);
    Tensor a = core::zeros({count}).to(device), b = core::zeros({count}).to(device);
    const int iters = o.iters > 0 ? o.iters : (bytes < (1 << 20) ? 200 : 20);
    int64_t wrong = run_once(*pg, o.op, a, b, true);
    for (int w = 0; w < o.warmup; ++w) run_once(*pg, o.op, a, b, false);
    a = core::zeros({count}).to(device);
    pg->barrier()->wait();
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < iters; ++i) run_once(*pg, o.op, a, b, false);
    const double t =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / iters;
    // Every rank's error count, so the leader reports them all.
    Tensor w =
        core::full({1}, static_cast<double>(wrong), core::TensorOptions(core::DType::kInt64));
    pg->allreduce(w)->wait();
    wrong = w.item<int64_t>();
    total_wrong += wrong;
    const double actual = static_cast<double>(count) * 4;
    const double alg = o.op == "barrier" ? 0 : actual / t / 1e9;
    if (leader)
      std::printf("%12.0f %10.1f %10.3f %10.3f %8lld%s\n", actual, t * 1e6, alg,
                  alg * bus_factor(o.op, n), static_cast<long long>(wrong),
                  o.op == "allreduce"
                      ? ("  " + pg->allreduce_algorithm(static_cast<size_t>(actual))).c_str()
                      : "");
    std::fflush(stdout);
  }
  pg->barrier()->wait();
  return total_wrong == 0 ? 0 : 1;
}

}  // namespace cohort::launcher
