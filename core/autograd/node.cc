// Graph nodes, saved tensors and history recording.
#include "core/autograd/node.h"

#include <cstdint>

#include <algorithm>
#include <atomic>

#include "core/autograd/grad_mode.h"
#include "core/ops/ops.h"

namespace cohort::core::autograd {
namespace {
std::atomic<uint64_t> g_next_sequence_nr{0};
thread_local bool g_grad_enabled = true;
}  // namespace

bool GradMode::is_enabled() { return g_grad_enabled; }
void GradMode::set_enabled(bool enabled) { g_grad_enabled = enabled; }

Node::Node(std::string name) : name_(std::move(name)), sequence_nr_(g_next_sequence_nr++) {}

void Node::add_pre_hook(uint32_t output_nr, int id, TensorHook hook) {
  pre_hooks_.emplace_back(output_nr, id, std::move(hook));
}

bool Node::remove_pre_hook(int id) {
  auto it = std::remove_if(pre_hooks_.begin(), pre_hooks_.end(),
                           [&](auto& h) { return std::get<1>(h) == id; });
  bool found = it != pre_hooks_.end();
  pre_hooks_.erase(it, pre_hooks_.end());
  return found;
}

void Node::run_pre_hooks(TensorList& grads) {
  for (auto& [nr, id, hook] : pre_hooks_) {
    if (nr >= grads.size() || !grads[nr].defined()) continue;
    Tensor r = hook(grads[nr]);
    if (r.defined()) grads[nr] = std::move(r);
  }
}

SavedTensor::SavedTensor(const Tensor& t) {
  if (t.defined()) {
    data_ = t.detach();
    version_ = t.version();
  }
}

const Tensor& SavedTensor::get() const {
  if (data_.defined() && data_.version() != version_) {
    COHORT_THROW(
        Error, "a tensor of shape ", shape_str(data_.sizes()), " (", dtype_name(data_.dtype()),
        ") needed for gradient computation was modified by an in-place operation: it is at "
        "version ",
        data_.version(), ", expected version ", version_,
        "; clone it before modifying it or modify it after backward");
  }
  return data_;
}

TensorList FunctionNode::apply(TensorList&& grads) {
  if (!fn_) {
    COHORT_THROW(Error, "trying to backward through ", name(),
                 " a second time: its saved tensors were freed by the first backward; pass "
                 "retain_graph=true to the first backward if you need a second one");
  }
  std::vector<bool> needs(next_edges().size());
  for (size_t i = 0; i < needs.size(); ++i) needs[i] = next_edges()[i].valid();
  try {
    TensorList out = fn_(grads, needs);
    for (size_t i = 0; i < out.size() && i < input_dtypes_.size(); ++i) {
      if (out[i].defined() && out[i].dtype() != input_dtypes_[i] && is_floating(input_dtypes_[i]) &&
          is_floating(out[i].dtype())) {
        NoGradGuard guard;
        out[i] = out[i].to(input_dtypes_[i]);
      }
    }
    return out;
  } catch (const Error& e) {
    COHORT_THROW(Error, "in the backward of ", name(), ": ", e.what());
  }
}

AccumulateGrad::AccumulateGrad(std::weak_ptr<TensorImpl> variable)
    : Node("AccumulateGrad"), variable_(std::move(variable)) {
  // A leaf's accumulator is created on its first use, so its number is older than every op of
  // later steps and it would run at the very end of backward. Running it as soon as its gradient
  // is ready (as PyTorch does) is what lets DDP start a bucket's all-reduce while backward goes on.
  set_sequence_nr(UINT64_MAX);
}

Tensor AccumulateGrad::destination_if_empty() const {
  auto impl = variable_.lock();
  if (!impl || !impl->autograd) return {};
  const AutogradMeta& m = *impl->autograd;
  if (m.grad.defined() || !m.hooks.empty()) return {};
  return m.grad_destination;
}

TensorList AccumulateGrad::apply(TensorList&& grads) {
  auto impl = variable_.lock();
  if (!impl || grads.empty() || !grads[0].defined()) return {};
  Tensor var(impl);
  AutogradMeta& m = *impl->autograd;
  Tensor g = std::move(grads[0]);
  for (auto& [id, hook] : m.hooks) {
    Tensor r = hook(g);
    if (r.defined()) g = std::move(r);
  }
  COHORT_CHECK(g.sizes() == var.sizes(), "gradient of shape ", shape_str(g.sizes()),
               " does not match parameter of shape ", shape_str(var.sizes()));
  const Tensor& d = m.grad_destination;
  if (!m.grad.defined() && d.defined() && g.raw_data() == d.raw_data() && g.sizes() == d.sizes() &&
      g.strides() == d.strides() && g.dtype() == d.dtype()) {
    m.grad = d;  // written in place by the op (grad_destination)
  } else if (!m.grad.defined()) {
    // Steal the incoming buffer when nothing else can see it; otherwise copy so that later in-place
    // accumulation cannot change another tensor.
    bool unique = g.impl_ptr().use_count() == 1 && g.storage().use_count() == 1 &&
                  g.is_contiguous() && g.dtype() == var.dtype();
    m.grad = unique ? g : g.to(var.dtype()).clone();
  } else {
    NoGradGuard guard;
    add_(m.grad, g);
  }
  for (auto& [id, hook] : m.post_hooks) hook(var);
  return {};
}

bool any_requires_grad(std::initializer_list<const Tensor*> inputs) {
  if (!GradMode::is_enabled()) return false;
  for (const Tensor* t : inputs)
    if (t->defined() && (t->requires_grad() || t->grad_fn())) return true;
  return false;
}

bool any_requires_grad(const std::vector<Tensor>& inputs) {
  if (!GradMode::is_enabled()) return false;
  for (const Tensor& t : inputs)
    if (t.defined() && (t.requires_grad() || t.grad_fn())) return true;
  return false;
}

void set_grad_destination(const Tensor& leaf, const Tensor& destination) {
  if (!destination.defined()) {  // cancelling never fails (DDP does it in its destructor)
    if (leaf.defined() && leaf.impl()->autograd) leaf.impl()->autograd->grad_destination = Tensor();
    return;
  }
  COHORT_CHECK(leaf.is_leaf() && leaf.requires_grad(),
               "set_grad_destination: the tensor must be a leaf that requires grad");
  COHORT_CHECK(destination.sizes() == leaf.sizes() && destination.dtype() == leaf.dtype() &&
                   destination.device() == leaf.device() && destination.is_contiguous(),
               "set_grad_destination: the destination must be contiguous with the leaf's shape ",
               shape_str(leaf.sizes()), ", dtype and device");
  meta(leaf).grad_destination = destination;
}

Tensor grad_destination_of(const Tensor& leaf) {
  if (!leaf.defined() || !leaf.impl()->autograd) return Tensor();
  return leaf.impl()->autograd->grad_destination;
}

AutogradMeta& meta(const Tensor& t) {
  auto& m = t.impl()->autograd;
  if (!m) m = std::make_unique<AutogradMeta>();
  return *m;
}

Edge gradient_edge(const Tensor& t) {
  if (!t.defined()) return {};
  if (t.grad_fn()) return {t.grad_fn(), t.output_nr()};
  if (t.requires_grad()) {
    AutogradMeta& m = meta(t);
    if (!m.accumulator) m.accumulator = std::make_shared<AccumulateGrad>(t.impl_ptr());
    return {m.accumulator, 0};
  }
  return {};
}

void record(std::string name, const std::vector<Tensor>& inputs,
            const std::vector<Tensor*>& outputs, BackwardFn fn) {
  if (!any_requires_grad(inputs)) return;
  auto node = std::make_shared<FunctionNode>(std::move(name), std::move(fn));
  node->next_edges().reserve(inputs.size());
  node->input_dtypes().reserve(inputs.size());
  for (const Tensor& t : inputs) {
    node->next_edges().push_back(gradient_edge(t));
    node->input_dtypes().push_back(t.defined() ? t.dtype() : DType::kFloat32);
  }
  node->set_num_outputs(static_cast<uint32_t>(outputs.size()));
  for (uint32_t i = 0; i < outputs.size(); ++i) {
    if (!outputs[i] || !outputs[i]->defined()) continue;
    AutogradMeta& m = meta(*outputs[i]);
    m.grad_fn = node;
    m.output_nr = i;
    m.requires_grad = true;
  }
}

}  // namespace cohort::core::autograd
