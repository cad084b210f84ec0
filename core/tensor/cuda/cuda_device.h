// The CUDA device layer under tensors: which GPUs there are, device memory (a caching allocator,
// registered for DeviceType::kCUDA), copies between host and device memory, and the stream that
// work for a device is ordered on. No CUDA header leaks out of here: streams travel as void*.
// The work is done by the CUDA module (libcohort_cuda.so, cuda_runtime.h), opened on the first
// call that needs it; where it cannot be (a build or a machine without CUDA, no driver) there are
// no devices, and anything that needs one throws ConfigError saying what is missing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "core/tensor/device.h"
#include "core/tensor/storage.h"

namespace cohort::core::cuda {

// Number of visible GPUs; 0 where CUDA, the driver or a GPU is missing (never throws).
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

// The caching allocator's accounting over all devices (PyTorch's torch.cuda.memory_stats): bytes
// held by live tensors and their peak, bytes kept for reuse, bytes obtained from the driver, and
// how many requests needed cudaMalloc or were served from the cache. Sizes are the allocator's
// rounded block sizes.
struct MemoryStats {
  size_t allocated = 0, peak_allocated = 0, cached = 0, reserved = 0;
  uint64_t device_allocations = 0, cache_hits = 0;
};
MemoryStats memory_stats();
// Starts peak_allocated again from what is allocated now.
void reset_peak_memory();

// The stream that work for `device` is ordered on (cudaStream_t as void*); the legacy default
// stream until a backend sets another.
void* current_stream(int device);

// Whether float32 matmuls and convolutions may use TF32 tensor cores (10-bit mantissa, float32
// range; PyTorch's allow_tf32). On by default; COHORT_ALLOW_TF32=0 in the environment or
// set_allow_tf32(false) turns it off for results that must match float32 arithmetic.
bool allow_tf32();
void set_allow_tf32(bool allow);

// Waits for all work on every device, then raises any index error a kernel recorded.
void synchronize();

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

// Copies n bytes between any two of host and device memory. Host memory may be reused as soon as
// it returns. A copy to the device is ordered on the current stream of dst's device without
// waiting for it (host data goes through a pinned staging buffer); a copy to the host returns
// once dst holds the bytes, after all earlier work on the device.
void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t n);

}  // namespace cohort::core::cuda
