// Helpers of the parameter-server unit tests (test_parameter_server.cc, test_ps_blocks.cc): shard
// options, a whole push of tensor "w", its values, and a client of a server in this process.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "parameter_server/client.h"
#include "parameter_server/server.h"
#include "parameter_server/shard.h"

namespace cohort::ps::testing {

inline ShardOptions sgd_options(Mode mode, int workers) {
  ShardOptions o;
  o.mode = mode;
  o.workers = workers;
  o.staleness = mode == Mode::kBounded ? 1 : 0;
  o.optimizer.kind = core::optim::OptimizerKind::kSgd;
  return o;
}

inline void push(Shard& s, int worker, int64_t step, double lr, std::vector<float> grad) {
  s.push_begin(worker, step, lr, 1);
  s.push_chunk(worker, "w", 0, grad.data(), static_cast<int64_t>(grad.size()));
  s.push_commit(worker);
}

inline std::vector<float> values(const Shard& s) { return s.snapshot().values.at(0); }

inline const auto kNever = [] { return false; };

// The options of worker `worker` of a job whose one server is `server`.
inline ClientOptions client_of(const Server& server, const std::string& secret, int worker = 0) {
  ClientOptions co;
  co.secret = secret;
  co.worker = worker;
  co.timeout = std::chrono::seconds(60);
  co.resolve = [&server](int) { return server.address(); };
  return co;
}

}  // namespace cohort::ps::testing
