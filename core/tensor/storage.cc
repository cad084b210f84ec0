// CPU allocator and the allocator registry.
#include "core/tensor/storage.h"

#include "core/tensor/cuda/cuda_device.h"

#include <sys/mman.h>

#include <bit>
#include <cstdlib>
#include <map>
#include <mutex>
#include <new>

#include "core/util/env.h"
#include "core/util/error.h"

namespace cohort::core {
namespace {

// 64-byte alignment keeps AVX-512 loads aligned and avoids false sharing between tensors.
//
// Blocks of 256 KiB and more are cached for reuse. Training allocates the same large activations,
// im2col buffers and gradients every step; handing them back to glibc returns them to the kernel
// (mmap/trim), so every step would page-fault and zero them again — measured at ~20% of a CNN step.
// Sizes are rounded up to a quarter of their power of two, so a cached block wastes at most 25%
// and repeating shapes hit exactly; the cache is bounded by COHORT_CPU_CACHE_MB (default 1024).
class CpuAllocator final : public Allocator {
 public:
  CpuAllocator()
      : limit_(static_cast<size_t>(env::integer(env::kCpuCacheMb, 1024, 0, int64_t{1} << 30))
               << 20) {}
  ~CpuAllocator() override { release_cached(); }

  void* allocate(size_t nbytes) override {
    if (nbytes == 0) return nullptr;
    size_t rounded = block_size(nbytes);
    if (rounded >= kCacheMin) {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.find(rounded);
      if (it != free_.end()) {
        void* p = it->second;
        free_.erase(it);
        cached_ -= rounded;
        return p;
      }
    }
    void* p = std::aligned_alloc(64, rounded);
    if (!p) {
      release_cached();  // the cache may be what stands between us and success
      p = std::aligned_alloc(64, rounded);
    }
    if (!p) COHORT_THROW(OutOfMemoryError, "out of CPU memory allocating ", nbytes, " bytes");
    return p;
  }

  void deallocate(void* ptr, size_t nbytes) override {
    if (!ptr) return;
    size_t rounded = block_size(nbytes);
    if (rounded >= kCacheMin) {
      std::lock_guard<std::mutex> lock(mu_);
      if (cached_ + rounded <= limit_) {
        free_.emplace(rounded, ptr);
        cached_ += rounded;
        return;
      }
    }
    std::free(ptr);
  }

  // Large blocks come from mmap, so that freeing one gives its pages back at once (glibc would
  // keep heap blocks, and its mmap threshold grows with every large block freed).
  void* allocate_transient(size_t nbytes) override {
    if (nbytes < kCacheMin) return allocate(nbytes);
    void* p = ::mmap(nullptr, nbytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      release_cached();
      p = ::mmap(nullptr, nbytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    }
    if (p == MAP_FAILED)
      COHORT_THROW(OutOfMemoryError, "out of CPU memory allocating ", nbytes, " bytes");
    return p;
  }
  void deallocate_transient(void* ptr, size_t nbytes) override {
    if (!ptr) return;
    if (nbytes < kCacheMin) return deallocate(ptr, nbytes);
    ::munmap(ptr, nbytes);
  }

  size_t cached_bytes() {
    std::lock_guard<std::mutex> lock(mu_);
    return cached_;
  }

  void release_cached() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [size, p] : free_) std::free(p);
    free_.clear();
    cached_ = 0;
  }

 private:
  static constexpr size_t kCacheMin = size_t{256} << 10;

  static size_t block_size(size_t nbytes) {
    size_t rounded = (nbytes + 63) / 64 * 64;
    if (rounded < kCacheMin) return rounded;
    size_t quarter = std::bit_floor(rounded) / 4;
    return (rounded + quarter - 1) / quarter * quarter;
  }

  std::mutex mu_;
  std::multimap<size_t, void*> free_;
  size_t cached_ = 0;
  size_t limit_;
};

CpuAllocator& cpu_allocator() {
  static CpuAllocator cpu;
  return cpu;
}

Allocator*& slot(DeviceType type) {
  static Allocator* slots[2] = {nullptr, nullptr};
  return slots[static_cast<int>(type)];
}

}  // namespace

Allocator& allocator_for(Device device) {
  if (device.is_cpu()) return cpu_allocator();
  if (Allocator* a = slot(device.type)) return *a;
  return cuda::allocator(device.index);
}

void register_allocator(DeviceType type, Allocator* allocator) { slot(type) = allocator; }

size_t cpu_cached_bytes() { return cpu_allocator().cached_bytes(); }

void release_cpu_cache() { cpu_allocator().release_cached(); }

StorageImpl::StorageImpl(size_t nbytes, Device device)
    : nbytes_(nbytes), device_(device), owned_(true) {
  data_ = allocator_for(device).allocate(nbytes);
}

StorageImpl::StorageImpl(void* data, size_t nbytes, Device device,
                         std::function<void(void*)> deleter)
    : data_(data), nbytes_(nbytes), device_(device), deleter_(std::move(deleter)) {}

void StorageImpl::resize(size_t nbytes) {
  COHORT_CHECK(owned_, "resize: this storage wraps memory it does not own");
  Allocator& a = allocator_for(device_);
  if (transient_) {
    a.deallocate_transient(data_, nbytes_);
  } else {
    a.deallocate(data_, nbytes_);
  }
  data_ = nullptr;
  nbytes_ = 0;
  transient_ = true;
  released_ = nbytes == 0;
  if (nbytes > 0) {
    data_ = a.allocate_transient(nbytes);
    nbytes_ = nbytes;
  }
}

StorageImpl::~StorageImpl() {
  if (owned_ && transient_) {
    allocator_for(device_).deallocate_transient(data_, nbytes_);
  } else if (owned_) {
    allocator_for(device_).deallocate(data_, nbytes_);
  } else if (deleter_) {
    deleter_(data_);
  }
}

}  // namespace cohort::core
