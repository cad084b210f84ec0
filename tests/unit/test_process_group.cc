// The cpu backend with threads standing in for ranks over a HashStore: every collective, dtype and
// size against closed-form values, each transport forced in turn, errors for mismatched calls.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <thread>

#include "collectives/process_group.h"
#include "core/ops/ops.h"
#include "core/util/error.h"

namespace cohort::collectives {
namespace {

using core::DType;
using core::Tensor;
using namespace std::chrono_literals;

// Runs fn(group) on `size` threads, one group member each; rethrows the first failure.
void run_ranks(int size, const std::string& transport, const std::function<void(ProcessGroup&)>& fn,
               Millis timeout = 120s) {
  auto store = std::make_shared<HashStore>();
  std::vector<std::thread> threads;
  std::vector<std::string> errors(size);
  for (int r = 0; r < size; ++r)
    threads.emplace_back([&, r] {
      try {
        ProcessGroupOptions o;
        o.transport = transport;
        o.timeout = timeout;
        auto pg = create_process_group("cpu", store, r, size, o);
        fn(*pg);
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (int r = 0; r < size; ++r) EXPECT_EQ(errors[r], "") << "rank " << r;
}

// Element i of rank r's input: small integers, exact in every dtype including bfloat16.
double value(int r, int64_t i) { return (r + 1) + (i % 7); }
double product_value(int r, int64_t i) { return ((r + i) % 2 == 0) ? 2 : 1; }

Tensor filled(int64_t n, DType dt, const std::function<double(int64_t)>& f) {
  Tensor t = core::empty({n}, core::TensorOptions(DType::kFloat64));
  double* p = t.data_ptr<double>();
  for (int64_t i = 0; i < n; ++i) p[i] = f(i);
  return t.to(dt);
}

// Compares t (any dtype) with f(i) exactly; reports the first mismatch.
void expect_values(const Tensor& t, const std::function<double(int64_t)>& f,
                   const std::string& what) {
  Tensor d = t.to(DType::kFloat64);
  const double* p = d.data_ptr<double>();
  for (int64_t i = 0; i < d.numel(); ++i)
    if (p[i] != f(i)) {
      ADD_FAILURE() << what << ": element " << i << " is " << p[i] << ", expected " << f(i);
      return;
    }
}

const std::vector<DType> kDtypes = {DType::kFloat32,  DType::kFloat64, DType::kFloat16,
                                    DType::kBFloat16, DType::kInt32,   DType::kInt64};

void every_collective(ProcessGroup& pg, const std::vector<int64_t>& counts) {
  const int W = pg.size(), r = pg.rank();
  for (int64_t n : counts)
    for (DType dt : kDtypes) {
      const std::string at = std::string(core::dtype_name(dt)) + " n=" + std::to_string(n) +
                             " world=" + std::to_string(W) + " rank=" + std::to_string(r);
      const bool floating = dt != DType::kInt32 && dt != DType::kInt64;
      for (ReduceOp op :
           {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kProduct, ReduceOp::kMin, ReduceOp::kMax}) {
        if (op == ReduceOp::kAvg && !floating) continue;
        Tensor t = op == ReduceOp::kProduct
                       ? filled(n, dt, [&](int64_t i) { return product_value(r, i); })
                       : filled(n, dt, [&](int64_t i) { return value(r, i); });
        pg.allreduce(t, {op})->wait();
        expect_values(
            t,
            [&](int64_t i) {
              switch (op) {
                case ReduceOp::kSum:
                  return W * (W + 1) / 2.0 + W * (i % 7);
                case ReduceOp::kAvg:
                  return (W + 1) / 2.0 + (i % 7);
                case ReduceOp::kProduct: {
                  double p = 1;
                  for (int q = 0; q < W; ++q) p *= product_value(q, i);
                  return p;
                }
                case ReduceOp::kMin:
                  return 1.0 + (i % 7);
                case ReduceOp::kMax:
                  return W + static_cast<double>(i % 7);
              }
              return 0.0;
            },
            "allreduce " + std::string(reduce_op_name(op)) + " " + at);
      }
      for (int root : {0, W - 1}) {
        Tensor b = filled(n, dt, [&](int64_t i) { return value(r, i); });
        pg.broadcast(b, {root})->wait();
        expect_values(
            b, [&](int64_t i) { return value(root, i); }, "broadcast " + at);
        Tensor red = filled(n, dt, [&](int64_t i) { return value(r, i); });
        pg.reduce(red, {ReduceOp::kSum, root})->wait();
        if (r == root)
          expect_values(
              red, [&](int64_t i) { return W * (W + 1) / 2.0 + W * (i % 7); }, "reduce " + at);
      }
      Tensor in = filled(n, dt, [&](int64_t i) { return value(r, i); });
      Tensor gathered = core::empty({n * W}, core::TensorOptions(dt));
      pg.allgather(gathered, in)->wait();
      expect_values(
          gathered,
          [&](int64_t i) {
            return value(static_cast<int>(i / std::max<int64_t>(n, 1)),
                         i % std::max<int64_t>(n, 1));
          },
          "allgather " + at);
      // reduce_scatter: rank q's input block b holds value(q, b*n + i).
      Tensor rs_in = filled(n * W, dt, [&](int64_t i) { return value(r, i); });
      Tensor rs_out = core::empty({n}, core::TensorOptions(dt));
      pg.reduce_scatter(rs_out, rs_in, {ReduceOp::kSum})->wait();
      expect_values(
          rs_out, [&](int64_t i) { return W * (W + 1) / 2.0 + W * ((r * n + i) % 7); },
          "reduce_scatter " + at);
      // alltoall: block b of rank q's input is q * 100 + b + i % 7... kept small for bfloat16.
      Tensor a_in =
          filled(n * W, dt, [&](int64_t i) { return r * 10 + i / std::max<int64_t>(n, 1); });
      Tensor a_out = core::empty({n * W}, core::TensorOptions(dt));
      pg.alltoall(a_out, a_in)->wait();
      expect_values(
          a_out, [&](int64_t i) { return (i / std::max<int64_t>(n, 1)) * 10.0 + r; },
          "alltoall " + at);
    }
  pg.barrier()->wait();
}

class EveryCollective : public ::testing::TestWithParam<int> {};

TEST_P(EveryCollective, MatchesClosedFormValues) {
  run_ranks(GetParam(), "auto", [](ProcessGroup& pg) {
    every_collective(pg, {0, 1, 7, (1 << 20) + 3});
  });
}

INSTANTIATE_TEST_SUITE_P(WorldSizes, EveryCollective, ::testing::Values(1, 2, 3, 5, 8));

class Transport : public ::testing::TestWithParam<std::string> {};

TEST_P(Transport, EveryCollectiveOverIt) {
  run_ranks(3, GetParam(), [](ProcessGroup& pg) { every_collective(pg, {0, 7, 100003}); });
}

INSTANTIATE_TEST_SUITE_P(Forced, Transport, ::testing::Values("shm", "tcp"));

TEST(CpuProcessGroup, WorkIsAsynchronousAndPointToPointWorks) {
  run_ranks(2, "auto", [](ProcessGroup& pg) {
    std::vector<Tensor> ts;
    std::vector<std::shared_ptr<Work>> works;
    for (int k = 0; k < 8; ++k) {
      ts.push_back(core::full({1000 + k}, pg.rank() + k));
      works.push_back(pg.allreduce(ts.back()));
    }
    for (int k = 0; k < 8; ++k) {
      works[k]->wait();
      EXPECT_TRUE(works[k]->is_completed());
      EXPECT_EQ(ts[k].data_ptr<float>()[999], 1 + 2 * k);
    }
    Tensor msg = core::arange(10, core::TensorOptions(DType::kFloat32));
    if (pg.rank() == 0) {
      pg.send(msg, 1, 7)->wait();
    } else {
      Tensor got = core::zeros({10});
      pg.recv(got, 0, 7)->wait();
      EXPECT_EQ(got.data_ptr<float>()[9], 9.0f);
    }
  });
}

TEST(CpuProcessGroup, SeveralGroupsAliveAtOnce) {
  auto store = std::make_shared<HashStore>();
  std::vector<std::thread> threads;
  std::vector<std::string> errors(4);
  for (int r = 0; r < 4; ++r)
    threads.emplace_back([&, r] {
      try {
        auto world =
            create_process_group("cpu", std::make_shared<PrefixStore>("world", store), r, 4);
        // Two sub-groups, {0, 1} and {2, 3}, plus one of the even ranks.
        auto pair = create_process_group(
            "cpu", std::make_shared<PrefixStore>("pair" + std::to_string(r / 2), store), r % 2, 2);
        std::shared_ptr<ProcessGroup> even;
        if (r % 2 == 0)
          even =
              create_process_group("cpu", std::make_shared<PrefixStore>("even", store), r / 2, 2);
        Tensor a = core::full({5}, r), b = core::full({5}, r), c = core::full({5}, r);
        auto wa = world->allreduce(a);
        auto wb = pair->allreduce(b);
        if (even) even->allreduce(c)->wait();
        wa->wait();
        wb->wait();
        if (a.data_ptr<float>()[0] != 6) errors[r] += "world sum wrong; ";
        if (b.data_ptr<float>()[0] != (r / 2 == 0 ? 1 : 5)) errors[r] += "pair sum wrong; ";
        if (even && c.data_ptr<float>()[0] != 2) errors[r] += "even sum wrong; ";
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (int r = 0; r < 4; ++r) EXPECT_EQ(errors[r], "") << "rank " << r;
}

TEST(CpuProcessGroup, MismatchedCollectivesAreAnErrorNotGarbage) {
  std::vector<std::string> errors(2);
  auto store = std::make_shared<HashStore>();
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r)
    threads.emplace_back([&, r] {
      ProcessGroupOptions o;
      o.timeout = 20s;
      auto pg = create_process_group("cpu", store, r, 2, o);
      Tensor t = core::zeros({r == 0 ? 100 : 200});
      try {
        pg->allreduce(t)->wait();
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (int r = 0; r < 2; ++r)
    EXPECT_NE(errors[r].find("same sizes"), std::string::npos) << "rank " << r << ": " << errors[r];
}

TEST(CpuProcessGroup, ARankThatNeverArrivesIsNamed) {
  std::vector<std::string> errors(3);
  auto store = std::make_shared<HashStore>();
  std::vector<std::thread> threads;
  for (int r = 0; r < 3; ++r)
    threads.emplace_back([&, r] {
      ProcessGroupOptions o;
      o.timeout = 2s;
      auto pg = create_process_group("cpu", store, r, 3, o);
      Tensor t = core::ones({10});
      try {
        pg->allreduce(t)->wait();              // #0: everyone
        if (r != 2) pg->allreduce(t)->wait();  // #1: rank 2 never comes
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (int r = 0; r < 2; ++r) {
    EXPECT_NE(errors[r].find("allreduce #1 timed out"), std::string::npos) << errors[r];
    EXPECT_NE(errors[r].find("never entered it: 2; rank 2 last entered allreduce #0"),
              std::string::npos)
        << errors[r];
  }
  EXPECT_EQ(errors[2], "");
}

TEST(CpuProcessGroup, BadArgumentsAreClearErrors) {
  run_ranks(1, "auto", [](ProcessGroup& pg) {
    Tensor t = core::zeros({4, 4}).t();
    EXPECT_THROW(pg.allreduce(t), InvalidArgument);
    Tensor i = core::zeros({4}, core::TensorOptions(DType::kInt64));
    EXPECT_THROW(pg.allreduce(i, {ReduceOp::kAvg}), InvalidArgument);
    Tensor out = core::zeros({3});
    EXPECT_THROW(pg.allgather(out, core::zeros({2})), InvalidArgument);
  });
  EXPECT_THROW(create_process_group("gloo", std::make_shared<HashStore>(), 0, 1), ConfigError);
}

}  // namespace
}  // namespace cohort::collectives
