// The boundary between libcohort_core and its CUDA module (libcohort_cuda.so): core's
// cuda_device.h functions and the CUDA Backend forward to this interface, which the module
// implements. Core opens the module on first use (core/util/module.h), after checking for the
// NVIDIA driver, so that a CPU job never maps libcudart, cuBLAS or cuDNN.
#pragma once

#include <cstddef>
#include <string>

#include "core/tensor/cuda/cuda_device.h"

namespace cohort::core {
class Backend;
}

namespace cohort::core::cuda {

class Runtime {
 public:
  virtual ~Runtime() = default;
  virtual int device_count() = 0;
  virtual std::string unavailable_reason() = 0;
  virtual std::string device_name(int index) = 0;
  virtual Allocator& allocator(int device) = 0;
  virtual size_t cached_bytes() = 0;
  virtual void release_cache() = 0;
  virtual MemoryStats memory_stats() = 0;
  virtual void reset_peak_memory() = 0;
  virtual void* current_stream(int device) = 0;
  virtual void synchronize() = 0;
  // Makes `device` current and returns the device that was; restore_device undoes it.
  virtual int set_device(int device) = 0;
  virtual void restore_device(int previous) noexcept = 0;
  virtual void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device,
                          size_t n) = 0;
  virtual Backend& backend() = 0;
  // "runtime 13.0, driver 13.0, cuBLAS 13.0.0, cuDNN 9.12.0" for `cohort env`.
  virtual std::string versions() = 0;
};

// What libcohort_cuda.so exports (extern "C", so that dlsym finds it by this name).
struct RuntimeEntry {
  const char* cohort_version;  // COHORT_VERSION of the build the module came from
  Runtime* (*runtime)();
};
inline constexpr const char* kRuntimeEntrySymbol = "cohort_cuda_module";

// The module's runtime, opened on first call; ConfigError saying what is missing (the module, a
// CUDA library, the driver) when it cannot be. Does not require a GPU.
Runtime& runtime();
// The runtime when the module is open already, else null (never opens it): for queries that
// have a truthful answer without CUDA, such as memory statistics.
Runtime* runtime_if_loaded();

}  // namespace cohort::core::cuda
