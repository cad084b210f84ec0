#include "launcher/bench_ps.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <numeric>

#include "core/autograd/grad_mode.h"
#include "core/autograd/node.h"
#include "core/ops/ops.h"
#include "launcher/ps_command.h"
#include "launcher/worker_env.h"
#include "trainer/trainer.h"

namespace cohort::launcher {

int bench_ps(const BenchPsOptions& o) {
  using Clock = std::chrono::steady_clock;
  trainer::Config c = trainer::load_config(o.config, o.overrides);
  if (process_role() == "server") return serve_parameter_server(c, {});
  const WorkerEnv env = detect_worker_env();
  const auto timeout = collectives::Millis(static_cast<int64_t>(c.distributed.timeout_s * 1000));
  auto store = connect_store(env, timeout);
  core::Generator gen(c.seed);
  auto model = trainer::build_model(c, &gen);
  std::vector<core::Tensor> params;
  std::vector<std::string> names;
  for (auto& [name, p] : model->named_parameters()) {
    names.push_back(name);
    params.push_back(p);
  }
  ps::PsWorker worker(params, names, ps_client_options(c, env, store));
  for (auto& p : params) {
    core::Tensor in_place =
        o.copy_gradients ? core::Tensor() : core::autograd::grad_destination_of(p);
    p.set_grad(in_place.defined() ? in_place : core::zeros_like(p));
  }
  std::vector<double> ms;
  // Learning rate 0: the servers' parameters do not move, only bytes do.
  for (int i = 0; i < o.warmup + o.iters; ++i) {
    const auto t0 = Clock::now();
    worker.begin_step(i, 0.0, 1, false);
    worker.push_all();
    worker.finish_step();
    worker.pull(i + 1);
    if (i >= o.warmup)
      ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
  worker.leave();
  // The mean is what bench collectives reports (total time over iterations): compare it with that.
  const double mean = std::accumulate(ms.begin(), ms.end(), 0.0) / static_cast<double>(ms.size());
  std::sort(ms.begin(), ms.end());
  const double median = ms[ms.size() / 2];
  const double bytes = static_cast<double>(worker.bytes_per_step());
  std::printf(
      "bench ps: rank %d mode %s servers %lld gradients %s: push+pull of %.2f MB each way: "
      "mean %.3f ms median %.3f ms best %.3f ms (%.2f GB/s both ways)\n",
      env.rank, ps::mode_name(c.parameter_server.mode),
      static_cast<long long>(c.parameter_server.servers), o.copy_gradients ? "copied" : "in-place",
      bytes / 1e6, mean, median, ms.front(), 2 * bytes / (mean * 1e-3) / 1e9);
  return 0;
}

}  // namespace cohort::launcher
