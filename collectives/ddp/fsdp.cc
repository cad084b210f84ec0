#include "collectives/ddp/fsdp.h"

#include <fnmatch.h>

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

std::string mb(int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f MB", static_cast<double>(bytes) / (1 << 20));
  return buf;
}

// `*` matches within one dotted part: dots become slashes for fnmatch's FNM_PATHNAME.
bool matches(const std::string& pattern, const std::string& name) {
  std::string p = pattern, n = name;
  std::replace(p.begin(), p.end(), '.', '/');
  std::replace(n.begin(), n.end(), '.', '/');
  return ::fnmatch(p.c_str(), n.c_str(), FNM_PATHNAME) == 0;
}

int64_t bytes_of(const Tensor& t) {
  return t.defined() ? t.numel() * static_cast<int64_t>(t.element_size()) : 0;
}

}  // namespace

FullyShardedDataParallel::FullyShardedDataParallel(std::shared_ptr<core::nn::Module> module,
                                                   std::shared_ptr<ProcessGroup> group,
                                                   const FsdpOptions& o)
    : module_(std::move(module)), group_(std::move(group)), o_(o) {
  COHORT_CHECK(module_ && group_, "FullyShardedDataParallel needs a module and a process group");
  for (auto& [name, p] : module_->named_parameters()) {
    if (!p.requires_grad()) continue;
    params_.push_back(p);
    names_.push_back(name);
  }
  assign_units();
  core::autograd::NoGradGuard guard;
  const int world = group_->size(), rank = group_->rank();
  // Rank 0's values, unit by unit: pack, broadcast, keep this rank's block, free the rest.
  for (Unit& u : units_) {
    const Tensor& like = params_[u.layout.params.front()];
    for (size_t k : u.layout.params)
      if (params_[k].dtype() != like.dtype() || params_[k].device() != like.device())
        COHORT_THROW(ConfigError, "FSDP unit '", u.name.empty() ? "(root)" : u.name,
                     "' mixes parameters of different dtypes or devices (", names_[k], ")");
    const auto opts = core::TensorOptions(like.dtype()).with_device(like.device());
    u.full = core::zeros({u.layout.padded}, opts);
    for (size_t i = 0; i < u.layout.params.size(); ++i)
      param_slice(u.full, u.layout, i, params_[u.layout.params[i]])
          .copy_(params_[u.layout.params[i]]);
    if (world > 1) group_->broadcast(u.full, {0, o_.timeout})->wait(timeout());
    const int64_t n = u.layout.shard_numel(world);
    u.shard = u.full.narrow(0, n * rank, n).clone();
    u.shard.set_requires_grad(true);
    for (size_t i = 0; i < u.layout.params.size(); ++i) {
      Tensor& p = params_[u.layout.params[i]];
      p.set_(param_slice(u.full, u.layout, i, p));
    }
    u.full.storage()->resize(0);
    u.state = State::kSharded;
    shards_.push_back(u.shard);
    layouts_.push_back(u.layout);
  }
  if (world > 1)
    for (auto& [name, t] : module_->named_buffers()) {
      Tensor buf = t.contiguous();
      group_->broadcast(buf, {0, o_.timeout})->wait(timeout());
      if (buf.raw_data() != t.raw_data()) t.copy_(buf);
    }
  for (size_t i = 0; i < units_.size(); ++i) {
    Unit& u = units_[i];
    if (u.module == module_.get()) continue;  // the root is driven by forward()
    u.pre_hook =
        u.module->register_forward_pre_hook([this, i](core::nn::Module&) { pre_forward(i); });
    u.fwd_hook = u.module->register_forward_hook(
        [this, i](core::nn::Module&, Tensor& out) { post_forward(i, out); });
  }
  for (size_t k = 0; k < params_.size(); ++k)
    hook_ids_.push_back(
        params_[k].register_post_accumulate_grad_hook([this, k](Tensor&) { on_gradient(k); }));
  ready_.assign(params_.size(), 0);
  // The whole model's memory, freed just now, would otherwise stay in the CPU allocator's cache:
  // give it back, so that a rank holds what its shards need.
  core::release_cpu_cache();
}

