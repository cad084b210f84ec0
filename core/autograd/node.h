// The autograd graph: a Node per recorded op, Edges to the nodes that produced its inputs, saved
// tensors with version checks, and the per-tensor AutogradMeta (grad, grad_fn, hooks).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor/tensor.h"

namespace cohort::core::autograd {

using TensorList = std::vector<Tensor>;
class Node;

struct Edge {
  std::shared_ptr<Node> fn;
  uint32_t input_nr = 0;
  bool valid() const { return fn != nullptr; }
};

class Node {
 public:
  explicit Node(std::string name);
  virtual ~Node() = default;
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  // grads: one per forward output (undefined where no gradient flowed). Returns one gradient per
  // next edge (undefined where that input needs none).
  virtual TensorList apply(TensorList&& grads) = 0;
  // Frees saved tensors once a backward pass without retain_graph has gone through this node.
  virtual void release() {}

  const std::string& name() const { return name_; }
  uint64_t sequence_nr() const { return sequence_nr_; }
  std::vector<Edge>& next_edges() { return next_edges_; }
  uint32_t num_outputs() const { return num_outputs_; }
  void set_num_outputs(uint32_t n) { num_outputs_ = n; }

  // Hooks on the gradient of forward output `output_nr`, run before apply().
  void add_pre_hook(uint32_t output_nr, int id, TensorHook hook);
  bool remove_pre_hook(int id);
  void run_pre_hooks(TensorList& grads);

 protected:
  // The engine runs ready nodes with the highest number first.
  void set_sequence_nr(uint64_t n) { sequence_nr_ = n; }

 private:
  std::string name_;
  uint64_t sequence_nr_;
  uint32_t num_outputs_ = 1;
  std::vector<Edge> next_edges_;
  std::vector<std::tuple<uint32_t, int, TensorHook>> pre_hooks_;
};

// A tensor kept for backward. Remembers the storage version at save time so that an in-place change
// between forward and backward is an error instead of a wrong gradient. Holds a detached handle, so
// saving an op's own output creates no reference cycle.
class SavedTensor {
 public:
  SavedTensor() = default;
  explicit SavedTensor(const Tensor& t);
  // Throws cohort::Error if the tensor was modified in place since it was saved.
  const Tensor& get() const;
  bool defined() const { return data_.defined(); }

 private:
  Tensor data_;
  uint64_t version_ = 0;
};

using BackwardFn =
    std::function<TensorList(const TensorList& grads, const std::vector<bool>& needs)>;

// A node whose backward is a closure; releasing it destroys the closure and what it saved.
class FunctionNode final : public Node {
 public:
  FunctionNode(std::string name, BackwardFn fn) : Node(std::move(name)), fn_(std::move(fn)) {}
  TensorList apply(TensorList&& grads) override;
  void release() override { fn_ = nullptr; }
  // The dtype of each input: a gradient is returned in its input's dtype (a float32 residual
  // added to a bfloat16 activation sends back a bfloat16 gradient), as in PyTorch.
  std::vector<DType>& input_dtypes() { return input_dtypes_; }

 private:
  BackwardFn fn_;
  std::vector<DType> input_dtypes_;
};

// The sink for a leaf's gradient: runs the leaf's hooks, accumulates into .grad(), then runs its
// post-accumulate hooks (DDP starts bucket all-reduces from those).
class AccumulateGrad final : public Node {
 public:
  explicit AccumulateGrad(std::weak_ptr<TensorImpl> variable);
  TensorList apply(TensorList&& grads) override;
  // The leaf's grad_destination when its gradient is still undefined and it has no hooks.
  Tensor destination_if_empty() const;

 private:
  std::weak_ptr<TensorImpl> variable_;
};

}  // namespace cohort::core::autograd

namespace cohort::core {

struct AutogradMeta {
  bool requires_grad = false;
  Tensor grad;
  std::shared_ptr<autograd::Node> grad_fn;
  uint32_t output_nr = 0;
  std::shared_ptr<autograd::Node> accumulator;    // leaves only, created on first use
  std::vector<std::pair<int, TensorHook>> hooks;  // leaves: run before accumulation
  std::vector<std::pair<int, PostAccumulateHook>> post_hooks;
  // Leaves: where backward writes this gradient while .grad() is undefined (DDP's bucket slots),
  // so that it arrives in place instead of being copied there.
  Tensor grad_destination;
};

}  // namespace cohort::core

namespace cohort::core::autograd {

// True when grad mode is on and any of the tensors requires grad.
bool any_requires_grad(std::initializer_list<const Tensor*> inputs);
bool any_requires_grad(const std::vector<Tensor>& inputs);
// The edge through which a gradient for `t` flows: its grad_fn, or its accumulator if a leaf.
Edge gradient_edge(const Tensor& t);
// Records `fn` as the backward of an op with these inputs and outputs, if any input requires grad.
void record(std::string name, const std::vector<Tensor>& inputs,
            const std::vector<Tensor*>& outputs, BackwardFn fn);
AutogradMeta& meta(const Tensor& t);  // creates it on first use

// Asks backward to write leaf's gradient into `destination` (same shape, dtype and device,
// contiguous) whenever the leaf has no gradient yet; an undefined tensor cancels. Ops that can
// produce a gradient in place (linear's weight and bias) then do, and .grad() becomes
// `destination` with no copy. Other ops, a leaf with hooks, or one that gets several
// contributions take the usual path, and the gradient lands wherever they put it.
void set_grad_destination(const Tensor& leaf, const Tensor& destination);
// The leaf's destination, or an undefined tensor without one.
Tensor grad_destination_of(const Tensor& leaf);
// Inside a backward function: the destination for the gradient of input `i` of the op, or an
// undefined tensor when that input's gradient has none. Set by the engine for each node it runs.
Tensor grad_destination(size_t input);

}  // namespace cohort::core::autograd
