// The backend registry: CPU always, CUDA when a CUDA build registers one.
#include "core/ops/backend.h"

#include "core/ops/cpu/cpu_backend.h"

namespace cohort::core {
namespace {
Backend*& slot(DeviceType type) {
  static Backend* slots[2] = {nullptr, nullptr};
  return slots[static_cast<int>(type)];
}
}  // namespace

Backend& backend_for(Device device) {
  static cpu::CpuBackend cpu_backend;
  if (device.is_cpu()) return cpu_backend;
  Backend* b = slot(device.type);
  if (!b) COHORT_THROW(Error, "no kernels for device ", device.str(), " in this build");
  return *b;
}

void register_backend(DeviceType type, Backend* backend) { slot(type) = backend; }

}  // namespace cohort::core