FullyShardedDataParallel::~FullyShardedDataParallel() {
  for (size_t k = 0; k < params_.size(); ++k) {
    params_[k].remove_hook(hook_ids_[k]);
    core::autograd::set_grad_destination(params_[k], Tensor());
  }
  for (Unit& u : units_) {
    if (u.pre_hook >= 0) u.module->remove_forward_hook(u.pre_hook);
    if (u.fwd_hook >= 0) u.module->remove_forward_hook(u.fwd_hook);
    // Collectives still running on our buffers end by their own deadlines: let them.
    for (auto* w : {&u.gather, &u.reduce}) {
      if (!*w) continue;
      try {
        (*w)->wait(timeout() * 2);
      } catch (...) {
      }
    }
  }
}

std::vector<UnitPlan> plan_units(core::nn::Module& root, const std::vector<std::string>& patterns,
                                 const std::vector<std::string>& param_names) {
  // Candidate units: modules named by the patterns, else the root's children.
  std::vector<std::pair<std::string, core::nn::Module*>> chosen;
  std::vector<std::string> top;
  std::vector<char> used(patterns.size(), 0);
  root.for_each_module([&](const std::string& name, core::nn::Module& m) {
    if (name.empty()) return;
    if (name.find('.') == std::string::npos) top.push_back(name);
    if (patterns.empty()) {
      if (name.find('.') == std::string::npos) chosen.emplace_back(name, &m);
      return;
    }
    for (size_t i = 0; i < patterns.size(); ++i)
      if (matches(patterns[i], name)) {
        used[i] = 1;
        chosen.emplace_back(name, &m);
        return;
      }
  });
  for (size_t i = 0; i < patterns.size(); ++i) {
    if (used[i]) continue;
    std::ostringstream names;
    for (size_t k = 0; k < top.size() && k < 12; ++k) names << (k ? ", " : "") << top[k];
    if (top.size() > 12) names << " and " << top.size() - 12 << " more";
    COHORT_THROW(ConfigError, "FSDP unit '", patterns[i],
                 "' names no module of the model (its top-level modules: ",
                 top.empty() ? std::string("none") : names.str(),
                 "; `*` matches within one dotted name part)");
  }
  // Each parameter goes to the innermost chosen module whose name prefixes its own.
  std::vector<std::vector<size_t>> owned(chosen.size() + 1);
  for (size_t k = 0; k < param_names.size(); ++k) {
    size_t best = chosen.size(), best_len = 0;
    for (size_t c = 0; c < chosen.size(); ++c) {
      const std::string& n = chosen[c].first;
      const std::string& p = param_names[k];
      if (p.size() > n.size() && p.compare(0, n.size(), n) == 0 && p[n.size()] == '.' &&
          n.size() >= best_len) {
        best = c;
        best_len = n.size();
      }
    }
    owned[best].push_back(k);
  }
  std::vector<UnitPlan> plan;
  for (size_t c = 0; c <= chosen.size(); ++c) {
    if (owned[c].empty()) continue;  // a unit whose parameters all belong to units inside it
    if (c < chosen.size()) {
      plan.push_back({chosen[c].first, chosen[c].second, owned[c]});
    } else {
      plan.push_back({"", &root, owned[c]});
    }
  }
  return plan;
}

void FullyShardedDataParallel::assign_units() {
  unit_of_.assign(params_.size(), 0);
  index_in_unit_.assign(params_.size(), 0);
  for (UnitPlan& p : plan_units(*module_, o_.units, names_)) {
    Unit u;
    u.name = p.name;
    u.module = p.module;
    u.layout = make_flat_group(params_, p.params, group_->size());
    for (size_t i = 0; i < p.params.size(); ++i) {
      unit_of_[p.params[i]] = units_.size();
      index_in_unit_[p.params[i]] = i;
    }
    units_.push_back(std::move(u));
  }
}

std::vector<std::string> FullyShardedDataParallel::unit_names() const {
  std::vector<std::string> names;
  for (const Unit& u : units_) names.push_back(u.name);
  return names;
}

