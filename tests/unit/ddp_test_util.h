// Threads standing in for ranks over the cpu backend, a small MLP and its data: shared by the
// DDP, ZeRO and FSDP unit tests.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "collectives/ddp/ddp.h"
#include "collectives/process_group.h"
#include "core/nn/models.h"
#include "core/ops/ops.h"

namespace cohort::collectives {
namespace ddp_testing {

using core::Tensor;
using namespace std::chrono_literals;

inline void run_ranks(int size, const std::function<void(std::shared_ptr<ProcessGroup>)>& fn) {
  auto store = std::make_shared<HashStore>();
  std::vector<std::thread> threads;
  std::vector<std::string> errors(static_cast<size_t>(size));
  for (int r = 0; r < size; ++r)
    threads.emplace_back([&, r] {
      try {
        ProcessGroupOptions o;
        o.timeout = 120s;
        fn(create_process_group("cpu", store, r, size, o));
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(r)] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (int r = 0; r < size; ++r) EXPECT_EQ(errors[static_cast<size_t>(r)], "") << "rank " << r;
}

inline std::shared_ptr<core::nn::Module> make_mlp(uint64_t seed) {
  core::Generator gen(seed);
  return std::make_shared<core::nn::MLP>(8, std::vector<int64_t>{16, 16}, 4, &gen);
}

// Small caps so that the little MLP spreads over several buckets.
inline DdpOptions small_buckets() {
  DdpOptions o;
  o.first_bucket_cap_mb = 200.0 / (1 << 20);
  o.bucket_cap_mb = 600.0 / (1 << 20);
  return o;
}

struct Data {
  Tensor x, y;
};
inline Data make_data(int64_t n) {
  core::Generator gen(42);
  return {core::randn({n, 8}, {}, &gen), core::randint(0, 4, {n}, core::DType::kInt64, &gen)};
}
inline Data rows(const Data& d, int64_t begin, int64_t count) {
  return {d.x.narrow(0, begin, count).contiguous(), d.y.narrow(0, begin, count).contiguous()};
}

// Relative to each element, and to a tenth of the tensor's largest for elements near zero (whose
// float32 sums cancel).
inline void expect_close(const Tensor& a, const Tensor& b, const std::string& what,
                         double rel = 1e-5) {
  ASSERT_TRUE(a.defined() && b.defined()) << what;
  ASSERT_EQ(a.sizes(), b.sizes()) << what;
  Tensor x = a.contiguous().to(core::DType::kFloat64), y = b.contiguous().to(core::DType::kFloat64);
  const double* p = x.data_ptr<double>();
  const double* q = y.data_ptr<double>();
  double scale = 0;
  for (int64_t i = 0; i < y.numel(); ++i) scale = std::max(scale, std::abs(q[i]));
  for (int64_t i = 0; i < x.numel(); ++i)
    ASSERT_LE(std::abs(p[i] - q[i]), rel * std::max(std::abs(q[i]), 0.1 * scale) + 1e-12)
        << what << " element " << i << ": " << p[i] << " vs " << q[i];
}

}  // namespace ddp_testing
}  // namespace cohort::collectives
