// Storage: one allocation on one device, shared by every view of it. It also carries the version
// counter that autograd uses to notice in-place changes to tensors saved for backward.
#pragma once

#include <atomic>
#include <cstddef>
#include <functional>
#include <memory>

#include "core/tensor/device.h"
#include "core/util/error.h"

namespace cohort::core {

// Allocates raw device memory. The CPU allocator is always present; a CUDA build registers a
// caching allocator for DeviceType::kCUDA at start-up.
class Allocator {
 public:
  virtual ~Allocator() = default;
  virtual void* allocate(size_t nbytes) = 0;
  virtual void deallocate(void* ptr, size_t nbytes) = 0;
  // Memory that comes and goes in a pattern the cache would only hoard (FSDP's gathered
  // parameters: each unit's block lives for its forward and backward only). The CPU allocator
  // maps it straight from the system and returns it there; others may use their cache.
  virtual void* allocate_transient(size_t nbytes) { return allocate(nbytes); }
  virtual void deallocate_transient(void* ptr, size_t nbytes) { deallocate(ptr, nbytes); }
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
  // Frees the memory (nbytes 0) or gives the storage a fresh, uninitialised allocation of
  // nbytes, keeping its identity: every view of it (a module's parameters, tensors saved for
  // backward) reads the new memory. FSDP frees a unit's gathered parameters between their uses
  // this way, as PyTorch's FSDP resizes their storage to zero. Owned storage only; the memory is
  // transient (Allocator::allocate_transient).
  void resize(size_t nbytes);
  // True after resize(0): reading a view of it is an error (ReleasedMemoryError), not garbage.
  bool released() const { return released_; }
  void bump_version() { version_.fetch_add(1, std::memory_order_relaxed); }

 private:
  void* data_ = nullptr;
  size_t nbytes_ = 0;
  Device device_;
  std::function<void(void*)> deleter_;
  bool owned_ = false;
  bool transient_ = false;
  bool released_ = false;
  std::atomic<uint64_t> version_{0};
};

using Storage = std::shared_ptr<StorageImpl>;

// A tensor whose storage was released (StorageImpl::resize(0)) was read: under FSDP, a
// parameter used outside the forward of the unit that holds it.
class ReleasedMemoryError : public InvalidArgument {
 public:
  using InvalidArgument::InvalidArgument;
};

}  // namespace cohort::core
