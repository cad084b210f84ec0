#include "collectives/ddp/zero.h"

#include <cmath>
#include <set>

#include "core/autograd/grad_mode.h"
#include "core/ops/ops.h"

namespace cohort::collectives {

using core::Tensor;

namespace {

Tensor param_slice(const Tensor& flat, int64_t offset, const Tensor& like) {
  return flat.narrow(0, offset, like.numel()).view(like.sizes());
}

}  // namespace

ShardedOptimizer::ShardedOptimizer(DistributedDataParallel& ddp, const MakeInner& make_inner)
    : Optimizer(ddp.params(), 0.0), ddp_(ddp) {
  core::autograd::NoGradGuard guard;
  const int rank = ddp_.group().rank();
  for (auto& b : ddp_.buckets()) {
    COHORT_CHECK(b.shard.defined(),
                 "ShardedOptimizer needs DistributedDataParallel built with reduce_scatter");
    Tensor flat = core::zeros_like(b.grads);
    for (size_t k : b.params) {
      Tensor slot = param_slice(flat, ddp_.slots()[k].offset, params_[k]);
      slot.copy_(params_[k]);
      params_[k].set_(slot);
    }
    const int64_t n = b.shard.numel();
    Tensor s = flat.narrow(0, n * rank, n);
    s.set_requires_grad(true);
    s.set_grad(b.shard);
    flat_.push_back(flat);
    shards_.push_back(s);
  }
  inner_ = make_inner(shards_);
  lr_ = inner_->lr();
}

int64_t ShardedOptimizer::shard_size(size_t bucket) const { return shards_[bucket].numel(); }

double ShardedOptimizer::clip_grad_norm(double max_norm) {
  core::autograd::NoGradGuard guard;
  double local = 0;
  for (auto& s : shards_)
    local += core::sum(core::square(s.grad().to(core::DType::kFloat64))).item<double>();
  // The padding of each bucket is zero, so it adds nothing to the norm.
  Tensor total =
      core::full({1}, local,
                 core::TensorOptions(core::DType::kFloat64)
                     .with_device(shards_.empty() ? core::Device::cpu() : shards_[0].device()));
  ddp_.group().allreduce(total, {ReduceOp::kSum})->wait();
  const double norm = std::sqrt(total.to(core::Device::cpu()).item<double>());
  const double coef = max_norm / (norm + 1e-6);
  if (coef < 1)
    for (auto& s : shards_) {
      Tensor g = s.grad();
      core::mul_(g, coef);
    }
  return norm;
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
  core::optim::OptimizerState inner = inner_->state_dict(), out;
  std::set<std::string> names;
  for (auto& [key, v] : inner) {
    size_t dot = key.find('.');
    if (dot != std::string::npos) names.insert(key.substr(dot + 1));
  }
  ProcessGroup& g = ddp_.group();
  for (const std::string& name : names) {
    for (size_t b = 0; b < shards_.size(); ++b) {
      auto it = inner.find(std::to_string(b) + "." + name);
      if (it == inner.end()) continue;
      Tensor full = core::zeros_like(flat_[b]);
      Tensor mine = it->second.contiguous();
      g.allgather(full, mine)->wait();
      for (size_t k : ddp_.buckets()[b].params)
        out[std::to_string(k) + "." + name] =
            param_slice(full, ddp_.slots()[k].offset, params_[k]).clone();
    }
  }
  out["step"] = inner.at("step");
  return out;
}

void ShardedOptimizer::load_state_dict(const core::optim::OptimizerState& state) {
  core::autograd::NoGradGuard guard;
  std::set<std::string> names;
  for (auto& [key, v] : state) {
    size_t dot = key.find('.');
    if (dot != std::string::npos) names.insert(key.substr(dot + 1));
  }
  const int rank = ddp_.group().rank();
  core::optim::OptimizerState inner;
  for (const std::string& name : names) {
    for (size_t b = 0; b < shards_.size(); ++b) {
      Tensor full = core::zeros_like(flat_[b]);
      bool any = false;
      for (size_t k : ddp_.buckets()[b].params) {
        auto it = state.find(std::to_string(k) + "." + name);
        if (it == state.end()) continue;
        COHORT_CHECK(it->second.sizes() == params_[k].sizes(), "optimizer state: '", it->first,
                     "' has shape ", core::shape_str(it->second.sizes()), ", parameter has ",
                     core::shape_str(params_[k].sizes()));
        param_slice(full, ddp_.slots()[k].offset, params_[k]).copy_(it->second);
        any = true;
      }
      if (any)
        inner[std::to_string(b) + "." + name] =
            full.narrow(0, shard_size(b) * rank, shard_size(b)).clone();
    }
  }
  if (auto it = state.find("step"); it != state.end()) {
    inner["step"] = it->second;
    steps_ = it->second.item<int64_t>();
  }
  inner_->load_state_dict(inner);
}

}  // namespace cohort::collectives
