// The backward engine: runs the recorded graph in reverse, newest node first, on the calling
// thread.
#pragma once

#include <functional>

#include "core/autograd/node.h"

namespace cohort::core::autograd {

// Computes gradients of `roots` (seeded with `grads`, or ones for single-element roots) and
// accumulates them into the leaves. Without retain_graph the graph's saved tensors are freed.
void backward(const TensorList& roots, const TensorList& grads, bool retain_graph);

// Runs `fn` on this thread when the backward pass now running has finished every node (DDP waits
// for its bucket all-reduces there). Only valid from inside a backward pass, e.g. from a hook.
// Callbacks of a pass that throws are dropped.
void queue_callback(std::function<void()> fn);

}  // namespace cohort::core::autograd
