// What a CUDA kernel reports when an index is out of range. Kernels cannot throw: the first bad
// index is written into the device's slot (index_error_slot) and the host raises it as
// InvalidArgument at its next synchronisation (raise_kernel_errors), naming the op.
#pragma once

#include <cstdint>

namespace cohort::core::cuda {

enum KernelErrorOp : int {
  kIndexSelectIndex = 1,
  kIndexAddIndex,
  kGatherIndex,
  kScatterAddIndex,
  kCrossEntropyTarget,
  kEmbeddingIndex,
};

struct KernelError {
  int flag;  // 0 until a kernel records an error
  int op;    // a KernelErrorOp
  int64_t index;
  int64_t size;
};

// The device memory kernels on cuda:`device` record into (allocated and zeroed on first use).
KernelError* index_error_slot(int device);
// Throws InvalidArgument for an error a kernel recorded since the last call, and clears it.
// Synchronises with every device that has a slot.
void raise_kernel_errors();

}  // namespace cohort::core::cuda
