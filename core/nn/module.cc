// Module bookkeeping: parameter traversal, state dicts, device moves.
#include "core/nn/module.h"

#include "core/autograd/grad_mode.h"
#include "core/ops/ops.h"

namespace cohort::core::nn {

Tensor& Module::register_parameter(const std::string& name, Tensor& slot, Tensor value) {
  slot = std::move(value);
  if (!slot.requires_grad()) slot.set_requires_grad(true);
  params_.emplace_back(name, &slot);
  return slot;
}

Tensor& Module::register_buffer(const std::string& name, Tensor& slot, Tensor value) {
  slot = std::move(value);
  buffers_.emplace_back(name, &slot);
  return slot;
}

void Module::collect(const std::string& prefix, bool params, NamedTensors& out) const {
  for (auto& [name, t] : params ? params_ : buffers_) out.emplace_back(prefix + name, *t);
  for (auto& [name, child] : children_) child->collect(prefix + name + ".", params, out);
}

Tensor Module::operator()(const Tensor& x) {
  if (pre_hooks_.empty() && post_hooks_.empty()) return forward(x);
  // Copies: a hook may remove itself.
  for (auto [id, hook] : std::vector(pre_hooks_)) hook(*this);
  Tensor out = forward(x);
  for (auto [id, hook] : std::vector(post_hooks_)) hook(*this, out);
  return out;
}

int Module::register_forward_pre_hook(ForwardPreHook hook) {
  pre_hooks_.emplace_back(next_hook_id_, std::move(hook));
  return next_hook_id_++;
}

int Module::register_forward_hook(ForwardHook hook) {
  post_hooks_.emplace_back(next_hook_id_, std::move(hook));
  return next_hook_id_++;
}

void Module::remove_forward_hook(int id) {
  std::erase_if(pre_hooks_, [id](const auto& h) { return h.first == id; });
  std::erase_if(post_hooks_, [id](const auto& h) { return h.first == id; });
}

NamedTensors Module::named_parameters() const {
  NamedTensors out;
  collect("", true, out);
  return out;
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& [n, t] : named_parameters()) out.push_back(t);
  return out;
}

NamedTensors Module::named_buffers() const {
  NamedTensors out;
  collect("", false, out);
  return out;
}

StateDict Module::state_dict() const {
  StateDict sd;
  for (auto& [n, t] : named_parameters()) sd[n] = t.detach();
  for (auto& [n, t] : named_buffers()) sd[n] = t.detach();
  return sd;
}

void Module::load_state_dict(const StateDict& state, bool strict) {
  autograd::NoGradGuard guard;
  StateDict own = state_dict();
  for (auto& [name, dst] : own) {
    auto it = state.find(name);
    if (it == state.end()) {
      COHORT_CHECK(!strict, "load_state_dict: missing key '", name, "'");
      continue;
    }
    COHORT_CHECK(it->second.sizes() == dst.sizes(), "load_state_dict: '", name, "' has shape ",
                 shape_str(it->second.sizes()), " in the state dict but ", shape_str(dst.sizes()),
                 " in the model");
    dst.copy_(it->second.to(dst.device()));
  }
  if (strict) {
    for (auto& [name, t] : state)
      COHORT_CHECK(own.count(name), "load_state_dict: unexpected key '", name, "'");
  }
}

void Module::for_each_module(const std::function<void(const std::string&, Module&)>& fn,
                             const std::string& prefix) {
  fn(prefix, *this);
  for (auto& [n, c] : children_) c->for_each_module(fn, prefix.empty() ? n : prefix + "." + n);
}

int64_t Module::num_parameters() const {
  int64_t n = 0;
  for (auto& t : parameters()) n += t.numel();
  return n;
}

void Module::train(bool on) {
  training_ = on;
  for (auto& [n, c] : children_) c->train(on);
}

void Module::to(Device device) {
  autograd::NoGradGuard guard;
  for (auto& [n, t] : params_) {
    if (t->device() == device) continue;
    Tensor moved = t->to(device);
    moved.set_requires_grad(true);
    *t = moved;
  }
  for (auto& [n, t] : buffers_)
    if (t->device() != device) *t = t->to(device);
  for (auto& [n, c] : children_) c->to(device);
}

void Module::to(DType dtype) {
  autograd::NoGradGuard guard;
  for (auto& [n, t] : params_) {
    if (t->dtype() == dtype || !is_floating(t->dtype())) continue;
    Tensor converted = t->to(dtype);
    converted.set_requires_grad(true);
    *t = converted;
  }
  for (auto& [n, t] : buffers_)
    if (t->dtype() != dtype && is_floating(t->dtype())) *t = t->to(dtype);
  for (auto& [n, c] : children_) c->to(dtype);
}

void Module::zero_grad(bool set_to_none) {
  for (auto& t : parameters()) {
    if (set_to_none) {
      t.set_grad(Tensor());
    } else if (t.grad().defined()) {
      t.grad().zero_();
    }
  }
}

}  // namespace cohort::core::nn
