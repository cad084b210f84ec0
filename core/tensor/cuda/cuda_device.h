// The CUDA device layer under tensors: which GPUs there are, device memory (a caching allocator,
// registered for DeviceType::kCUDA), copies between host and device memory, and the stream that
// work for a device is ordered on. No CUDA header leaks out of here: streams travel as void*.
// In a build without CUDA (COHORT_USE_CUDA=OFF) there are no devices and allocation throws
// ConfigError.
#pragma once

#include <cstddef>
#include <string>

#include "core/tensor/device.h"
#include "core/tensor/storage.h"

namespace cohort::core::cuda {

// Number of visible GPUs; 0 in a CPU-only build or where the driver finds none (never throws).
int device_count();
// Why there is no GPU ("this build has no CUDA", "no CUDA driver", ...); empty when there is one.
std::string unavailable_reason();
// "NVIDIA H100 80GB HBM3" for device `index`.
std::string device_name(int index);

// The caching allocator for memory on cuda:`device`: freed blocks are kept per device and size and
// reused (cudaFree synchronises the whole device). Throws InvalidArgument for a device that does
// not exist.
Allocator& allocator(int device);
// Device bytes kept for reuse, and a way to give them back to the driver.
size_t cached_bytes();
void release_cache();

// The stream that work for `device` is ordered on (cudaStream_t as void*); the legacy default
// stream until a backend sets another.
void* current_stream(int device);

// Makes cuda:`device` the calling thread's current device while in scope, then restores the
// previous one. Throws CudaError when the device cannot be selected.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

// Copies n bytes between any two of host and device memory and returns once dst holds them
// (a device-to-device copy is ordered on the current stream of dst's device).
void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t n);

}  // namespace cohort::core::cuda
