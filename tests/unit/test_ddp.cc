// DistributedDataParallel and the ZeRO-1 sharded optimiser with threads standing in for ranks over
// the cpu backend: gradients against a single process on the whole batch, no_sync accumulation,
// unused parameters, and ZeRO-1 against DDP (parameters, consolidated state, clipping).
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <thread>

#include "cohort/config.h"
#include "collectives/ddp/ddp.h"
#include "collectives/ddp/zero.h"
#include "core/autograd/grad_mode.h"
#include "core/nn/layers.h"
#include "core/nn/models.h"
#include "core/ops/ops.h"
#include "core/optim/optimizer.h"
#include "core/tensor/cuda/cuda_device.h"
#include "ddp_test_util.h"

namespace cohort::collectives {
namespace {

using namespace ddp_testing;

using core::Tensor;
using namespace std::chrono_literals;

// The reference: one process, the whole batch, the mean loss.
std::vector<Tensor> single_process_grads(const Data& d) {
  auto m = make_mlp(0);
  core::cross_entropy(m->forward(d.x), d.y).backward();
  std::vector<Tensor> g;
  for (auto& p : m->parameters()) g.push_back(p.grad());
  return g;
}

// DDP on CUDA tensors over the nccl backend: buckets, the unused-parameter vote and the
// all-reduce's events on the GPU. One GPU allows one rank, so the group has one; gradients must
// equal a plain backward of the same model on the same GPU. Skips where there is no GPU.
TEST(Ddp, NcclOnOneGpuEqualsAPlainBackward) {
  if (!COHORT_USE_NCCL || core::cuda::device_count() == 0)
    GTEST_SKIP() << (COHORT_USE_NCCL ? "needs a GPU: " + core::cuda::unavailable_reason()
                                     : std::string("this build has no NCCL"));
  const core::Device gpu = core::Device::cuda(0);
  Data d = make_data(12);
  auto plain = make_mlp(0);
  plain->to(gpu);
  core::cross_entropy(plain->forward(d.x.to(gpu)), d.y.to(gpu)).backward();
  auto model = make_mlp(0);
  model->to(gpu);
  DdpOptions o = small_buckets();
  o.allow_unused_parameters = true;
  DistributedDataParallel ddp(model,
                              create_process_group("nccl", std::make_shared<HashStore>(), 0, 1), o);
  for (int step = 0; step < 2; ++step) {
    for (auto& p : model->parameters()) p.set_grad(Tensor());
    core::cross_entropy(ddp.forward(d.x.to(gpu)), d.y.to(gpu)).backward();
  }
  auto want = plain->parameters(), got = model->parameters();
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(got[i].grad().device(), gpu);
    expect_close(got[i].grad().to(core::Device::cpu()), want[i].grad().to(core::Device::cpu()),
                 ddp.param_names()[i]);
  }
}

TEST(Ddp, BroadcastsRankZerosParametersAndBucketsInReverseOrder) {
  run_ranks(3, [&](std::shared_ptr<ProcessGroup> pg) {
    auto model = make_mlp(static_cast<uint64_t>(pg->rank()) + 7);  // every rank differs
    DistributedDataParallel ddp(model, pg, small_buckets());
    // Replaced by rank 0's values, those of seed 7.
    auto rank0 = make_mlp(7)->parameters();
    auto mine = model->parameters();
    for (size_t i = 0; i < mine.size(); ++i) expect_close(mine[i], rank0[i], "param");
    // Buckets take parameters newest first: the last parameter starts bucket 0, and indices only
    // fall from bucket to bucket.
    auto& buckets = ddp.buckets();
    ASSERT_GE(buckets.size(), 3u);
    EXPECT_EQ(buckets[0].params.front(), mine.size() - 1);
    size_t previous = mine.size();
    for (auto& b : buckets)
      for (size_t k : b.params) {
        EXPECT_LT(k, previous);
        previous = k;
      }
  });
}

class DdpWorld : public ::testing::TestWithParam<int> {};

TEST_P(DdpWorld, AveragedGradientsEqualOneProcessOnTheWholeBatch) {
  const int world = GetParam();
  const int64_t per_rank = 5;
  Data all = make_data(per_rank * world);
  auto expected = single_process_grads(all);
  run_ranks(world, [&](std::shared_ptr<ProcessGroup> pg) {
    auto model = make_mlp(0);
    // Registered before DDP's own hooks, so these see each gradient as backward delivered it.
    auto params = model->parameters();
    std::vector<const void*> delivered(params.size());
    for (size_t i = 0; i < params.size(); ++i)
      params[i].register_post_accumulate_grad_hook(
          [&delivered, i](Tensor& p) { delivered[i] = p.grad().raw_data(); });
    DistributedDataParallel ddp(model, pg, small_buckets());
    Data mine = rows(all, per_rank * pg->rank(), per_rank);
    // Two steps: the second backward writes into the buckets the first one's gradients left.
    for (int step = 0; step < 2; ++step) {
      model->zero_grad();
      core::cross_entropy(ddp.forward(mine.x), mine.y).backward();
      for (size_t i = 0; i < params.size(); ++i) {
        expect_close(params[i].grad(), expected[i], ddp.param_names()[i]);
        // The linear layers' gradients were written in their bucket slots, not copied there.
        const auto& slot = ddp.slots()[i];
        const auto* in_bucket =
            static_cast<const float*>(ddp.buckets()[slot.bucket].grads.raw_data()) + slot.offset;
        EXPECT_EQ(delivered[i], in_bucket) << ddp.param_names()[i];
        EXPECT_EQ(params[i].grad().raw_data(), in_bucket) << ddp.param_names()[i];
      }
    }
  });
}

TEST_P(DdpWorld, NoSyncAccumulationEqualsTheLargeBatch) {
  const int world = GetParam();
  const int64_t micro = 3;
  Data all = make_data(2 * micro * world);
  auto expected = single_process_grads(all);
  run_ranks(world, [&](std::shared_ptr<ProcessGroup> pg) {
    auto model = make_mlp(0);
    DistributedDataParallel ddp(model, pg, small_buckets());
    Data mine = rows(all, 2 * micro * pg->rank(), 2 * micro);
    Data first = rows(mine, 0, micro), second = rows(mine, micro, micro);
    {
      auto guard = ddp.no_sync();
      core::div(core::cross_entropy(ddp.forward(first.x), first.y), 2.0).backward();
    }
    core::div(core::cross_entropy(ddp.forward(second.x), second.y), 2.0).backward();
    auto params = model->parameters();
    for (size_t i = 0; i < params.size(); ++i)
      expect_close(params[i].grad(), expected[i], ddp.param_names()[i]);
  });
}

INSTANTIATE_TEST_SUITE_P(Sizes, DdpWorld, ::testing::Values(2, 3));

// `a` always takes part; `b` only on the ranks told to; `c` never.
class PartlyUsed : public core::nn::Module {
 public:
  explicit PartlyUsed(bool use_b) : use_b_(use_b) {
    core::Generator gen(3);
    a = register_module("a", std::make_shared<core::nn::Linear>(4, 4, true, &gen));
    b = register_module("b", std::make_shared<core::nn::Linear>(4, 4, true, &gen));
    c = register_module("c", std::make_shared<core::nn::Linear>(4, 4, true, &gen));
  }
  Tensor forward(const Tensor& x) override {
    Tensor h = a->forward(x);
    return use_b_ ? b->forward(h) : h;
  }
  std::shared_ptr<core::nn::Linear> a, b, c;

