// FullyShardedDataParallel (ZeRO-3): every rank holds 1/world of each parameter, of its gradient
// and (through an optimiser over the shards) of its optimiser state.
//
// The model is cut into units: chosen submodules, plus the root for the parameters no unit owns
// (a parameter belongs to the innermost unit containing it). Each unit's parameters are laid end
// to end in one flat buffer (flat_shard.h) of which each rank keeps its contiguous shard; the
// module's parameters become views of a unit-sized buffer whose memory exists only while the unit
// is gathered:
//   forward   a pre-forward hook all-gathers the unit (waiting for a gather already started) and
//             starts gathering the next `prefetch` units in the previous forward's order; a
//             post-forward hook frees it again (reshard_after_forward) and hooks the unit's output
//             so that its backward begins with a gather.
//   backward  the hook on the unit's output gathers it (and prefetches the units before it); when
//             every parameter of the unit has its gradient, the unit's flat gradient is
//             reduce-scattered (averaged) and added into this rank's shard gradient, and the
//             gathered parameters and the full-size gradient are freed.
// Collectives are issued in an order every rank shares (the autograd graph's), so gathers and
// reductions interleave freely with compute. On the nccl backend they run on its stream and the
// compute stream waits on their events (ProcessGroup's Work). Buffers (batch-norm statistics)
// are not sharded: rank 0's are broadcast before each training forward, as DDP does.
//
// Modules must call their children through operator() (module.h), which runs the hooks; a
// parameter used outside its unit's forward (weights tied across units) must live in the root.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "collectives/ddp/flat_shard.h"
#include "collectives/process_group.h"
#include "core/nn/module.h"
#include "core/util/timeline.h"

namespace cohort::collectives {

struct FsdpOptions {
  // Module names as named_parameters() dots them; `*` matches within one name part ("blocks.*",
  // "h*"). Empty: each top-level child with parameters. A pattern that matches no module is a
  // ConfigError listing the module's top-level children.
  std::vector<std::string> units;
  bool reshard_after_forward = true;
  int prefetch = 1;  // units gathered ahead of the one computing
  // Parameters that get no gradient count as zero (else an error naming them, as in DDP).
  bool allow_unused_parameters = false;
  Millis timeout{0};                   // 0: the group's
  core::Timeline* timeline = nullptr;  // gathers and reductions are drawn on its lane 1
};

// How FSDP cuts a module into units, without touching its memory: each unit's module name ("" for
// the root, last) and its parameters (indices into the trainable parameters, `param_names`, in
// named_parameters() order). Units that would own no parameter are left out. ConfigError for a
// pattern that names no module.
struct UnitPlan {
  std::string name;
  core::nn::Module* module = nullptr;
  std::vector<size_t> params;
};
std::vector<UnitPlan> plan_units(core::nn::Module& root, const std::vector<std::string>& patterns,
                                 const std::vector<std::string>& param_names);

class FullyShardedDataParallel {
 public:
  // Broadcasts rank 0's parameters and buffers, keeps this rank's shards and frees the rest.
  // The module must be on its final device and dtype; every rank builds the same architecture.
  FullyShardedDataParallel(std::shared_ptr<core::nn::Module> module,
                           std::shared_ptr<ProcessGroup> group, const FsdpOptions& o = {});
  ~FullyShardedDataParallel();
  FullyShardedDataParallel(const FullyShardedDataParallel&) = delete;
  FullyShardedDataParallel& operator=(const FullyShardedDataParallel&) = delete;

  // The model's forward, gathering unit by unit. Under no-grad every unit is freed after its
  // forward (evaluation holds one or two units at a time).
  core::Tensor forward(const core::Tensor& x);
  core::nn::Module& module() { return *module_; }
  ProcessGroup& group() { return *group_; }
  void set_timeline(core::Timeline* t) { o_.timeline = t; }

  // The leaves an optimiser steps: this rank's shard of each unit (units without parameters
  // have none). Each one's .grad() is its averaged gradient, summed over the backward passes
  // since it was last cleared (gradient accumulation).
  const std::vector<core::Tensor>& shards() const { return shards_; }
  // The layout of each shard's unit, for consolidating an optimiser's state (flat_shard.h).
  const std::vector<FlatGroup>& layouts() const { return layouts_; }
  // The module's trainable parameters, in named_parameters() order (the layouts' indices).
  const std::vector<core::Tensor>& params() const { return params_; }
  const std::vector<std::string>& param_names() const { return names_; }
  // Each unit's module name ("" for the root), in the order of shards().
  std::vector<std::string> unit_names() const;

  // While a FullParams lives every unit is gathered, so the module's parameters hold the whole
  // model (state_dict, or a forward outside forward()). A collective.
  class FullParams {
   public:
    explicit FullParams(FullyShardedDataParallel* f);
    ~FullParams();
    FullParams(const FullParams&) = delete;
    FullParams& operator=(const FullParams&) = delete;

   private:
    FullyShardedDataParallel* f_;
  };
  FullParams full_params() { return FullParams(this); }
  // Copies the shards into the whole model's parameters (summoned) and back: loading a state.
  // Every rank must pass the same values.
  void load_full(const std::vector<core::Tensor>& values);

  // Bytes this rank holds for the model between steps: shards and their gradients.
  int64_t sharded_bytes() const;
  // Bytes of the unit-sized buffers gathered now (parameters and gradients).
  int64_t gathered_bytes() const;
  // The largest gathered_bytes() seen.
  int64_t peak_gathered_bytes() const { return peak_gathered_; }

 private:
  enum class State { kSharded, kGathering, kGathered };
  struct Unit {
    std::string name;
    core::nn::Module* module = nullptr;
    FlatGroup layout;
    core::Tensor full;       // unit-sized; its storage is freed while sharded
    core::Tensor shard;      // this rank's block (a leaf), -1: none
    core::Tensor full_grad;  // unit-sized gradient, during backward only
    State state = State::kSharded;
    std::shared_ptr<Work> gather;
    int64_t gather_us = 0;
    std::shared_ptr<Work> reduce;
    int64_t reduce_us = 0;
    int64_t pending = 0;  // gradients still to arrive in this backward
    bool reduced = false;
    int fwd_hook = -1, pre_hook = -1;
  };

  void assign_units();
  void gather_async(size_t u);
  void wait_gathered(size_t u);
  void reshard(size_t u);
  void ensure_grad(size_t u);
  void pre_forward(size_t u);
  void post_forward(size_t u, core::Tensor& out);
  void pre_backward(size_t u);
  void on_gradient(size_t param);
  void launch_reduce(size_t u);
  void fold(size_t u);
  void fold_finished();
  void begin_backward();
  void finish_backward();
  void note_gathered();
  Millis timeout() const;

  std::shared_ptr<core::nn::Module> module_;
  std::shared_ptr<ProcessGroup> group_;
  FsdpOptions o_;
  std::vector<core::Tensor> params_;
  std::vector<std::string> names_;
  std::vector<size_t> unit_of_;  // per parameter
  std::vector<size_t> index_in_unit_;
  std::vector<Unit> units_;  // the root last
  std::vector<core::Tensor> shards_;
  std::vector<FlatGroup> layouts_;
  std::vector<int> hook_ids_;
  std::vector<size_t> order_, last_order_;  // units in forward order: this forward's, the last's
  std::vector<size_t> reduce_queue_;        // units whose reductions are in flight, in order
  std::vector<char> ready_;
  bool in_backward_ = false;
  int summoned_ = 0;
  int64_t peak_gathered_ = 0;
};

}  // namespace cohort::collectives
