// ZeRO stage 1: optimiser state sharded across the ranks of a data-parallel group.
//
// DDP runs with reduce_scatter, so after backward each rank holds the averaged gradient of its own
// contiguous shard of every bucket. Each bucket's parameters live in one flat buffer laid out as
// its gradients (the module's parameters become views of it, as FSDP's flat parameters are): each
// rank steps its own shard of that buffer with an ordinary optimiser that keeps state for the shard
// only (1/world of the memory), and an in-place all-gather then fills in the other ranks' shards,
// straight into the module's parameters. Because SGD and AdamW update each element independently,
// the result equals plain DDP. A bucket's parameters share one version counter.
//
// state_dict() is consolidated (a collective: every rank must call it): it has the keys of an
// unsharded optimiser over the module's parameters, so checkpoints move freely between ddp, zero1,
// a single process and any world size.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "collectives/ddp/ddp.h"
#include "collectives/ddp/flat_shard.h"
#include "core/optim/optimizer.h"

namespace cohort::collectives {

class ShardedOptimizer : public core::optim::Optimizer {
 public:
  using MakeInner =
      std::function<std::unique_ptr<core::optim::Optimizer>(std::vector<core::Tensor> shards)>;
  // `ddp` must have been built with DdpOptions::reduce_scatter and outlive this optimiser.
  ShardedOptimizer(DistributedDataParallel& ddp, const MakeInner& make_inner);

  void step() override;
  core::optim::OptimizerState state_dict() const override;
  void load_state_dict(const core::optim::OptimizerState& state) override;
  // Global-norm clipping over the shards of every rank (a collective); returns the norm before.
  double clip_grad_norm(double max_norm);
  // The shards this rank steps (their .grad() is its averaged gradient shard).
  const std::vector<core::Tensor>& shards() const { return shards_; }
  // Bytes of this rank's optimiser state.
  int64_t state_bytes() const;
  // The layout of each shard's bucket, and the state of the optimiser over the shards (keys
  // "<bucket>.<name>"): for checkpoints that write and read each rank's part only.
  const std::vector<FlatGroup>& groups() const { return groups_; }
  core::optim::OptimizerState shard_state_dict() const { return inner_->state_dict(); }
  void load_shard_state_dict(const core::optim::OptimizerState& state);

 private:
  DistributedDataParallel& ddp_;
  std::vector<FlatGroup> groups_;
  std::vector<core::Tensor> flat_;    // per bucket: every parameter, padded; the module's views
  std::vector<core::Tensor> shards_;  // per bucket: this rank's block of flat_ (a view)
  std::unique_ptr<core::optim::Optimizer> inner_;
};

// Scales the shards' gradients so that the norm over every rank's shards is at most max_norm;
// returns the norm before. A collective. Padding must hold zeros.
double clip_sharded_grad_norm(const std::vector<core::Tensor>& shards, double max_norm,
                              ProcessGroup& group);

}  // namespace cohort::collectives
