// The backward engine: runs the recorded graph in reverse, newest node first, on the calling
// thread.
#pragma once

#include "core/autograd/node.h"

namespace cohort::core::autograd {

// Computes gradients of `roots` (seeded with `grads`, or ones for single-element roots) and
// accumulates them into the leaves. Without retain_graph the graph's saved tensors are freed.
void backward(const TensorList& roots, const TensorList& grads, bool retain_graph);

}  // namespace cohort::core::autograd
