// Parameters laid end to end in one flat buffer, padded to a multiple of the world size and cut
// into one contiguous shard per rank: ZeRO's gradient buckets and FSDP's units both shard this way,
// and so do their optimisers' states. An optimiser built over the shards keys its state by group
// ("<group>.<name>"); checkpoints key it by parameter ("<param>.<name>"), as an unsharded
// optimiser does, so that they move between strategies and world sizes.
#pragma once

#include <cstdint>
#include <vector>

#include "collectives/process_group.h"
#include "core/optim/optimizer.h"

namespace cohort::collectives {

struct FlatGroup {
  std::vector<size_t> params;    // indices into the parameter list
  std::vector<int64_t> offsets;  // each one's first element in the flat buffer
  int64_t numel = 0;             // unpadded
  int64_t padded = 0;            // numel rounded up to a multiple of the world size
  int64_t shard_numel(int world) const { return padded / world; }
};

// Lays `params` (their indices in `order`) out as one group for a world of `world` ranks.
FlatGroup make_flat_group(const std::vector<core::Tensor>& params, const std::vector<size_t>& order,
                          int world);

// Parameter `k`'s slice of a group's flat buffer, shaped as the parameter.
core::Tensor param_slice(const core::Tensor& flat, const FlatGroup& g, size_t k_in_group,
                         const core::Tensor& like);

// The state of an optimiser over each group's shard as the state of one over `params`: every
// group's state is gathered from the ranks. A collective: every rank calls it, and gets it all.
core::optim::OptimizerState consolidate_state(const core::optim::OptimizerState& sharded,
                                              const std::vector<FlatGroup>& groups,
                                              const std::vector<core::Tensor>& params,
                                              ProcessGroup& pg);

// The reverse: this rank's shards of a state keyed by parameter. Shapes must match `params`.
core::optim::OptimizerState shard_state(const core::optim::OptimizerState& full,
                                        const std::vector<FlatGroup>& groups,
                                        const std::vector<core::Tensor>& params, int rank,
                                        int world);

}  // namespace cohort::collectives
