// The cpu backend with threads standing in for ranks over a HashStore: every collective, dtype and
// size against closed-form values, each transport forced in turn, errors for mismatched calls.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <thread>

#include "collectives/process_group.h"
#include "core/ops/ops.h"
#include "core/util/error.h"
#include "unit/collective_checks.h"

namespace cohort::collectives {
namespace {

using core::DType;
using core::Tensor;
using namespace std::chrono_literals;

// Runs fn(group) on `size` threads, one group member each; rethrows the first failure.
void run_ranks(int size, const std::string& transport, const std::function<void(ProcessGroup&)>& fn,
               Millis timeout = 120s, const std::string& algorithm = "") {
  auto store = std::make_shared<HashStore>();
  std::vector<std::thread> threads;
  std::vector<std::string> errors(size);
  for (int r = 0; r < size; ++r)
    threads.emplace_back([&, r] {
      try {
        ProcessGroupOptions o;
        o.transport = transport;
        o.timeout = timeout;
        o.allreduce_algorithm = algorithm;
        auto pg = create_process_group("cpu", store, r, size, o);
        fn(*pg);
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (int r = 0; r < size; ++r) EXPECT_EQ(errors[r], "") << "rank " << r;
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

// Each all-reduce algorithm, forced, at sizes from fewer elements than ranks to the pipelined
// hierarchy's several segments (one node: the hierarchy is its chain to the leader and back).
class Algorithm : public ::testing::TestWithParam<std::tuple<std::string, int>> {};

TEST_P(Algorithm, EveryCollectiveWithIt) {
  const auto& [algorithm, size] = GetParam();
  run_ranks(
      size, "auto",
      [](ProcessGroup& pg) {
        every_collective(pg, {0, 1, 7, 100003, 1 << 20});
      },
      120s, algorithm);
}

INSTANTIATE_TEST_SUITE_P(Forced, Algorithm,
                         ::testing::Combine(::testing::Values("ring", "recursive_doubling",
                                                              "hierarchical"),
                                            ::testing::Values(2, 3, 5)));

TEST(CpuProcessGroup, AnUnknownAlgorithmOrRanksThatDisagreeAreClearErrors) {
  auto store = std::make_shared<HashStore>();
  ProcessGroupOptions o;
  o.allreduce_algorithm = "butterfly";
  try {
    create_process_group("cpu", store, 0, 1, o);
    ADD_FAILURE() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("'butterfly' is not one of auto, ring"), std::string::npos)
        << e.what();
  }
  std::vector<std::string> errors(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r)
    threads.emplace_back([&, r] {
      ProcessGroupOptions ro;
      ro.timeout = 20s;
      ro.allreduce_algorithm = r == 0 ? "ring" : "recursive_doubling";
      auto pg = create_process_group("cpu", store, r, 2, ro);
      Tensor t = core::zeros({1 << 16});
      try {
        pg->allreduce(t)->wait();
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  // Whichever rank sees the other's header first says so; the other learns it from the store.
  for (int r = 0; r < 2; ++r) {
    EXPECT_NE(errors[r].find("allreduce #0 with the "), std::string::npos) << errors[r];
    EXPECT_NE(errors[r].find("every rank must set the same COHORT_ALLREDUCE_ALGORITHM"),
              std::string::npos)
        << errors[r];
  }
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