Millis FullyShardedDataParallel::timeout() const {
  // A Work always ends by its backend's deadline; this bound only guards against a backend bug.
  return (o_.timeout.count() > 0 ? o_.timeout : Millis(std::chrono::minutes(10))) +
         Millis(std::chrono::seconds(30));
}

void FullyShardedDataParallel::note_gathered() {
  peak_gathered_ = std::max(peak_gathered_, gathered_bytes());
}

void FullyShardedDataParallel::gather_async(size_t i) {
  Unit& u = units_[i];
  if (u.state != State::kSharded) return;
  u.full.storage()->resize(static_cast<size_t>(bytes_of(u.full)));
  if (o_.timeline) u.gather_us = o_.timeline->now_us();
  const FlightTag tag("fsdp gather of unit", static_cast<int64_t>(i));
  u.gather = group_->allgather(u.full, u.shard.detach(), {o_.timeout});
  u.state = State::kGathering;
  note_gathered();
}

void FullyShardedDataParallel::wait_gathered(size_t i) {
  Unit& u = units_[i];
  if (u.state == State::kGathered) return;
  {
    // What compute waits for here is the part of the gather that prefetching did not hide: all
    // of it when nothing started it earlier (a small gather may even run on this thread).
    core::Timeline::Span waiting(o_.timeline, "wait for all-gather", "comm");
    if (u.state == State::kSharded) gather_async(i);
    u.gather->wait(timeout());
  }
  if (o_.timeline)
    o_.timeline->complete("all-gather " + (u.name.empty() ? std::string("root") : u.name) + " (" +
                              mb(bytes_of(u.full)) + ")",
                          "comm", u.gather_us,
                          o_.timeline->to_us(u.gather->completed_at()) - u.gather_us, 1);
  u.gather = nullptr;
  u.state = State::kGathered;
}

void FullyShardedDataParallel::reshard(size_t i) {
  Unit& u = units_[i];
  if (u.state == State::kSharded || summoned_ > 0) return;
  if (u.state == State::kGathering) wait_gathered(i);
  u.full.storage()->resize(0);
  u.state = State::kSharded;
}

void FullyShardedDataParallel::ensure_grad(size_t i) {
  Unit& u = units_[i];
  if (u.full_grad.defined()) return;
  // Zeros: the padding takes part in the reduction (and in the gradient norm after it).
  u.full_grad = core::zeros({u.layout.padded},
                            core::TensorOptions(u.full.dtype()).with_device(u.full.device()));
  for (size_t j = 0; j < u.layout.params.size(); ++j) {
    const Tensor& p = params_[u.layout.params[j]];
    if (!p.grad().defined())
      core::autograd::set_grad_destination(p, param_slice(u.full_grad, u.layout, j, p));
  }
  note_gathered();
}

Tensor FullyShardedDataParallel::forward(const Tensor& x) {
  const bool grad = core::autograd::GradMode::is_enabled();
  if (grad && module_->is_training() && group_->size() > 1) {
    core::autograd::NoGradGuard guard;
    for (auto& [name, t] : module_->named_buffers()) {
      Tensor buf = t.contiguous();
      group_->broadcast(buf, {0, o_.timeout})->wait(timeout());
      if (buf.raw_data() != t.raw_data()) t.copy_(buf);
    }
  }
  order_.clear();
  const size_t root = units_.size() - 1;
  const bool has_root = !units_.empty() && units_[root].module == module_.get();
  if (has_root) wait_gathered(root);
  // The first units of the last forward, while the root computes.
  for (size_t k = 0; k < last_order_.size() && k < static_cast<size_t>(o_.prefetch); ++k)
    gather_async(last_order_[k]);
  Tensor out = (*module_)(x);
  last_order_ = order_;
  if (!grad || !out.requires_grad()) {
    if (has_root) reshard(root);
    return out;
  }
  out.register_hook([this, has_root, root](const Tensor&) {
    if (!in_backward_) begin_backward();
    if (has_root) ensure_grad(root);
    return Tensor();
  });
  return out;
}