 private:
  bool use_b_;
};

TEST(Ddp, ParametersWithoutGradientsAreNamedUnlessAllowed) {
  run_ranks(2, [](std::shared_ptr<ProcessGroup> pg) {
    auto model = std::make_shared<PartlyUsed>(true);
    DistributedDataParallel ddp(model, pg);
    Tensor x = core::ones({2, 4});
    try {
      core::sum(ddp.forward(x)).backward();
      ADD_FAILURE() << "an unused parameter went unnoticed";
    } catch (const UnusedParametersError& e) {
      // The trainer adds its config key (distributed.find_unused_parameters) to this sentence.
      const std::string what = e.what();
      EXPECT_NE(what.find("c.weight, c.bias"), std::string::npos) << what;
      EXPECT_NE(what.find("allow unused parameters"), std::string::npos) << what;
    }
  });
  run_ranks(2, [](std::shared_ptr<ProcessGroup> pg) {
    const bool use_b = pg->rank() == 0;
    auto model = std::make_shared<PartlyUsed>(use_b);
    DdpOptions o;
    o.allow_unused_parameters = true;
    DistributedDataParallel ddp(model, pg, o);
    Tensor x = core::ones({2, 4});
    core::sum(ddp.forward(x)).backward();
    // b: rank 0's gradient averaged with rank 1's zero; c: unused everywhere, so no gradient.
    auto alone = std::make_shared<PartlyUsed>(true);
    core::sum(alone->forward(x)).backward();
    expect_close(model->b->weight.grad(), core::div(alone->b->weight.grad(), 2.0), "b.weight");
    EXPECT_FALSE(model->c->weight.grad().defined());
    EXPECT_FALSE(model->c->bias.grad().defined());
  });
}

// Trains `steps` steps of DDP or ZeRO-1 with `optimizer` ("sgd" or "adamw") and returns rank 0's
// final parameters and consolidated optimiser state.
struct Trained {
  std::vector<Tensor> params;
  core::optim::OptimizerState state;
};

std::unique_ptr<core::optim::Optimizer> make_optimizer(const std::string& kind,
                                                       std::vector<Tensor> params) {
  if (kind == "sgd")
    return std::make_unique<core::optim::SGD>(params,
                                              core::optim::SGDOptions{0.1, 0.9, 0, 0.01, false});
  return std::make_unique<core::optim::AdamW>(
      params, core::optim::AdamWOptions{0.01, 0.9, 0.99, 1e-8, 0.1});
}

Trained train(int world, bool zero1, const std::string& kind, int steps, double clip,
              const core::optim::OptimizerState* start = nullptr) {
  Trained out;
  std::mutex mu;
  run_ranks(world, [&](std::shared_ptr<ProcessGroup> pg) {
    auto model = make_mlp(0);
    DdpOptions o = small_buckets();
    o.reduce_scatter = zero1;
    DistributedDataParallel ddp(model, pg, o);
    std::unique_ptr<core::optim::Optimizer> opt;
    ShardedOptimizer* sharded = nullptr;
    if (zero1) {
      auto s = std::make_unique<ShardedOptimizer>(
          ddp, [&](std::vector<Tensor> shards) { return make_optimizer(kind, shards); });
      sharded = s.get();
      opt = std::move(s);
    } else {
      opt = make_optimizer(kind, model->parameters());
    }
    if (start) opt->load_state_dict(*start);
    for (int step = 0; step < steps; ++step) {
      Data d = rows(make_data(4 * world * steps), 4 * (world * step + pg->rank()), 4);
      opt->zero_grad();
      core::cross_entropy(ddp.forward(d.x), d.y).backward();
      if (clip > 0) {
        if (sharded) {
          sharded->clip_grad_norm(clip);
        } else {
          core::optim::clip_grad_norm(opt->params(), clip);
        }
      }
      opt->step();
    }
    auto state = opt->state_dict();  // every rank: ZeRO-1 gathers
    if (pg->rank() == 0) {
      std::lock_guard<std::mutex> lock(mu);
      for (auto& p : model->parameters()) out.params.push_back(p.detach().clone());
      out.state = state;
    }
  });
  return out;
}

TEST(Zero1, EqualsDdpWithConsolidatedStateAndGlobalClipping) {
  for (std::string kind : {"sgd", "adamw"}) {
    for (int world : {2, 3}) {
      SCOPED_TRACE(kind + " on " + std::to_string(world) + " ranks");
      Trained ddp = train(world, false, kind, 4, 0.5);
      Trained zero = train(world, true, kind, 4, 0.5);
      ASSERT_EQ(ddp.params.size(), zero.params.size());
      for (size_t i = 0; i < ddp.params.size(); ++i)
        expect_close(zero.params[i], ddp.params[i], "parameter " + std::to_string(i));
      ASSERT_EQ(ddp.state.size(), zero.state.size());
      for (auto& [key, value] : ddp.state) {
        ASSERT_TRUE(zero.state.count(key)) << key;
        expect_close(zero.state.at(key), value, key);
      }
    }
  }
}

TEST(Zero1, StateMovesBetweenWorldSizesAndStrategies) {
  // Two steps on 2 ranks with ZeRO-1, then its consolidated state continues on 3 ranks both with
  // ZeRO-1 and with plain DDP: the two must agree.
  Trained first = train(2, true, "adamw", 2, 0);
  Trained zero3 = train(3, true, "adamw", 2, 0, &first.state);
  Trained ddp3 = train(3, false, "adamw", 2, 0, &first.state);
  EXPECT_EQ(zero3.state.at("step").item<int64_t>(), 4);
  for (size_t i = 0; i < ddp3.params.size(); ++i)
    expect_close(zero3.params[i], ddp3.params[i], "parameter " + std::to_string(i));
}

}  // namespace
}  // namespace cohort::collectives
