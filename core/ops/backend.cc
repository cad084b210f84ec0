// Which kernels run a device's tensors: the CPU backend always, the CUDA backend in CUDA builds.
#include "core/ops/backend.h"

#include "cohort/config.h"
#include "core/ops/cpu/cpu_backend.h"
#if COHORT_USE_CUDA
#include "core/ops/cuda/cuda_backend.h"
#endif

namespace cohort::core {

Backend& backend_for(Device device) {
  static cpu::CpuBackend cpu_backend;
  if (device.is_cpu()) return cpu_backend;
#if COHORT_USE_CUDA
  static cuda::CudaBackend cuda_backend;
  return cuda_backend;
#else
  COHORT_THROW(ConfigError, "no kernels for device ", device.str(),
               ": this build of cohort has no CUDA (COHORT_USE_CUDA=OFF)");
#endif
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
