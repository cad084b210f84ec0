#include "collectives/ddp/zero.h"

#include <cmath>

#include "core/autograd/grad_mode.h"
#include "core/ops/ops.h"

namespace cohort::collectives {

using core::Tensor;

ShardedOptimizer::ShardedOptimizer(DistributedDataParallel& ddp, const MakeInner& make_inner)
    : Optimizer(ddp.params(), 0.0), ddp_(ddp) {
  core::autograd::NoGradGuard guard;
  const int rank = ddp_.group().rank(), world = ddp_.group().size();
  for (auto& b : ddp_.buckets()) {
    COHORT_CHECK(b.shard.defined(),
                 "ShardedOptimizer needs DistributedDataParallel built with reduce_scatter");
    FlatGroup g;
    g.params = b.params;
    for (size_t k : b.params) g.offsets.push_back(ddp_.slots()[k].offset);
    g.numel = b.numel;
    g.padded = b.padded;
    const Tensor& like = params_[b.params.front()];
    Tensor flat =
        core::zeros({b.padded}, core::TensorOptions(like.dtype()).with_device(like.device()));
    for (size_t i = 0; i < g.params.size(); ++i) {
      Tensor& p = params_[g.params[i]];
      Tensor slot = param_slice(flat, g, i, p);
      slot.copy_(p);
      p.set_(slot);
    }
    const int64_t n = g.shard_numel(world);
    Tensor s = flat.narrow(0, n * rank, n);
    s.set_requires_grad(true);
    s.set_grad(b.shard);
    flat_.push_back(flat);
    shards_.push_back(s);
    groups_.push_back(std::move(g));
  }
  inner_ = make_inner(shards_);
  lr_ = inner_->lr();
}

double ShardedOptimizer::clip_grad_norm(double max_norm) {
  return clip_sharded_grad_norm(shards_, max_norm, ddp_.group());
}

void ShardedOptimizer::step() {
  core::autograd::NoGradGuard guard;
  inner_->set_lr(lr_);
  inner_->step();
  ++steps_;
  ProcessGroup& g = ddp_.group();
  // In place: each shard is its block of the flat buffer, so the other ranks' blocks land
  // directly in the module's parameters.
  std::vector<std::shared_ptr<Work>> works;
  for (size_t b = 0; b < shards_.size(); ++b) works.push_back(g.allgather(flat_[b], shards_[b]));
  for (size_t b = 0; b < shards_.size(); ++b) {
    works[b]->wait();
    flat_[b].bump_version();
  }
}

core::optim::OptimizerState ShardedOptimizer::state_dict() const {
  return consolidate_state(inner_->state_dict(), groups_, params_, ddp_.group());
}

void ShardedOptimizer::load_state_dict(const core::optim::OptimizerState& state) {
  inner_->load_state_dict(
      shard_state(state, groups_, params_, ddp_.group().rank(), ddp_.group().size()));
  if (auto it = state.find("step"); it != state.end()) steps_ = it->second.item<int64_t>();
}

void ShardedOptimizer::load_shard_state_dict(const core::optim::OptimizerState& state) {
  inner_->load_state_dict(state);
  if (auto it = state.find("step"); it != state.end()) steps_ = it->second.item<int64_t>();
}

int64_t ShardedOptimizer::state_bytes() const {
  int64_t bytes = 0;
  for (auto& [k, t] : inner_->state_dict())
    if (k != "step") bytes += t.numel() * static_cast<int64_t>(t.element_size());
  return bytes;
}

double clip_sharded_grad_norm(const std::vector<Tensor>& shards, double max_norm,
                              ProcessGroup& group) {
  core::autograd::NoGradGuard guard;
  double local = 0;
  for (auto& s : shards)
    if (s.grad().defined())
      local += core::sum(core::square(s.grad().to(core::DType::kFloat64))).item<double>();
  // The padding of each group is zero, so it adds nothing to the norm.
  Tensor total =
      core::full({1}, local,
                 core::TensorOptions(core::DType::kFloat64)
                     .with_device(shards.empty() ? core::Device::cpu() : shards[0].device()));
  group.allreduce(total, {ReduceOp::kSum})->wait();
  const double norm = std::sqrt(total.to(core::Device::cpu()).item<double>());
  const double coef = max_norm / (norm + 1e-6);
  if (coef < 1)
    for (auto& s : shards) {
      Tensor g = s.grad();
      if (g.defined()) core::mul_(g, coef);
    }
  return norm;
}

}  // namespace cohort::collectives
