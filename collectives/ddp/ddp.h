// DistributedDataParallel: keeps one model's replicas identical across the ranks of a process
// group by averaging their gradients.
//
// Parameters are grouped into buckets in reverse registration order (the order backward produces
// their gradients): a small first bucket (1 MB) so communication starts early, then buckets of up
// to bucket_cap_mb (a bucket closes when it reaches its cap). A post-accumulate hook on each
// parameter copies its gradient into its bucket's flat buffer; when a bucket's last gradient
// arrives its all-reduce is started asynchronously, so communication overlaps the rest of backward.
// Buckets are started strictly in order on every rank, which keeps the collective sequence
// identical everywhere. When backward ends (an autograd callback) DDP waits for every bucket and
// each parameter's .grad() is a view of its bucket.
//
// With reduce_scatter (ZeRO-1, see zero.h) a bucket is reduce-scattered instead: each rank gets the
// averaged gradient of its own contiguous shard of the bucket only. With free_gradients as well
// (ZeRO-2) a bucket's flat buffer exists only from its first gradient until its reduction ends:
// the result is added into the rank's shard, a buffer of its own, and the full-size buffer goes.
// Each backward then reduces (no_sync() does not apply), so that accumulated micro-batches need
// no full-size gradient either.
//
// DdpOptions::compression swaps a bucket's all-reduce for a communication hook (comm_hook.h): a
// 16-bit cast (with reduce_scatter too) or PowerSGD (all-reduce only). A hook's first collective
// starts as the bucket fills, like the plain one; a later one (PowerSGD's Q) starts when backward
// ends, bucket by bucket, so that every rank issues them in one order.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "collectives/ddp/comm_hook.h"
#include "collectives/process_group.h"
#include "core/nn/module.h"
#include "core/util/timeline.h"

namespace cohort::collectives {

struct DdpOptions {
  double bucket_cap_mb = 25;
  double first_bucket_cap_mb = 1;
  // Broadcast the module's buffers from rank 0 before each forward() (none of our models has any,
  // but user modules may).
  bool broadcast_buffers = true;
  // Parameters that get no gradient in a backward are an error naming them, unless allowed; then
  // they count as zero on that rank, and those unused on every rank keep no gradient.
  bool allow_unused_parameters = false;
  Millis timeout{0};  // 0: the group's
  // Reduce-scatter each bucket instead of all-reducing it (for the sharded optimiser).
  bool reduce_scatter = false;
  // With reduce_scatter: keep no full-size gradient between backward passes (ZeRO-2).
  bool free_gradients = false;
  // Bucket all-reduces are drawn on lane 1 of this timeline, if set.
  core::Timeline* timeline = nullptr;
  // What crosses the wire for each bucket (none: its float32 gradient).
  CompressionOptions compression;
};

class DistributedDataParallel {
 public:
  // Broadcasts every parameter (and buffer) from rank 0, then hooks the parameters. Every rank must
  // build it with the same module architecture.
  DistributedDataParallel(std::shared_ptr<core::nn::Module> module,
                          std::shared_ptr<ProcessGroup> group, const DdpOptions& o = {});
  ~DistributedDataParallel();
  DistributedDataParallel(const DistributedDataParallel&) = delete;
  DistributedDataParallel& operator=(const DistributedDataParallel&) = delete;

  core::Tensor forward(const core::Tensor& x);
  core::nn::Module& module() { return *module_; }
  void set_timeline(core::Timeline* t) { o_.timeline = t; }
  ProcessGroup& group() { return *group_; }

  // While a NoSync lives, backward passes only accumulate gradients locally; the next backward
  // outside it averages the accumulated sums (gradient accumulation without extra communication).
  class NoSync {
   public:
    explicit NoSync(DistributedDataParallel* d) : d_(d) { d_->sync_ = false; }
    ~NoSync() { d_->sync_ = true; }
    NoSync(const NoSync&) = delete;
    NoSync& operator=(const NoSync&) = delete;

   private:
    DistributedDataParallel* d_;
  };
  NoSync no_sync() { return NoSync(this); }

  // Where parameter `i` (of module().parameters()) lives: its bucket and element offset.
  struct Slot {
    size_t bucket = 0;
    int64_t offset = 0;
  };
  struct Bucket {
    std::vector<size_t> params;  // indices into module().parameters(), in bucket order
    // Flat gradients, padded to a multiple of the world size under reduce_scatter. Under
    // free_gradients: undefined except while a backward fills and reduces it.
    core::Tensor grads;
    // reduce_scatter: this rank's averaged shard of `grads` (a view of it), or under
    // free_gradients its own buffer, which reductions add into until zero_shards().
    core::Tensor shard;
    int64_t numel = 0;   // unpadded
    int64_t padded = 0;  // the flat buffer's numel
  };
  const std::vector<Bucket>& buckets() const { return buckets_; }
  const std::vector<Slot>& slots() const { return slots_; }
  const std::vector<core::Tensor>& params() const { return params_; }
  const std::vector<std::string>& param_names() const { return names_; }
  // free_gradients: clears every shard (the start of a step's accumulation).
  void zero_shards();
  // Bytes of gradient buffers held now (full-size buckets and shards).
  int64_t gradient_bytes() const;
  // The compression hook; null without compression.
  CommHook* comm_hook() { return hook_.get(); }
  const CommHook* comm_hook() const { return hook_.get(); }

 private:
  void on_gradient(size_t index);
  void begin_backward();
  void launch_ready_buckets();
  void launch(size_t bucket);
  // Runs the bucket's reduction on as far as its collectives have completed (waiting for them
  // when `block`; without, it stops before a stage that would issue a collective). True when it
  // has ended; its end time is then in completed_at_.
  bool advance(size_t bucket, bool block);
  void finish_backward();
  // free_gradients: the bucket's flat buffer, created on its first gradient.
  void ensure_buffer(size_t bucket);
  // free_gradients: adds a finished reduction into the shard and frees the flat buffer.
  void fold(size_t bucket);
  void fold_finished();
  void record(size_t bucket);  // draws a finished reduction on the timeline
  void broadcast_parameters();
  void broadcast_buffers();
  Millis timeout() const;

  std::shared_ptr<core::nn::Module> module_;
  std::shared_ptr<ProcessGroup> group_;
  DdpOptions o_;
  std::vector<core::Tensor> params_;
  std::vector<std::string> names_;
  std::vector<Slot> slots_;
  std::vector<Bucket> buckets_;
  std::vector<int> hook_ids_;
  bool sync_ = true;

  // State of the backward pass in progress.
  bool in_backward_ = false;
  std::vector<char> ready_;            // per parameter
  std::vector<int64_t> pending_;       // per bucket: gradients still to arrive
  size_t next_launch_ = 0;             // buckets launch in order
  std::vector<Reduction> reductions_;  // per bucket, while in flight (work set)
  std::vector<std::chrono::steady_clock::time_point> completed_at_;
  std::vector<int64_t> launched_us_;  // timeline start of each bucket's reduction
  std::unique_ptr<CommHook> hook_;
};

}  // namespace cohort::collectives
