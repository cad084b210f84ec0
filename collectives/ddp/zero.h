// ZeRO stage 1: optimiser state sharded across the ranks of a data-parallel group.
//
// DDP runs with reduce_scatter, so after backward each rank holds the averaged gradient of its own
// contiguous shard of every bucket. Each rank keeps the master copy of its parameter shard and the
// optimiser state for it only (1/world of the memory), steps it with an ordinary optimiser, then
// every bucket's parameters are all-gathered back into the module. Because SGD and AdamW update
// each element independently, the result equals plain DDP.
//
// state_dict() is consolidated (a collective: every rank must call it): it has the keys of an
// unsharded optimiser over the module's parameters, so checkpoints move freely between ddp, zero1,
// a single process and any world size.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "collectives/ddp/ddp.h"
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
  // Load the model's parameters first: the shards are re-read from them.
  void load_state_dict(const core::optim::OptimizerState& state) override;
  // Global-norm clipping over the shards of every rank (a collective); returns the norm before.
  double clip_grad_norm(double max_norm);
  // Copies this rank's shards from the module's current parameters.
  void read_shards();

 private:
  int64_t shard_size(size_t bucket) const;
  DistributedDataParallel& ddp_;
  std::vector<core::Tensor> shards_;    // per bucket: master copy of this rank's slice
  std::vector<core::Tensor> gathered_;  // per bucket: all ranks' slices, padded
  std::unique_ptr<core::optim::Optimizer> inner_;
};

}  // namespace cohort::collectives
