// Backward engine. Dependencies are counted over the reachable graph first; a node runs once every
// gradient it will receive has arrived. Ready nodes run newest first (by sequence number), so
// parameters of the last layers finish first — the order DDP's gradient buckets expect.
#include "core/autograd/engine.h"

#include <queue>
#include <unordered_map>

#include "core/autograd/grad_mode.h"
#include "core/ops/ops.h"

namespace cohort::core::autograd {
namespace {

struct ByNewest {
  bool operator()(const Node* a, const Node* b) const {
    return a->sequence_nr() < b->sequence_nr();
  }
};

void accumulate(Tensor& slot, Tensor&& g) {
  if (!g.defined()) return;
  if (!slot.defined()) {
    slot = std::move(g);
  } else {
    slot = add(slot, g);
  }
}

// The destinations of the node being applied on this thread, per input (grad_destination).
thread_local const TensorList* t_destinations = nullptr;

// Where each input's gradient may be written in place: only a leaf whose accumulator hears from
// no other edge (deps 1, nothing buffered) and whose gradient is still empty.
TensorList destinations_for(Node* n, const std::unordered_map<Node*, int>& deps,
                            const std::unordered_map<Node*, TensorList>& buffers) {
  TensorList out;
  auto& edges = n->next_edges();
  for (size_t i = 0; i < edges.size(); ++i) {
    auto* acc = dynamic_cast<AccumulateGrad*>(edges[i].fn.get());
    if (!acc) continue;
    auto d = deps.find(acc);
    if (d == deps.end() || d->second != 1 || buffers.count(acc)) continue;
    Tensor dest = acc->destination_if_empty();
    if (!dest.defined()) continue;
    out.resize(edges.size());
    out[i] = std::move(dest);
  }
  return out;
}

// Callbacks queued by the backward pass running on this thread; depth > 0 while one runs.
thread_local std::vector<std::function<void()>> t_callbacks;
thread_local int t_depth = 0;

void run_graph(const TensorList& roots, const TensorList& grads, bool retain_graph);

}  // namespace

Tensor grad_destination(size_t input) {
  if (!t_destinations || input >= t_destinations->size()) return {};
  return (*t_destinations)[input];
}

void queue_callback(std::function<void()> fn) {
  COHORT_CHECK(t_depth > 0, "queue_callback outside a backward pass");
  t_callbacks.push_back(std::move(fn));
}

void backward(const TensorList& roots, const TensorList& grads, bool retain_graph) {
  // A nested backward (from a hook) shares the outer pass's callbacks; they run when it ends.
  struct Depth {
    Depth() { ++t_depth; }
    ~Depth() {
      if (--t_depth == 0) t_callbacks.clear();
    }
  } depth;
  run_graph(roots, grads, retain_graph);
  if (t_depth > 1) return;
  // A callback may queue another (it runs in this same loop).
  for (size_t i = 0; i < t_callbacks.size(); ++i) {
    auto fn = std::move(t_callbacks[i]);
    fn();
  }
}

namespace {

void run_graph(const TensorList& roots, const TensorList& grads, bool retain_graph) {
  NoGradGuard no_grad;
  std::vector<Edge> root_edges;
  for (size_t i = 0; i < roots.size(); ++i) {
    const Tensor& r = roots[i];
    COHORT_CHECK(r.defined(), "backward on an undefined tensor");
    Edge e = gradient_edge(r);
    COHORT_CHECK(e.valid(), "backward: the tensor does not require grad and has no grad_fn");
    root_edges.push_back(e);
  }

  std::unordered_map<Node*, int> deps;
  std::unordered_map<Node*, TensorList> buffers;
  std::vector<Node*> stack;
  for (auto& e : root_edges) {
    if (deps.emplace(e.fn.get(), 0).second) stack.push_back(e.fn.get());
  }
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    for (auto& e : n->next_edges()) {
      if (!e.valid()) continue;
      auto [it, inserted] = deps.emplace(e.fn.get(), 0);
      ++it->second;
      if (inserted) stack.push_back(e.fn.get());
    }
  }

  for (size_t i = 0; i < roots.size(); ++i) {
    Tensor g;
    if (i < grads.size() && grads[i].defined()) {
      g = grads[i];
      COHORT_CHECK(g.sizes() == roots[i].sizes(), "backward: gradient of shape ",
                   shape_str(g.sizes()), " does not match the output's shape ",
                   shape_str(roots[i].sizes()));
    } else {
      COHORT_CHECK(roots[i].numel() == 1,
                   "backward without a gradient needs a single-element output, got shape ",
                   shape_str(roots[i].sizes()));
      g = ones_like(roots[i]);
    }
    Node* fn = root_edges[i].fn.get();
    auto& buf = buffers[fn];
    buf.resize(fn->num_outputs());
    accumulate(buf[root_edges[i].input_nr], std::move(g));
  }

  std::priority_queue<Node*, std::vector<Node*>, ByNewest> ready;
  for (auto& e : root_edges) {
    if (deps[e.fn.get()] == 0) {
      deps[e.fn.get()] = -1;  // queued
      ready.push(e.fn.get());
    }
  }
  while (!ready.empty()) {
    Node* n = ready.top();
    ready.pop();
    TensorList in = std::move(buffers[n]);
    buffers.erase(n);
    in.resize(n->num_outputs());
    bool any = false;
    for (auto& t : in) any = any || t.defined();
    TensorList out;
    if (any) {
      n->run_pre_hooks(in);
      const TensorList dests = destinations_for(n, deps, buffers);
      struct Scope {  // restored for a backward nested in a hook
        const TensorList* saved = t_destinations;
        explicit Scope(const TensorList* d) { t_destinations = d; }
        ~Scope() { t_destinations = saved; }
      } scope(dests.empty() ? nullptr : &dests);
      out = n->apply(std::move(in));
    }
    if (!retain_graph) n->release();
    auto& edges = n->next_edges();
    for (size_t i = 0; i < edges.size(); ++i) {
      if (!edges[i].valid()) continue;
      Node* next = edges[i].fn.get();
      if (i < out.size() && out[i].defined()) {
        auto& buf = buffers[next];
        buf.resize(next->num_outputs());
        accumulate(buf[edges[i].input_nr], std::move(out[i]));
      }
      if (--deps[next] == 0) ready.push(next);
    }
  }
}

}  // namespace

}  // namespace cohort::core::autograd

namespace cohort::core {

void Tensor::backward(const Tensor& gradient, bool retain_graph) const {
  autograd::backward({*this}, {gradient}, retain_graph);
}

}  // namespace cohort::core
