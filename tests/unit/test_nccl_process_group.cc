// The nccl backend. Argument checks run everywhere; the rest needs a GPU and skips, saying why,
// where there is none. With one GPU a communicator can only have one rank (NCCL refuses two ranks
// on one device), so the collectives run in groups of one, the store-borne NCCL id and the
// streams and events included; a second rank that never arrives tests the timeout path.
#include <gtest/gtest.h>

#include <thread>

#include "cohort/config.h"
#include "core/tensor/cuda/cuda_device.h"
#include "core/util/error.h"
#include "unit/collective_checks.h"

namespace cohort::collectives {
namespace {

using namespace std::chrono_literals;

// Why the GPU tests cannot run here; empty when they can.
std::string no_gpu() {
  if (!COHORT_USE_NCCL) return "this build has no NCCL (COHORT_USE_NCCL=OFF)";
  if (core::cuda::device_count() == 0) return "needs a GPU: " + core::cuda::unavailable_reason();
  return "";
}

#define NEED_GPU() \
  if (const std::string why = no_gpu(); !why.empty()) GTEST_SKIP() << why

class NcclProcessGroup : public ::testing::Test {};

TEST_F(NcclProcessGroup, MisuseIsAClearErrorBeforeAnyGpuWork) {
  if (!COHORT_USE_NCCL) {
    EXPECT_THROW(create_process_group("nccl", std::make_shared<HashStore>(), 0, 1), ConfigError);
    return;
  }
  auto pg = create_process_group("nccl", std::make_shared<HashStore>(), 0, 1);
  EXPECT_EQ(pg->backend_name(), "nccl");
  Tensor host = core::ones({4});
  try {
    pg->allreduce(host);
    ADD_FAILURE() << "a CPU tensor was accepted";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("needs CUDA tensors"), std::string::npos) << e.what();
  }
}

TEST_F(NcclProcessGroup, EveryCollectiveOnOneRank) {
  NEED_GPU();
  auto pg = create_process_group("nccl", std::make_shared<HashStore>(), 0, 1);
  every_collective(*pg, {0, 1, 7, (1 << 20) + 3}, core::Device::cuda(0));
  std::printf("ran on %s\n", core::cuda::device_name(0).c_str());
}

TEST_F(NcclProcessGroup, WorkIsAsynchronous) {
  NEED_GPU();
  auto pg = create_process_group("nccl", std::make_shared<HashStore>(), 0, 1);
  std::vector<Tensor> ts;
  std::vector<std::shared_ptr<Work>> works;
  for (int k = 0; k < 16; ++k) {
    ts.push_back(core::full({1 << 20}, k).to(core::Device::cuda(0)));
    works.push_back(pg->allreduce(ts.back(), {ReduceOp::kMax}));
  }
  for (int k = 0; k < 16; ++k) {
    works[k]->wait(120s);
    EXPECT_TRUE(works[k]->is_completed());
    EXPECT_EQ(ts[k].to(core::Device::cpu()).data_ptr<float>()[12345], k);
  }
}

TEST_F(NcclProcessGroup, ARankThatNeverArrivesIsNamed) {
  NEED_GPU();
  auto store = std::make_shared<HashStore>();
  ProcessGroupOptions o;
  o.timeout = 5s;
  // Rank 1 of this group of two never starts: the communicator cannot form.
  auto pg = create_process_group("nccl", store, 0, 2, o);
  Tensor t = core::ones({1000}).to(core::Device::cuda(0));
  try {
    pg->allreduce(t)->wait(120s);
    ADD_FAILURE() << "expected a timeout";
  } catch (const TimeoutError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("ranks that never entered it: 1; rank 1 entered no collective"),
              std::string::npos)
        << msg;
  }
  EXPECT_THROW(pg->barrier()->wait(120s), DistributedError);
}

}  // namespace
}  // namespace cohort::collectives
