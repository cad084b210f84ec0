// Which kernels run a device's tensors: the CPU backend always; CUDA tensors the CUDA module's
// backend (opened on first use; ConfigError saying what is missing where it cannot be).
#include "core/ops/backend.h"

#include "core/ops/cpu/cpu_backend.h"
#include "core/tensor/cuda/cuda_runtime.h"

namespace cohort::core {

Backend& backend_for(Device device) {
  static cpu::CpuBackend cpu_backend;
  if (device.is_cpu()) return cpu_backend;
  return cuda::runtime().backend();
}

void Backend::conv2d_forward(const Tensor&, const Tensor&, const Tensor&, const Conv2dGeometry&,
                             const Tensor&) {
  COHORT_THROW(Error, "this device has no library convolution; conv2d uses im2col");
}
void Backend::conv2d_backward(const Tensor&, const Tensor&, const Tensor&, const Conv2dGeometry&,
                              const Tensor&, const Tensor&, const Tensor&) {
  COHORT_THROW(Error, "this device has no library convolution; conv2d uses im2col");
}

}  // namespace cohort::core