void FullyShardedDataParallel::pre_forward(size_t i) {
  order_.push_back(i);
  if (summoned_ > 0) return;
  wait_gathered(i);
  // Prefetch what came next last time, if this forward follows the same path.
  const size_t pos = order_.size() - 1;
  if (pos < last_order_.size() && last_order_[pos] == i)
    for (size_t k = 1; k <= static_cast<size_t>(o_.prefetch) && pos + k < last_order_.size(); ++k)
      gather_async(last_order_[pos + k]);
}

void FullyShardedDataParallel::post_forward(size_t i, Tensor& out) {
  if (summoned_ > 0) return;
  const bool grad = core::autograd::GradMode::is_enabled() && out.defined() &&
                    out.requires_grad() && !out.is_leaf();
  if (!grad || o_.reshard_after_forward) reshard(i);
  if (!grad) return;
  out.register_hook([this, i](const Tensor&) {
    pre_backward(i);
    return Tensor();
  });
}

void FullyShardedDataParallel::pre_backward(size_t i) {
  if (!in_backward_) begin_backward();
  wait_gathered(i);
  ensure_grad(i);
  // Backward visits the units in reverse forward order: gather the ones before this.
  auto it = std::find(last_order_.rbegin(), last_order_.rend(), i);
  if (it == last_order_.rend()) return;
  for (int k = 0; k < o_.prefetch && ++it != last_order_.rend(); ++k) gather_async(*it);
}

void FullyShardedDataParallel::begin_backward() {
  in_backward_ = true;
  std::fill(ready_.begin(), ready_.end(), 0);
  for (Unit& u : units_) {
    u.pending = static_cast<int64_t>(u.layout.params.size());
    u.reduced = false;
  }
  core::autograd::queue_callback([this] { finish_backward(); });
}

void FullyShardedDataParallel::on_gradient(size_t k) {
  if (!in_backward_) begin_backward();
  if (ready_[k])
    COHORT_THROW(Error, "FullyShardedDataParallel: parameter ", names_[k],
                 " received a gradient twice in one backward pass");
  ready_[k] = 1;
  const size_t i = unit_of_[k];
  Unit& u = units_[i];
  ensure_grad(i);
  Tensor slot = param_slice(u.full_grad, u.layout, index_in_unit_[k], params_[k]);
  Tensor g = params_[k].grad();
  if (g.raw_data() != slot.raw_data()) {
    core::autograd::NoGradGuard guard;
    slot.copy_(g);
    params_[k].set_grad(slot);
  }
  // With unused parameters allowed, which units complete differs between ranks: then every
  // reduction waits for the end of backward, to be issued in one order everywhere.
  if (--u.pending == 0 && !o_.allow_unused_parameters) launch_reduce(i);
}

void FullyShardedDataParallel::launch_reduce(size_t i) {
  Unit& u = units_[i];
  if (u.reduced) return;
  u.reduced = true;
  reshard(i);  // every gradient of the unit is in: its parameters are not needed again
  const int64_t n = u.layout.shard_numel(group_->size());
  Tensor mine = u.full_grad.narrow(0, n * group_->rank(), n);
  if (o_.timeline) u.reduce_us = o_.timeline->now_us();
  const FlightTag tag("fsdp gradients of unit", static_cast<int64_t>(i));
  u.reduce = group_->reduce_scatter(mine, u.full_grad, {ReduceOp::kAvg, o_.timeout});
  reduce_queue_.push_back(i);
  fold_finished();
  // At most two unit-sized gradients wait on the network at once.
  while (reduce_queue_.size() > 2) {
    fold(reduce_queue_.front());
    reduce_queue_.erase(reduce_queue_.begin());
  }
}

void FullyShardedDataParallel::fold(size_t i) {
  Unit& u = units_[i];
  if (!u.reduce) return;
  u.reduce->wait(timeout());
  if (o_.timeline)
    o_.timeline->complete("reduce-scatter " + (u.name.empty() ? std::string("root") : u.name) +
                              " (" + mb(bytes_of(u.full_grad)) + ")",
                          "comm", u.reduce_us,
                          o_.timeline->to_us(u.reduce->completed_at()) - u.reduce_us, 1);
  u.reduce = nullptr;
  core::autograd::NoGradGuard guard;
  const int64_t n = u.layout.shard_numel(group_->size());
  Tensor mine = u.full_grad.narrow(0, n * group_->rank(), n);
  if (u.shard.grad().defined()) {
    Tensor g = u.shard.grad();
    core::add_(g, mine);
  } else {
    u.shard.set_grad(mine.clone());
  }
  for (size_t k : u.layout.params) {
    core::autograd::set_grad_destination(params_[k], Tensor());
    params_[k].set_grad(Tensor());
  }
  u.full_grad = Tensor();
}

