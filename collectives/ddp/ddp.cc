#include "collectives/ddp/ddp.h"

#include <algorithm>
#include <cstdio>
#include <sstream>

#include "collectives/flight_recorder.h"
#include "core/autograd/engine.h"
#include "core/autograd/grad_mode.h"
#include "core/ops/ops.h"

namespace cohort::collectives {

using core::Tensor;

namespace {

// Module::to(device) and load_state_dict keep parameter identity, so views taken here stay valid.
Tensor slot_view(const Tensor& flat, int64_t offset, const Tensor& like) {
  return flat.narrow(0, offset, like.numel()).view(like.sizes());
}

std::string mb(int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f MB", static_cast<double>(bytes) / (1 << 20));
  return buf;
}

}  // namespace

DistributedDataParallel::DistributedDataParallel(std::shared_ptr<core::nn::Module> module,
                                                 std::shared_ptr<ProcessGroup> group,
                                                 const DdpOptions& o)
    : module_(std::move(module)), group_(std::move(group)), o_(o) {
  COHORT_CHECK(module_ && group_, "DistributedDataParallel needs a module and a process group");
  COHORT_CHECK(o_.reduce_scatter || !o_.free_gradients,
               "DdpOptions::free_gradients needs reduce_scatter");
  if (o_.bucket_cap_mb <= 0 || o_.first_bucket_cap_mb <= 0)
    COHORT_THROW(ConfigError, "DDP's bucket caps must be positive, got ", o_.bucket_cap_mb, " MB");
  for (auto& [name, p] : module_->named_parameters()) {
    if (!p.requires_grad()) continue;
    params_.push_back(p);
    names_.push_back(name);
  }
  // Reverse registration order approximates the order in which backward finishes gradients.
  slots_.resize(params_.size());
  const int64_t world = group_->size();
  // As in PyTorch, a bucket closes once it reaches its cap (so it may exceed it by one tensor).
  bool closed = true;
  for (size_t k = params_.size(); k-- > 0;) {
    const Tensor& p = params_[k];
    if (!closed) {
      const Tensor& first = params_[buckets_.back().params.front()];
      closed = first.dtype() != p.dtype() || first.device() != p.device();
    }
    if (closed) buckets_.emplace_back();
    Bucket& b = buckets_.back();
    slots_[k] = Slot{buckets_.size() - 1, b.numel};
    b.params.push_back(k);
    b.numel += p.numel();
    const double cap =
        (buckets_.size() == 1 ? o_.first_bucket_cap_mb : o_.bucket_cap_mb) * (1 << 20);
    closed = static_cast<double>(b.numel * static_cast<int64_t>(p.element_size())) >= cap;
  }
  for (Bucket& b : buckets_) {
    const Tensor& like = params_[b.params.front()];
    const auto opts = core::TensorOptions(like.dtype()).with_device(like.device());
    b.padded = o_.reduce_scatter ? (b.numel + world - 1) / world * world : b.numel;
    if (o_.free_gradients) {
      b.shard = core::zeros({b.padded / world}, opts);
      continue;
    }
    b.grads = core::zeros({b.padded}, opts);
    // This rank's block of the bucket: the reduce-scatter runs in place.
    if (o_.reduce_scatter)
      b.shard = b.grads.narrow(0, b.padded / world * group_->rank(), b.padded / world);
  }
  broadcast_parameters();
  broadcast_buffers();
  // Backward writes gradients straight into their bucket slots where the op can (linear layers),
  // instead of into new tensors that on_gradient would copy there.
  if (!o_.free_gradients)
    for (size_t i = 0; i < params_.size(); ++i)
      core::autograd::set_grad_destination(
          params_[i], slot_view(buckets_[slots_[i].bucket].grads, slots_[i].offset, params_[i]));
  for (size_t i = 0; i < params_.size(); ++i)
    hook_ids_.push_back(
        params_[i].register_post_accumulate_grad_hook([this, i](Tensor&) { on_gradient(i); }));
  ready_.assign(params_.size(), 0);
  pending_.assign(buckets_.size(), 0);
  reductions_.resize(buckets_.size());
  completed_at_.resize(buckets_.size());
  launched_us_.assign(buckets_.size(), 0);
  if (o_.compression.kind == Compression::kPowerSgd && o_.reduce_scatter)
    COHORT_THROW(ConfigError,
                 "PowerSGD compresses all-reduced gradients: it does not apply to ZeRO's "
                 "reduce-scattered buckets");
  std::vector<HookBucket> layout;
  for (const Bucket& b : buckets_) {
    HookBucket hb;
    hb.numel = b.numel;
    for (size_t k : b.params) hb.slots.push_back({names_[k], params_[k].sizes(), slots_[k].offset});
    layout.push_back(std::move(hb));
  }
  hook_ = make_comm_hook(o_.compression, *group_, std::move(layout), o_.timeout);
}

DistributedDataParallel::~DistributedDataParallel() {
  for (size_t i = 0; i < params_.size(); ++i) {
    params_[i].remove_hook(hook_ids_[i]);
    core::autograd::set_grad_destination(params_[i], Tensor());
  }
  // A backward that threw may have left reductions running on our buffers: let them end (each has
  // its own deadline) before the buffers go.
  for (auto& r : reductions_) {
    if (!r.work) continue;
    try {
      r.work->wait(timeout() * 2);
    } catch (...) {
    }
  }
}

Millis DistributedDataParallel::timeout() const {
  // A Work always ends by its backend's deadline; this bound only guards against a backend bug.
  return (o_.timeout.count() > 0 ? o_.timeout : Millis(std::chrono::minutes(10))) +
         Millis(std::chrono::seconds(30));
}

void DistributedDataParallel::broadcast_parameters() {
  if (group_->size() == 1) return;
  core::autograd::NoGradGuard guard;
  // Pack each bucket's parameters into its (still unused) gradient buffer: one broadcast per
  // bucket instead of one per tensor.
  std::vector<std::shared_ptr<Work>> works;
  for (size_t i = 0; i < buckets_.size(); ++i) {
    Bucket& b = buckets_[i];
    ensure_buffer(i);
    for (size_t k : b.params) slot_view(b.grads, slots_[k].offset, params_[k]).copy_(params_[k]);
    works.push_back(group_->broadcast(b.grads, {0, o_.timeout}));
  }
  for (size_t i = 0; i < buckets_.size(); ++i) {
    works[i]->wait(timeout());
    Bucket& b = buckets_[i];
    for (size_t k : b.params) params_[k].copy_(slot_view(b.grads, slots_[k].offset, params_[k]));
    b.grads.zero_();
    if (o_.free_gradients) {
      for (size_t k : b.params) core::autograd::set_grad_destination(params_[k], Tensor());
      b.grads = Tensor();
    }
  }
}

void DistributedDataParallel::broadcast_buffers() {
  if (group_->size() == 1) return;
  core::autograd::NoGradGuard guard;
  for (auto& [name, t] : module_->named_buffers()) {
    Tensor buf = t.contiguous();
    group_->broadcast(buf, {0, o_.timeout})->wait(timeout());
    if (buf.raw_data() != t.raw_data()) t.copy_(buf);
  }
}

Tensor DistributedDataParallel::forward(const Tensor& x) {
  if (o_.broadcast_buffers && core::autograd::GradMode::is_enabled() && module_->is_training())
    broadcast_buffers();
  return (*module_)(x);
}

void DistributedDataParallel::ensure_buffer(size_t bucket) {
  Bucket& b = buckets_[bucket];
  if (b.grads.defined()) return;
  const Tensor& like = params_[b.params.front()];
  // Zeros: the padding takes part in the reduction.
  b.grads = core::zeros({b.padded}, core::TensorOptions(like.dtype()).with_device(like.device()));
  for (size_t k : b.params)
    if (!params_[k].grad().defined())
      core::autograd::set_grad_destination(params_[k],
                                           slot_view(b.grads, slots_[k].offset, params_[k]));
}

void DistributedDataParallel::fold(size_t bucket) {
  Bucket& b = buckets_[bucket];
  if (!b.grads.defined()) return;
  core::autograd::NoGradGuard guard;
  const int64_t n = b.padded / group_->size();
  core::add_(b.shard, b.grads.narrow(0, n * group_->rank(), n));
  for (size_t k : b.params) {
    core::autograd::set_grad_destination(params_[k], Tensor());
    params_[k].set_grad(Tensor());
  }
  b.grads = Tensor();
}

void DistributedDataParallel::fold_finished() {
  for (size_t b = 0; b < next_launch_; ++b) {
    if (!reductions_[b].work || !advance(b, false)) continue;
    record(b);
    fold(b);
  }
}

bool DistributedDataParallel::advance(size_t b, bool block) {
  Reduction& r = reductions_[b];
  while (r.work) {
    if (!block && (!r.work->is_completed() || (r.then && r.then_collective))) return false;
    r.work->wait(timeout());  // rethrows its error
    completed_at_[b] = r.work->completed_at();
    // The next stage replaces this one, whose `then` is running: move it out first.
    std::function<Reduction()> then = std::move(r.then);
    r = then ? then() : Reduction{};
  }
  return true;
}

void DistributedDataParallel::record(size_t b) {
  if (!o_.timeline) return;
  o_.timeline->complete(
      (o_.reduce_scatter ? "reduce-scatter bucket " : "allreduce bucket ") + std::to_string(b) +
          " (" +
          mb(buckets_[b].padded *
             static_cast<int64_t>(params_[buckets_[b].params[0]].element_size())) +
          ")",
      "comm", launched_us_[b], o_.timeline->to_us(completed_at_[b]) - launched_us_[b], 1);
}

void DistributedDataParallel::zero_shards() {
  core::autograd::NoGradGuard guard;
  if (o_.free_gradients)
    for (Bucket& b : buckets_) b.shard.zero_();
}

int64_t DistributedDataParallel::gradient_bytes() const {
  int64_t bytes = 0;
  for (const Bucket& b : buckets_) {
    if (b.grads.defined()) bytes += b.grads.numel() * static_cast<int64_t>(b.grads.element_size());
    if (o_.free_gradients) bytes += b.shard.numel() * static_cast<int64_t>(b.shard.element_size());
  }
  return bytes;
}

void DistributedDataParallel::begin_backward() {
  in_backward_ = true;
  std::fill(ready_.begin(), ready_.end(), 0);
  for (size_t b = 0; b < buckets_.size(); ++b)
    pending_[b] = static_cast<int64_t>(buckets_[b].params.size());
  next_launch_ = 0;
  std::fill(reductions_.begin(), reductions_.end(), Reduction{});
  core::autograd::queue_callback([this] { finish_backward(); });
}

void DistributedDataParallel::on_gradient(size_t i) {
  if (!sync_ && !o_.free_gradients) return;
  if (!in_backward_) begin_backward();
  if (ready_[i])
    COHORT_THROW(Error, "DistributedDataParallel: parameter ", names_[i],
                 " received a gradient twice in one backward pass; each parameter is reduced "
                 "once, so run extra backward passes inside no_sync()");
  ready_[i] = 1;
  const Slot& s = slots_[i];
  ensure_buffer(s.bucket);
  Tensor g = params_[i].grad();
  Tensor view = slot_view(buckets_[s.bucket].grads, s.offset, params_[i]);
  if (g.raw_data() != view.raw_data()) {
    core::autograd::NoGradGuard guard;
    view.copy_(g);
    params_[i].set_grad(view);
  }
  if (--pending_[s.bucket] == 0) launch_ready_buckets();
}

void DistributedDataParallel::launch_ready_buckets() {
  while (next_launch_ < buckets_.size() && pending_[next_launch_] == 0) launch(next_launch_++);
}

void DistributedDataParallel::launch(size_t b) {
  Bucket& bucket = buckets_[b];
  const FlightTag tag("ddp bucket", static_cast<int64_t>(b));
  if (o_.timeline) launched_us_[b] = o_.timeline->now_us();
  if (hook_) {
    reductions_[b] = hook_->start(b, bucket.grads, o_.reduce_scatter);
    // Earlier buckets' casts back run now rather than all at the end.
    for (size_t e = 0; e < b && !o_.free_gradients; ++e)
      if (reductions_[e].work) advance(e, false);
    if (o_.free_gradients) fold_finished();
  } else if (o_.free_gradients) {
    const int64_t n = bucket.padded / group_->size();
    Tensor mine = bucket.grads.narrow(0, n * group_->rank(), n);
    reductions_[b].work = group_->reduce_scatter(mine, bucket.grads, {ReduceOp::kAvg, o_.timeout});
    fold_finished();
  } else if (o_.reduce_scatter) {
    reductions_[b].work =
        group_->reduce_scatter(bucket.shard, bucket.grads, {ReduceOp::kAvg, o_.timeout});
  } else {
    reductions_[b].work = group_->allreduce(bucket.grads, {ReduceOp::kAvg, o_.timeout});
  }
}

void DistributedDataParallel::finish_backward() {
  struct Reset {
    bool& flag;
    ~Reset() { flag = false; }
  } reset{in_backward_};
  std::vector<size_t> unused;
  for (size_t i = 0; i < params_.size(); ++i)
    if (!ready_[i]) unused.push_back(i);
  if (!unused.empty() && !o_.allow_unused_parameters)
    throw_unused_parameters("DistributedDataParallel", group_->rank(), names_, unused);
  {
    core::autograd::NoGradGuard guard;
    for (size_t i : unused) {
      const Slot& s = slots_[i];
      ensure_buffer(s.bucket);
      slot_view(buckets_[s.bucket].grads, s.offset, params_[i]).zero_();
      --pending_[s.bucket];
    }
  }
  launch_ready_buckets();
  // Which of the unused parameters were unused on every rank: those keep no gradient, as they
  // would in a single process. Started after the last bucket so every rank issues the same order.
  Tensor used;
  if (o_.allow_unused_parameters) {
    used =
        core::zeros({static_cast<int64_t>(params_.size())},
                    core::TensorOptions(core::DType::kFloat32)
                        .with_device(params_.empty() ? core::Device::cpu() : params_[0].device()));
    Tensor local = core::zeros({static_cast<int64_t>(params_.size())});
    for (size_t i = 0; i < params_.size(); ++i)
      if (ready_[i]) local.data_ptr<float>()[i] = 1;
    used.copy_(local);
    const FlightTag tag("ddp unused-parameter check");
    group_->allreduce(used, {ReduceOp::kSum, o_.timeout})->wait(timeout());
    used = used.to(core::Device::cpu());
  }
  // What backward waits for here is communication that compute did not hide.
  core::Timeline::Span waiting(o_.timeline, "wait for gradient reduction", "comm");
  for (size_t b = 0; b < buckets_.size(); ++b) {
    if (!reductions_[b].work) continue;  // folded already
    advance(b, true);
    record(b);
    if (o_.free_gradients) fold(b);
  }
  if (hook_) hook_->end_backward();
  // Parameters that arrived in on_gradient already have their bucket view as .grad().
  for (size_t i = 0; i < params_.size(); ++i) {
    const bool globally_unused = used.defined() && used.data_ptr<float>()[i] == 0;
    if (o_.reduce_scatter || globally_unused) {
      // Under reduce-scatter no rank holds the whole averaged gradient: the sharded optimiser
      // reads its shard from the bucket.
      params_[i].set_grad(Tensor());
    } else if (!ready_[i]) {
      params_[i].set_grad(
          slot_view(buckets_[slots_[i].bucket].grads, slots_[i].offset, params_[i]));
    }
  }
}

}  // namespace cohort::collectives
