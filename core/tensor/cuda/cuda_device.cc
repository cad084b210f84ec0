#include "core/tensor/cuda/cuda_device.h"

#include <cuda_runtime.h>

#include <map>
#include <mutex>
#include <vector>

#include "core/util/error.h"

namespace cohort::core::cuda {
namespace {

void check(cudaError_t rc, const char* call) {
  if (rc != cudaSuccess) COHORT_THROW(CudaError, call, " failed: ", cudaGetErrorString(rc));
}

class CachingAllocator {
 public:
  void* allocate(int device, size_t nbytes) {
    if (nbytes == 0) return nullptr;
    const size_t size = round(nbytes);
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto& list = free_[{device, size}];
      if (!list.empty()) {
        void* p = list.back();
        list.pop_back();
        cached_ -= size;
        owner_[p] = {device, size};
        return p;
      }
    }
    DeviceGuard guard(device);
    void* p = nullptr;
    cudaError_t rc = cudaMalloc(&p, size);
    if (rc == cudaErrorMemoryAllocation) {
      // Give the cache back and try once more before reporting the device as full.
      cudaGetLastError();
      release();
      rc = cudaMalloc(&p, size);
    }
    if (rc != cudaSuccess)
      COHORT_THROW(CudaError, "cannot allocate ", nbytes, " bytes on cuda:", device, ": ",
                   cudaGetErrorString(rc));
    std::lock_guard<std::mutex> lock(mu_);
    owner_[p] = {device, size};
    return p;
  }

  void deallocate(void* ptr) {
    if (!ptr) return;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = owner_.find(ptr);
    if (it == owner_.end()) return;
    // The block may still be read by work queued on the default stream; reuse is ordered after
    // it because allocations are handed to work on that same stream.
    free_[it->second].push_back(ptr);
    cached_ += it->second.second;
    owner_.erase(it);
  }

  size_t cached() {
    std::lock_guard<std::mutex> lock(mu_);
    return cached_;
  }

  void release() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [key, list] : free_) {
      DeviceGuard guard(key.first);
      for (void* p : list) cudaFree(p);
      list.clear();
    }
    cached_ = 0;
  }

 private:
  // Small blocks round to 512 bytes, large ones to 2 MiB, so that similar sizes share blocks.
  static size_t round(size_t n) {
    const size_t unit = n < (1u << 20) ? 512 : (2u << 20);
    return (n + unit - 1) / unit * unit;
  }

  std::mutex mu_;
  std::map<std::pair<int, size_t>, std::vector<void*>> free_;
  std::map<void*, std::pair<int, size_t>> owner_;
  size_t cached_ = 0;
};

CachingAllocator& caching_allocator() {
  static auto* a = new CachingAllocator();  // outlives tensors destroyed by static destructors
  return *a;
}

// The Allocator interface for one device.
class DeviceAllocator final : public Allocator {
 public:
  explicit DeviceAllocator(int device) : device_(device) {}
  void* allocate(size_t nbytes) override { return caching_allocator().allocate(device_, nbytes); }
  void deallocate(void* ptr, size_t) override { caching_allocator().deallocate(ptr); }

 private:
  int device_;
};

}  // namespace

DeviceGuard::DeviceGuard(int device) {
  cudaGetDevice(&previous_);
  if (device != previous_) check(cudaSetDevice(device), "cudaSetDevice");
}

DeviceGuard::~DeviceGuard() {
  if (previous_ >= 0) cudaSetDevice(previous_);
}

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

std::string unavailable_reason() {
  int n = 0;
  const cudaError_t rc = cudaGetDeviceCount(&n);
  if (rc != cudaSuccess) {
    cudaGetLastError();
    return std::string("no usable GPU: ") + cudaGetErrorString(rc);
  }
  return n == 0 ? "no GPU is visible (CUDA_VISIBLE_DEVICES?)" : "";
}

std::string device_name(int index) {
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, index), "cudaGetDeviceProperties");
  return prop.name;
}

Allocator& allocator(int device) {
  static std::mutex mu;
  static auto* per_device = new std::map<int, DeviceAllocator>();
  const int n = device_count();
  if (device < 0 || device >= n)
    COHORT_THROW(InvalidArgument, "cuda:", device, " does not exist: ",
                 n == 0 ? unavailable_reason() : "this machine has " + std::to_string(n) + " GPUs");
  std::lock_guard<std::mutex> lock(mu);
  return per_device->try_emplace(device, device).first->second;
}
size_t cached_bytes() { return caching_allocator().cached(); }
void release_cache() { caching_allocator().release(); }

void* current_stream(int) { return nullptr; }

void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t n) {
  if (n == 0) return;
  if (dst_device.is_cuda() && src_device.is_cuda()) {
    DeviceGuard guard(dst_device.index);
    auto stream = static_cast<cudaStream_t>(current_stream(dst_device.index));
    check(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, stream), "cudaMemcpyAsync");
    check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    return;
  }
  // cudaMemcpy orders host<->device copies after earlier work on the legacy default stream.
  DeviceGuard guard(dst_device.is_cuda() ? dst_device.index : src_device.index);
  const cudaMemcpyKind kind =
      dst_device.is_cuda() ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost;
  check(cudaMemcpy(dst, src, n, kind), "cudaMemcpy");
}

}  // namespace cohort::core::cuda
