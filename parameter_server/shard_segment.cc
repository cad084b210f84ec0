// Shard's shared-memory data path for workers on its node: each worker's segment of gradients
// and values, and the server's own values shared read-only under a sequence lock.
#include <algorithm>
#include <cstring>

#include "core/autograd/grad_mode.h"
#include "core/ops/ops.h"
#include "core/util/error.h"
#include "core/util/threads.h"
#include "parameter_server/auth.h"
#include "parameter_server/shard.h"

namespace cohort::ps {

Shard::SegmentLayout Shard::attach_segment(int w) {
  std::lock_guard<std::mutex> lock(mu_);
  Worker& k = worker(w);
  COHORT_CHECK(!pieces_.empty(), "worker ", w,
               " asked for shared memory before defining its tensors on server ", o_.server);
  SegmentLayout layout;
  // Pieces start on 64-byte boundaries; the same offsets for every worker, as pieces_ is ordered.
  for (const auto& [key, p] : pieces_) {
    layout.keys.push_back(key);
    layout.offsets.push_back(layout.floats);
    layout.numels.push_back(p.param.numel());
    layout.floats += (p.param.numel() + 15) / 16 * 16;
  }
  layout.name =
      collectives::owned_segment_name("ps-w" + std::to_string(w) + "-" + to_hex(random_bytes(8)));
  const size_t bytes =
      std::max<size_t>(4096, 2 * static_cast<size_t>(layout.floats) * sizeof(float));
  collectives::Mapping segment = collectives::map_segment(layout.name, bytes, /*create=*/true);
  // A sync push committed from the old segment but not yet applied moves with the worker.
  if (k.committed && k.from_segment && k.segment_floats == layout.floats)
    std::memcpy(segment.addr(), k.segment.addr(),
                static_cast<size_t>(layout.floats) * sizeof(float));
  if (!k.segment_name.empty()) collectives::unlink_segment(k.segment_name);
  k.segment = std::move(segment);
  k.segment_name = layout.name;
  k.segment_floats = layout.floats;
  size_t i = 0;
  for (auto& [key, p] : pieces_) p.segment_offset[static_cast<size_t>(w)] = layout.offsets[i++];
  share_values_locked(layout);
  return layout;
}

void Shard::share_values_locked(SegmentLayout& layout) {
  if (values_ && values_floats_ == layout.floats && values_pieces_ == pieces_.size()) {
    layout.values_name = values_name_;
    return;
  }
  const std::string name = collectives::owned_segment_name("ps-values-" + to_hex(random_bytes(8)));
  auto mapping = std::make_shared<collectives::Mapping>(collectives::map_segment(
      name, static_cast<size_t>(kSharedValuesOffset + layout.floats) * sizeof(float), true));
  new (mapping->addr()) SharedValues();
  float* base = static_cast<float*>(mapping->addr()) + kSharedValuesOffset;
  size_t i = 0;
  for (auto& [key, p] : pieces_) {
    float* at = base + layout.offsets[i++];
    const auto bytes = static_cast<size_t>(p.param.numel()) * sizeof(float);
    std::memcpy(at, p.param.data_ptr<float>(), bytes);
    // The same tensors (the optimisers hold them) now live in the segment.
    p.param.set_(core::from_blob(at, p.param.sizes(), core::DType::kFloat32, mapping));
    view_blocks(p);
  }
  if (SharedValues* old = shared_values()) {
    old->seq.store(1, std::memory_order_release);  // odd for good: its readers ask for copies
    collectives::unlink_segment(values_name_);
  }
  values_ = std::move(mapping);
  values_name_ = name;
  values_floats_ = layout.floats;
  values_pieces_ = pieces_.size();
  layout.values_name = name;
}

Shard::SharedValues* Shard::shared_values() const {
  return values_ ? static_cast<SharedValues*>(values_->addr()) : nullptr;
}

void Shard::check_segment_locked(int w) {
  Worker& k = worker(w);
  COHORT_CHECK(k.segment, "worker ", w, " used shared memory on server ", o_.server,
               " without attaching a segment");
  for (const auto& [key, p] : pieces_)
    COHORT_CHECK(p.segment_offset[static_cast<size_t>(w)] >= 0, "tensor ", key,
                 " is not in worker ", w, "'s segment on server ", o_.server, "; attach again");
  // The worker has mapped it (it is using it): the name is no longer needed.
  if (!k.segment_name.empty()) {
    collectives::unlink_segment(k.segment_name);
    k.segment_name.clear();
  }
}

PushResult Shard::push_from_segment(int w, int64_t step, double lr, int64_t samples) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    check_segment_locked(w);
  }
  push_begin(w, step, lr, samples);
  {
    std::lock_guard<std::mutex> lock(mu_);
    Worker& k = worker(w);
    k.from_segment = true;
    for (auto& [key, p] : pieces_) p.received[static_cast<size_t>(w)] = p.param.numel();
  }
  return push_commit(w);
}

int64_t Shard::copy_to_segment(int w) {
  std::lock_guard<std::mutex> lock(mu_);
  check_segment_locked(w);
  const Worker& k = worker(w);
  float* values = static_cast<float*>(k.segment.addr()) + k.segment_floats;
  for (const auto& [key, p] : pieces_)
    std::memcpy(values + p.segment_offset[static_cast<size_t>(w)], p.param.data_ptr<float>(),
                static_cast<size_t>(p.param.numel()) * sizeof(float));
  return version_;
}

}  // namespace cohort::ps
