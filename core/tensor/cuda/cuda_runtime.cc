// libcohort_cuda.so: the CUDA device layer behind cuda_device.h (cuda_runtime.h is the boundary).
// Only this module and the kernels under core/ops/cuda/ link the CUDA runtime, cuBLAS and cuDNN.
#include "core/tensor/cuda/cuda_runtime.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cohort/config.h"
#include "core/ops/cuda/cuda_backend.h"
#include "core/tensor/cuda/kernel_error.h"
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
        ++stats_.cache_hits;
        count_allocated(size);
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
    ++stats_.device_allocations;
    stats_.reserved += size;
    count_allocated(size);
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
    stats_.allocated -= it->second.second;
    owner_.erase(it);
  }

  MemoryStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    MemoryStats s = stats_;
    s.cached = cached_;
    return s;
  }

  void reset_peak() {
    std::lock_guard<std::mutex> lock(mu_);
    stats_.peak_allocated = stats_.allocated;
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
      stats_.reserved -= key.second * list.size();
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

  // Under mu_.
  void count_allocated(size_t size) {
    stats_.allocated += size;
    stats_.peak_allocated = std::max(stats_.peak_allocated, stats_.allocated);
  }

  std::mutex mu_;
  MemoryStats stats_;
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

// What Runtime does (below), named apart from core's cuda_device.h functions that forward here.
namespace impl {

int set_device(int device) {
  int previous = -1;
  cudaGetDevice(&previous);
  if (device != previous) check(cudaSetDevice(device), "cudaSetDevice");
  return previous;
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
MemoryStats memory_stats() { return caching_allocator().stats(); }
void reset_peak_memory() { caching_allocator().reset_peak(); }
void release_cache() { caching_allocator().release(); }

void* current_stream(int) { return nullptr; }

}  // namespace impl

namespace {
struct ErrorSlots {
  std::mutex mu;
  std::map<int, KernelError*> slots;
};
ErrorSlots& error_slots() {
  static auto* s = new ErrorSlots();
  return *s;
}
const char* kernel_error_op(int op) {
  switch (op) {
    case kIndexSelectIndex:
      return "index_select";
    case kIndexAddIndex:
      return "index_add";
    case kGatherIndex:
      return "gather";
    case kScatterAddIndex:
      return "scatter_add";
    case kCrossEntropyTarget:
      return "cross_entropy target";
    case kEmbeddingIndex:
      return "embedding";
  }
  return "a CUDA kernel";
}
}  // namespace

KernelError* index_error_slot(int device) {
  ErrorSlots& e = error_slots();
  std::lock_guard<std::mutex> lock(e.mu);
  KernelError*& slot = e.slots[device];
  if (!slot) {
    DeviceGuard guard(device);
    check(cudaMalloc(&slot, sizeof(KernelError)), "cudaMalloc");
    check(cudaMemset(slot, 0, sizeof(KernelError)), "cudaMemset");
  }
  return slot;
}

void raise_kernel_errors() {
  ErrorSlots& e = error_slots();
  std::lock_guard<std::mutex> lock(e.mu);
  for (auto& [device, slot] : e.slots) {
    DeviceGuard guard(device);
    KernelError host{};
    check(cudaMemcpy(&host, slot, sizeof host, cudaMemcpyDeviceToHost), "cudaMemcpy");
    if (host.flag == 0) continue;
    check(cudaMemset(slot, 0, sizeof(KernelError)), "cudaMemset");
    COHORT_THROW(InvalidArgument, kernel_error_op(host.op), " on cuda:", device, ": index ",
                 host.index, " is out of range for a dimension of size ", host.size);
  }
}

namespace {

// Pinned host buffers for host-to-device copies. A copy from pageable memory makes the host
// wait until the GPU has finished all earlier work, which would serialise every training step's
// batch upload with the step before it. Copying into pinned memory first (a host memcpy) lets the
// upload queue behind that work instead; each buffer is reused once its event says the GPU has
// read it.
class PinnedStaging {
 public:
  // Copies at most this large are staged (batches); larger ones (moving a model to the GPU) are
  // one-off and would pin their whole size for the life of the process.
  static constexpr size_t kMaxStaged = size_t{16} << 20;

  void upload(void* dst, const void* src, size_t n, cudaStream_t stream) {
    if (n > kMaxStaged) {
      check(cudaMemcpy(dst, src, n, cudaMemcpyHostToDevice), "cudaMemcpy");
      return;
    }
    Block* b = take(n);
    cudaError_t rc = cudaSuccess;
    std::memcpy(b->host, src, n);
    rc = cudaMemcpyAsync(dst, b->host, n, cudaMemcpyHostToDevice, stream);
    if (rc == cudaSuccess) rc = cudaEventRecord(b->done, stream);
    {
      std::lock_guard<std::mutex> lock(mu_);
      b->busy = false;
    }
    check(rc, "cudaMemcpyAsync");
  }

 private:
  struct Block {
    void* host = nullptr;
    size_t size = 0;
    cudaEvent_t done = nullptr;
    bool busy = false;
  };

  Block* take(size_t n) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& b : blocks_) {
        if (b->busy || b->size < n) continue;
        const cudaError_t rc = cudaEventQuery(b->done);
        if (rc == cudaErrorNotReady) continue;
        check(rc, "cudaEventQuery");
        b->busy = true;
        return b.get();
      }
    }
    auto b = std::make_unique<Block>();
    b->size = std::max<size_t>(n, size_t{1} << 20);
    check(cudaHostAlloc(&b->host, b->size, cudaHostAllocDefault), "cudaHostAlloc");
    check(cudaEventCreateWithFlags(&b->done, cudaEventDisableTiming), "cudaEventCreate");
    b->busy = true;
    std::lock_guard<std::mutex> lock(mu_);
    blocks_.push_back(std::move(b));
    return blocks_.back().get();
  }

  std::mutex mu_;
  std::vector<std::unique_ptr<Block>> blocks_;
};

