// The pieces of a sharded checkpoint (core/io/checkpoint.h) each strategy writes, and their reading
// back: replicated tensors sliced equally over the writers; the parameters and optimiser buffers
// of flat shards (FSDP's units, ZeRO's buckets, collectives/ddp/flat_shard.h) as the pieces of
// each parameter that lie in this rank's shard, keyed by parameter as an unsharded optimiser
// keys its state ("<param index>.<name>"), so that any strategy at any world size reads them.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "collectives/ddp/flat_shard.h"
#include "core/io/checkpoint.h"
#include "core/optim/optimizer.h"

namespace cohort::trainer {

// Elements [n * rank / writers, n * (rank + 1) / writers) of every tensor.
void slice_into(const std::map<std::string, core::Tensor>& tensors, int rank, int writers,
                std::vector<core::io::Piece>& out);
// The pieces of each group's parameters in `shards` (one flat shard per group).
void shard_pieces(const std::vector<collectives::FlatGroup>& groups,
                  const std::vector<core::Tensor>& shards, const std::vector<core::Tensor>& params,
                  const std::vector<std::string>& names, int rank, int world,
                  std::vector<core::io::Piece>& out);
// The same pieces of an optimiser over the shards (state "<group>.<name>", plus "step" from
// rank 0).
void optimizer_pieces(const std::vector<collectives::FlatGroup>& groups,
                      const core::optim::OptimizerState& inner,
                      const std::vector<core::Tensor>& params, int rank, int world,
                      std::vector<core::io::Piece>& out);
// ConfigError naming the checkpoint and tensor when the checkpoint lacks it or holds another
// shape.
void expect_shape(const core::io::CheckpointReader& ck, const std::string& name,
                  const core::Shape& shape);
// Reads this rank's part of every group's parameters into `shards`.
void read_shards(const core::io::CheckpointReader& ck,
                 const std::vector<collectives::FlatGroup>& groups,
                 std::vector<core::Tensor>& shards, const std::vector<core::Tensor>& params,
                 const std::vector<std::string>& names, int rank, int world);
// This rank's optimiser state over the shards, from a checkpoint's state keyed by parameter.
core::optim::OptimizerState read_optimizer_shards(const core::io::CheckpointReader& ck,
                                                  const std::vector<collectives::FlatGroup>& groups,
                                                  const std::vector<core::Tensor>& shards,
                                                  const std::vector<core::Tensor>& params, int rank,
                                                  int world);

}  // namespace cohort::trainer
