// Storage: one allocation on one device, shared by every view of it. It also carries the version
// counter that autograd uses to notice in-place changes to tensors saved for backward.
#pragma once

#include <atomic>
#include <cstddef>
#include <functional>
#include <memory>

#include "core/tensor/device.h"

namespace cohort::core {

// Allocates raw device memory. The CPU allocator is always present; a CUDA build registers a
// caching allocator for DeviceType::kCUDA at start-up.
class Allocator {
 public:
  virtual ~Allocator() = default;
  virtual void* allocate(size_t nbytes) = 0;
  virtual void deallocate(void* ptr, size_t nbytes) = 0;
};

Allocator& allocator_for(Device device);
void register_allocator(DeviceType type, Allocator* allocator);

// Bytes of freed CPU blocks kept for reuse, and a way to hand them back to the system (e.g. before
// forking, or between phases of a program with different shapes).
size_t cpu_cached_bytes();
void release_cpu_cache();

class StorageImpl {
 public:
  // Owns a fresh allocation of nbytes on device.
  StorageImpl(size_t nbytes, Device device);
  // Wraps memory the caller owns; `deleter` (may be empty) runs when the storage dies.
  StorageImpl(void* data, size_t nbytes, Device device, std::function<void(void*)> deleter);
  ~StorageImpl();
  StorageImpl(const StorageImpl&) = delete;
  StorageImpl& operator=(const StorageImpl&) = delete;

  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }
  uint64_t version() const { return version_.load(std::memory_order_relaxed); }
  void bump_version() { version_.fetch_add(1, std::memory_order_relaxed); }

 private:
  void* data_ = nullptr;
  size_t nbytes_ = 0;
  Device device_;
  std::function<void(void*)> deleter_;
  bool owned_ = false;
  std::atomic<uint64_t> version_{0};
};

using Storage = std::shared_ptr<StorageImpl>;

}  // namespace cohort::core