PinnedStaging& staging() {
  static auto* s = new PinnedStaging();  // outlives static destructors that copy
  return *s;
}

}  // namespace

namespace impl {

void synchronize() {
  const int n = device_count();
  for (int d = 0; d < n; ++d) {
    DeviceGuard guard(d);
    check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  }
  raise_kernel_errors();
}

void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t n) {
  if (n == 0) return;
  if (dst_device.is_cuda()) {
    DeviceGuard guard(dst_device.index);
    auto stream = static_cast<cudaStream_t>(current_stream(dst_device.index));
    if (!src_device.is_cuda()) {
      staging().upload(dst, src, n, stream);
      return;
    }
    check(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToDevice, stream), "cudaMemcpyAsync");
    // Work on the source's device is ordered on another stream: wait for the copy.
    if (src_device.index != dst_device.index)
      check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    return;
  }
  // cudaMemcpy orders a device-to-host copy after earlier work on the legacy default stream.
  DeviceGuard guard(src_device.index);
  check(cudaMemcpy(dst, src, n, cudaMemcpyDeviceToHost), "cudaMemcpy");
  // What the host reads must not come from a kernel that skipped a bad index.
  raise_kernel_errors();
}

}  // namespace impl

namespace {

std::string version_text(int v, int major_div, int minor_div) {
  return std::to_string(v / major_div) + "." + std::to_string(v % major_div / minor_div);
}

class CudaRuntime final : public Runtime {
 public:
  int device_count() override { return impl::device_count(); }
  std::string unavailable_reason() override { return impl::unavailable_reason(); }
  std::string device_name(int index) override { return impl::device_name(index); }
  Allocator& allocator(int device) override { return impl::allocator(device); }
  size_t cached_bytes() override { return impl::cached_bytes(); }
  void release_cache() override { impl::release_cache(); }
  MemoryStats memory_stats() override { return impl::memory_stats(); }
  void reset_peak_memory() override { impl::reset_peak_memory(); }
  void* current_stream(int device) override { return impl::current_stream(device); }
  void synchronize() override { impl::synchronize(); }
  int set_device(int device) override { return impl::set_device(device); }
  void restore_device(int previous) noexcept override { cudaSetDevice(previous); }
  void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device,
                  size_t n) override {
    impl::copy_bytes(dst, dst_device, src, src_device, n);
  }
  Backend& backend() override { return backend_; }
  std::string versions() override {
    int runtime = 0, driver = 0, cublas = 0;
    cudaRuntimeGetVersion(&runtime);
    cudaDriverGetVersion(&driver);
    cublasGetProperty(MAJOR_VERSION, &cublas);
    int cublas_minor = 0, cublas_patch = 0;
    cublasGetProperty(MINOR_VERSION, &cublas_minor);
    cublasGetProperty(PATCH_LEVEL, &cublas_patch);
    const size_t cudnn = cudnnGetVersion();
    return "runtime " + version_text(runtime, 1000, 10) + ", driver " +
           (driver ? version_text(driver, 1000, 10) : std::string("none")) + ", cuBLAS " +
           std::to_string(cublas) + "." + std::to_string(cublas_minor) + "." +
           std::to_string(cublas_patch) + ", cuDNN " + std::to_string(cudnn / 10000) + "." +
           std::to_string(cudnn % 10000 / 100) + "." + std::to_string(cudnn % 100);
  }

 private:
  CudaBackend backend_;
};

// Constructing it touches no CUDA API: core opens the module inside a static initialiser.
Runtime* the_runtime() {
  static auto* r = new CudaRuntime();  // outlives static destructors that free device memory
  return r;
}

}  // namespace

}  // namespace cohort::core::cuda

extern "C" const cohort::core::cuda::RuntimeEntry cohort_cuda_module{
    COHORT_VERSION, &cohort::core::cuda::the_runtime};
