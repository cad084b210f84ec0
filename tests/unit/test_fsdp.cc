// ZeRO-2 and FSDP with threads standing in for ranks over the cpu backend: both must train to what
// DDP trains to (parameters and consolidated optimiser state, with clipping and accumulation), in
// every FSDP configuration (units, prefetch depth, resharding after forward); FSDP must hold only
// its shards between steps and free what it gathers; bad unit names and unused parameters are
// errors naming them.
#include <gtest/gtest.h>

#include <mutex>

#include "cohort/config.h"
#include "collectives/ddp/fsdp.h"
#include "collectives/ddp/zero.h"
#include "core/autograd/grad_mode.h"
#include "core/nn/layers.h"
#include "core/optim/optimizer.h"
#include "core/tensor/cuda/cuda_device.h"
#include "ddp_test_util.h"

namespace cohort::collectives {
namespace {

using namespace ddp_testing;

enum class Mode { kDdp, kZero2, kFsdp };

struct Recipe {
  Mode mode = Mode::kDdp;
  core::optim::OptimizerKind kind = core::optim::OptimizerKind::kAdamW;
  FsdpOptions fsdp;
  int accum = 1;
  double clip = 0;
};

struct Trained {
  std::vector<Tensor> params;
  core::optim::OptimizerState state;
  int64_t sharded_bytes = 0, peak_gathered = 0;
};

core::optim::OptimizerSpec spec_of(core::optim::OptimizerKind kind) {
  core::optim::OptimizerSpec s;
  s.kind = kind;
  s.lr = kind == core::optim::OptimizerKind::kSgd ? 0.1 : 0.01;
  s.momentum = 0.9;
  s.weight_decay = 0.05;
  return s;
}

// Four steps of `setup` on `world` ranks; rank 0's whole parameters and consolidated state.
Trained train(int world, const Recipe& setup, int steps = 4) {
  Trained out;
  std::mutex mu;
  run_ranks(world, [&](std::shared_ptr<ProcessGroup> pg) {
    // Float64: bucket and unit boundaries change how the backends split their reductions, and
    // float64 keeps that reordering far below the tolerance (expect_same).
    auto model = make_mlp(0);
    model->to(core::DType::kFloat64);
    const auto spec = spec_of(setup.kind);
    std::unique_ptr<DistributedDataParallel> ddp;
    std::unique_ptr<FullyShardedDataParallel> fsdp;
    std::unique_ptr<core::optim::Optimizer> opt;
    ShardedOptimizer* zero = nullptr;
    std::function<Tensor(const Tensor&)> forward;
    if (setup.mode == Mode::kFsdp) {
      fsdp = std::make_unique<FullyShardedDataParallel>(model, pg, setup.fsdp);
      opt = core::optim::make_optimizer(spec, fsdp->shards());
      forward = [&](const Tensor& x) { return fsdp->forward(x); };
    } else {
      DdpOptions o = small_buckets();
      o.reduce_scatter = o.free_gradients = setup.mode == Mode::kZero2;
      ddp = std::make_unique<DistributedDataParallel>(model, pg, o);
      if (o.reduce_scatter) {
        auto s = std::make_unique<ShardedOptimizer>(
            *ddp, [&](std::vector<Tensor> p) { return core::optim::make_optimizer(spec, p); });
        zero = s.get();
        opt = std::move(s);
      } else {
        opt = core::optim::make_optimizer(spec, model->parameters());
      }
      forward = [&](const Tensor& x) { return ddp->forward(x); };
    }
    const int64_t per = 4 * setup.accum;
    const Data all = make_data(per * world * steps);
    for (int step = 0; step < steps; ++step) {
      opt->zero_grad();
      if (ddp) ddp->zero_shards();
      for (int micro = 0; micro < setup.accum; ++micro) {
        Data d = rows(all, per * (world * step + pg->rank()) + 4 * micro, 4);
        std::optional<DistributedDataParallel::NoSync> local;
        if (setup.mode == Mode::kDdp && micro + 1 < setup.accum) local.emplace(ddp.get());
        core::div(core::cross_entropy(forward(d.x.to(core::DType::kFloat64)), d.y),
                  static_cast<double>(setup.accum))
            .backward();
      }
      if (setup.clip > 0) {
        if (fsdp) {
          clip_sharded_grad_norm(fsdp->shards(), setup.clip, *pg);
        } else if (zero) {
          zero->clip_grad_norm(setup.clip);
        } else {
          core::optim::clip_grad_norm(opt->params(), setup.clip);
        }
      }
      opt->step();
    }
    core::optim::OptimizerState state;
    std::vector<Tensor> params;
    if (fsdp) {
      state = consolidate_state(opt->state_dict(), fsdp->layouts(), fsdp->params(), *pg);
      auto full = fsdp->full_params();
      for (auto& p : model->parameters()) params.push_back(p.detach().clone());
    } else {
      state = opt->state_dict();  // every rank: ZeRO gathers
      for (auto& p : model->parameters()) params.push_back(p.detach().clone());
    }
    if (pg->rank() == 0) {
      std::lock_guard<std::mutex> lock(mu);
      out.params = params;
      out.state = state;
      if (fsdp) {
        out.sharded_bytes = fsdp->sharded_bytes();
        out.peak_gathered = fsdp->peak_gathered_bytes();
      }
    }
  });
  return out;
}

void expect_same(const Trained& got, const Trained& want) {
  ASSERT_EQ(got.params.size(), want.params.size());
  for (size_t i = 0; i < want.params.size(); ++i)
    expect_close(got.params[i], want.params[i], "parameter " + std::to_string(i), 1e-10);
  ASSERT_EQ(got.state.size(), want.state.size());
  for (auto& [key, value] : want.state) {
    ASSERT_TRUE(got.state.count(key)) << key;
    expect_close(got.state.at(key), value, key, 1e-10);
  }
}

TEST(Zero2, EqualsDdpWithAccumulationAndClipping) {
  for (auto kind : {core::optim::OptimizerKind::kSgd, core::optim::OptimizerKind::kAdamW}) {
    for (int world : {2, 3}) {
      SCOPED_TRACE(std::string(core::optim::optimizer_kind_name(kind)) + " on " +
                   std::to_string(world) + " ranks");
      Recipe s;
      s.kind = kind;
      s.accum = 2;
      s.clip = 0.5;
      const Trained ddp = train(world, s);
      s.mode = Mode::kZero2;
      expect_same(train(world, s), ddp);
    }
  }
}

TEST(Zero2, HoldsNoFullSizeGradientBetweenBackwardPasses) {
  run_ranks(2, [](std::shared_ptr<ProcessGroup> pg) {
    auto model = make_mlp(0);
    DdpOptions o = small_buckets();
    o.reduce_scatter = o.free_gradients = true;
    DistributedDataParallel ddp(model, pg, o);
    int64_t shard_bytes = 0, params = 0;
    for (auto& b : ddp.buckets()) shard_bytes += b.shard.numel() * 4;
    for (auto& p : model->parameters()) params += p.numel();
    const Data d = rows(make_data(8), 4 * pg->rank(), 4);
    core::cross_entropy(ddp.forward(d.x), d.y).backward();
    // Only the shards remain: about half the parameters' size on 2 ranks.
    EXPECT_EQ(ddp.gradient_bytes(), shard_bytes);
    EXPECT_LT(shard_bytes, params * 4 * 6 / 10);
    for (auto& p : model->parameters()) EXPECT_FALSE(p.grad().defined());
  });
}

TEST(Fsdp, EqualsDdpInEveryConfiguration) {
  struct Case {
    std::string name;
    std::vector<std::string> units;
    int prefetch;
    bool reshard;
  };
  const std::vector<Case> cases = {
      {"every layer, prefetch 1", {}, 1, true},
      {"every layer, no prefetch", {}, 0, true},
      {"every layer, prefetch 2, kept after forward", {}, 2, false},
      {"two units by pattern, the root holds l3", {"l1", "l2"}, 1, true},
      {"one unit by glob", {"l*"}, 1, true},
  };
  for (auto kind : {core::optim::OptimizerKind::kSgd, core::optim::OptimizerKind::kAdamW}) {
    for (int world : {2, 3}) {
      Recipe s;
      s.kind = kind;
      s.accum = 2;
      s.clip = 0.5;
      const Trained ddp = train(world, s);
      for (const Case& c : cases) {
        SCOPED_TRACE(c.name + ", " + core::optim::optimizer_kind_name(kind) + " on " +
                     std::to_string(world) + " ranks");
        s.mode = Mode::kFsdp;
        s.fsdp.units = c.units;
        s.fsdp.prefetch = c.prefetch;
        s.fsdp.reshard_after_forward = c.reshard;
        expect_same(train(world, s), ddp);
      }
    }
  }
}

TEST(Fsdp, HoldsItsShardsAndFreesWhatItGathers) {
  int64_t whole = 0;  // bytes, in float64 as train() runs
  for (auto& p : make_mlp(0)->parameters()) whole += p.numel() * 8;
  Recipe s;
  s.mode = Mode::kFsdp;
  const Trained two = train(2, s), four = train(4, s);
  // Parameters and gradients, each a world-th (plus padding).
  EXPECT_LE(two.sharded_bytes, 2 * whole / 2 + 2 * 3 * 8);
  EXPECT_LE(four.sharded_bytes, 2 * whole / 4 + 2 * 3 * 3 * 8);
  EXPECT_LT(four.sharded_bytes, two.sharded_bytes);
  // Never more than a few units gathered at once, never the whole model with its gradients.
  EXPECT_GT(two.peak_gathered, 0);
  EXPECT_LT(two.peak_gathered, 2 * whole);

  run_ranks(2, [](std::shared_ptr<ProcessGroup> pg) {
    auto model = make_mlp(0);
    FullyShardedDataParallel fsdp(model, pg);
    EXPECT_EQ(fsdp.unit_names(), (std::vector<std::string>{"l1", "l2", "l3"}));
    // Between steps the module's parameters have no memory; reading one says why.
    EXPECT_THROW((void)model->parameters()[0].data_ptr<float>(), core::ReleasedMemoryError);
    EXPECT_EQ(fsdp.gathered_bytes(), 0);
    {
      auto full = fsdp.full_params();
      EXPECT_NO_THROW((void)model->parameters()[0].data_ptr<float>());
    }
    // Evaluation under no-grad equals the gathered model's forward.
    const Data d = make_data(4);
    Tensor expected;
    {
      auto full = fsdp.full_params();
      core::autograd::NoGradGuard guard;
      expected = model->forward(d.x).clone();
    }
    core::autograd::NoGradGuard guard;
    expect_close(fsdp.forward(d.x), expected, "no-grad forward");
    EXPECT_EQ(fsdp.gathered_bytes(), 0);
  });
}

TEST(Fsdp, UnitsThatNameNoModuleAndUnusedParametersAreErrors) {
  run_ranks(2, [](std::shared_ptr<ProcessGroup> pg) {
    FsdpOptions o;
    o.units = {"l1", "blocks.*"};
    try {
      FullyShardedDataParallel fsdp(make_mlp(0), pg, o);
      ADD_FAILURE() << "a unit that names no module was accepted";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("'blocks.*' names no module"), std::string::npos)
          << e.what();
      EXPECT_NE(std::string(e.what()).find("l1, l2, l3"), std::string::npos) << e.what();
    }
  });
  // A model that leaves a layer out of its output on every rank.
  struct Partial : core::nn::Module {
    explicit Partial(core::Generator* g) {
      a = register_module("a", std::make_shared<core::nn::Linear>(8, 4, true, g));
      b = register_module("b", std::make_shared<core::nn::Linear>(8, 4, true, g));
    }
    Tensor forward(const Tensor& x) override { return (*a)(x); }
    std::shared_ptr<core::nn::Linear> a, b;
  };
  for (bool allow : {false, true}) {
    run_ranks(2, [allow](std::shared_ptr<ProcessGroup> pg) {
      core::Generator gen(1);
      FsdpOptions o;
      o.allow_unused_parameters = allow;
      FullyShardedDataParallel fsdp(std::make_shared<Partial>(&gen), pg, o);
      const Data d = rows(make_data(8), 4 * pg->rank(), 4);
      Tensor loss = core::cross_entropy(fsdp.forward(d.x), d.y);
      if (!allow) {
        try {
          loss.backward();
          ADD_FAILURE() << "unused parameters were accepted";
        } catch (const ConfigError& e) {
          EXPECT_NE(std::string(e.what()).find("b.weight, b.bias"), std::string::npos) << e.what();
        }
        return;
      }
      loss.backward();
      // The unused layer's shard has a zero gradient; the used one's does not.
      double unused = 0, used = 0;
      for (size_t u = 0; u < fsdp.shards().size(); ++u) {
        const double n = core::sum(core::square(fsdp.shards()[u].grad())).item<double>();
        (fsdp.unit_names()[u] == "b" ? unused : used) += n;
      }
      EXPECT_EQ(unused, 0.0);
      EXPECT_GT(used, 0.0);
    });
  }
}

// FSDP and ZeRO-2 on CUDA tensors over the nccl backend: gathers and reductions on NCCL's
// stream, the compute stream waiting on their events, memory freed and regathered on the device.
// One GPU allows one rank; two steps of SGD must equal the same steps of a plain model on the same
// GPU. Skips where there is no GPU.
TEST(Fsdp, NcclOnOneGpuEqualsPlainSteps) {
  if (!COHORT_USE_NCCL || core::cuda::device_count() == 0)
    GTEST_SKIP() << (COHORT_USE_NCCL ? "needs a GPU: " + core::cuda::unavailable_reason()
                                     : std::string("this build has no NCCL"));
  const core::Device gpu = core::Device::cuda(0);
  const Data d = make_data(12);
  const auto spec = spec_of(core::optim::OptimizerKind::kSgd);
  auto plain = make_mlp(0);
  plain->to(gpu);
  auto plain_opt = core::optim::make_optimizer(spec, plain->parameters());
  for (int step = 0; step < 2; ++step) {
    plain_opt->zero_grad();
    core::cross_entropy(plain->forward(d.x.to(gpu)), d.y.to(gpu)).backward();
    plain_opt->step();
  }
  for (bool fsdp_mode : {true, false}) {
    SCOPED_TRACE(fsdp_mode ? "fsdp" : "zero2");
    auto model = make_mlp(0);
    model->to(gpu);
    auto pg = create_process_group("nccl", std::make_shared<HashStore>(), 0, 1);
    std::vector<Tensor> got;
    if (fsdp_mode) {
      FullyShardedDataParallel fsdp(model, pg);
      auto opt = core::optim::make_optimizer(spec, fsdp.shards());
      for (int step = 0; step < 2; ++step) {
        opt->zero_grad();
        core::cross_entropy(fsdp.forward(d.x.to(gpu)), d.y.to(gpu)).backward();
        opt->step();
      }
      auto full = fsdp.full_params();
      for (auto& p : model->parameters()) got.push_back(p.detach().to(core::Device::cpu()));
    } else {
      DdpOptions o = small_buckets();
      o.reduce_scatter = o.free_gradients = true;
      DistributedDataParallel ddp(model, pg, o);
      ShardedOptimizer opt(
          ddp, [&](std::vector<Tensor> p) { return core::optim::make_optimizer(spec, p); });
      for (int step = 0; step < 2; ++step) {
        opt.zero_grad();
        ddp.zero_shards();
        core::cross_entropy(ddp.forward(d.x.to(gpu)), d.y.to(gpu)).backward();
        opt.step();
      }
      for (auto& p : model->parameters()) got.push_back(p.detach().to(core::Device::cpu()));
    }
    const auto want = plain->parameters();
    for (size_t i = 0; i < got.size(); ++i)
      expect_close(got[i], want[i].detach().to(core::Device::cpu()),
                   "parameter " + std::to_string(i));
  }
}

}  // namespace
}  // namespace cohort::collectives
