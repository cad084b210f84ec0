// Module: the base of layers and models. Holds named parameters and buffers (as pointers to the
// subclass's Tensor members, so to(device) can swap them), child modules, and train/eval mode.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor/tensor.h"

namespace cohort::core::nn {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;
using StateDict = std::map<std::string, Tensor>;

class Module {
 public:
  virtual ~Module() = default;
  Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  virtual Tensor forward(const Tensor& x) = 0;
  // forward() with this module's hooks around it. Modules call their children this way, so that
  // wrappers such as FSDP (which gathers a unit's parameters just before its forward) see every
  // call; a child's forward() called directly bypasses them, as in PyTorch.
  Tensor operator()(const Tensor& x);

  // Hooks run by operator(): pre-hooks before forward(), post-hooks after it with its output
  // (which they may replace). Returns an id for remove_forward_hook.
  using ForwardPreHook = std::function<void(Module&)>;
  using ForwardHook = std::function<void(Module&, Tensor& output)>;
  int register_forward_pre_hook(ForwardPreHook hook);
  int register_forward_hook(ForwardHook hook);
  void remove_forward_hook(int id);

  // Parameters and buffers in registration order, names dotted by submodule ("l1.weight").
  NamedTensors named_parameters() const;
  std::vector<Tensor> parameters() const;
  NamedTensors named_buffers() const;
  // Parameters then buffers, detached. Tensors share storage with the module.
  StateDict state_dict() const;
  // Copies values in; with strict, missing or unexpected keys and shape mismatches throw naming the
  // key.
  void load_state_dict(const StateDict& state, bool strict = true);
  int64_t num_parameters() const;
  // Calls fn on this module (name "") and every descendant, parents first, names dotted as in
  // named_parameters().
  void for_each_module(const std::function<void(const std::string&, Module&)>& fn,
                       const std::string& prefix = "");

  void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }
  // Moves every parameter and buffer to `device` (parameters stay leaves that require grad).
  void to(Device device);
  // Converts every floating parameter and buffer to `dtype` (integer buffers keep theirs).
  void to(DType dtype);
  void zero_grad(bool set_to_none = true);

 protected:
  Tensor& register_parameter(const std::string& name, Tensor& slot, Tensor value);
  Tensor& register_buffer(const std::string& name, Tensor& slot, Tensor value);
  template <typename M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> m) {
    children_.emplace_back(name, m);
    return m;
  }

 private:
  void collect(const std::string& prefix, bool params, NamedTensors& out) const;
  std::vector<std::pair<std::string, Tensor*>> params_;
  std::vector<std::pair<std::string, Tensor*>> buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
  std::vector<std::pair<int, ForwardPreHook>> pre_hooks_;
  std::vector<std::pair<int, ForwardHook>> post_hooks_;
  int next_hook_id_ = 0;
};

using ModulePtr = std::shared_ptr<Module>;

}  // namespace cohort::core::nn