void FullyShardedDataParallel::fold_finished() {
  while (!reduce_queue_.empty() && units_[reduce_queue_.front()].reduce->is_completed()) {
    fold(reduce_queue_.front());
    reduce_queue_.erase(reduce_queue_.begin());
  }
}

void FullyShardedDataParallel::finish_backward() {
  struct Reset {
    bool& flag;
    ~Reset() { flag = false; }
  } reset{in_backward_};
  std::vector<size_t> unused;
  for (size_t k = 0; k < params_.size(); ++k)
    if (!ready_[k]) unused.push_back(k);
  if (!unused.empty() && !o_.allow_unused_parameters)
    throw_unused_parameters("FullyShardedDataParallel", group_->rank(), names_, unused);
  {
    core::autograd::NoGradGuard guard;
    for (size_t k : unused) {
      const size_t i = unit_of_[k];
      ensure_grad(i);
      param_slice(units_[i].full_grad, units_[i].layout, index_in_unit_[k], params_[k]).zero_();
    }
  }
  for (size_t i = 0; i < units_.size(); ++i) launch_reduce(i);
  {
    core::Timeline::Span waiting(o_.timeline, "wait for gradient reduction", "comm");
    for (size_t i : reduce_queue_) fold(i);
    reduce_queue_.clear();
  }
  for (size_t i = 0; i < units_.size(); ++i) reshard(i);
}

FullyShardedDataParallel::FullParams::FullParams(FullyShardedDataParallel* f) : f_(f) {
  if (f_->summoned_++ > 0) return;
  for (size_t i = 0; i < f_->units_.size(); ++i) f_->gather_async(i);
  for (size_t i = 0; i < f_->units_.size(); ++i) f_->wait_gathered(i);
}

FullyShardedDataParallel::FullParams::~FullParams() {
  if (--f_->summoned_ > 0) return;
  for (size_t i = 0; i < f_->units_.size(); ++i) f_->reshard(i);
}

void FullyShardedDataParallel::load_full(const std::vector<Tensor>& values) {
  COHORT_CHECK(values.size() == params_.size(), "load_full: ", values.size(), " values for ",
               params_.size(), " parameters");
  core::autograd::NoGradGuard guard;
  const int world = group_->size(), rank = group_->rank();
  for (Unit& u : units_) {
    const int64_t n = u.layout.shard_numel(world), lo = n * rank;
    for (size_t j = 0; j < u.layout.params.size(); ++j) {
      const size_t k = u.layout.params[j];
      COHORT_CHECK(values[k].sizes() == params_[k].sizes(), "load_full: ", names_[k], " has shape ",
                   core::shape_str(values[k].sizes()), ", the model ",
                   core::shape_str(params_[k].sizes()));
      // The part of this parameter inside this rank's block.
      const int64_t begin = std::max(lo, u.layout.offsets[j]);
      const int64_t end = std::min(lo + n, u.layout.offsets[j] + params_[k].numel());
      if (begin >= end) continue;
      u.shard.narrow(0, begin - lo, end - begin)
          .copy_(values[k].contiguous().view({-1}).narrow(0, begin - u.layout.offsets[j],
                                                          end - begin));
    }
    u.shard.bump_version();
  }
}

int64_t FullyShardedDataParallel::sharded_bytes() const {
  int64_t bytes = 0;
  for (const Unit& u : units_) bytes += bytes_of(u.shard) + bytes_of(u.shard.grad());
  return bytes;
}

int64_t FullyShardedDataParallel::gathered_bytes() const {
  int64_t bytes = 0;
  for (const Unit& u : units_) {
    if (u.state != State::kSharded) bytes += bytes_of(u.full);
    bytes += bytes_of(u.full_grad);
  }
  return bytes;
}

}  // namespace cohort::collectives
