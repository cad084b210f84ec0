// CPU allocator and the allocator registry.
#include "core/tensor/storage.h"

#include <cstdlib>
#include <new>

#include "core/util/error.h"

namespace cohort::core {
namespace {

// 64-byte alignment keeps AVX-512 loads aligned and avoids false sharing between tensors.
class CpuAllocator final : public Allocator {
 public:
  void* allocate(size_t nbytes) override {
    if (nbytes == 0) return nullptr;
    size_t rounded = (nbytes + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, rounded);
    if (!p) COHORT_THROW(Error, "out of CPU memory allocating ", nbytes, " bytes");
    return p;
  }
  void deallocate(void* ptr, size_t) override { std::free(ptr); }
};

Allocator*& slot(DeviceType type) {
  static Allocator* slots[2] = {nullptr, nullptr};
  return slots[static_cast<int>(type)];
}

}  // namespace

Allocator& allocator_for(Device device) {
  static CpuAllocator cpu;
  if (device.is_cpu()) return cpu;
  Allocator* a = slot(device.type);
  if (!a)
    COHORT_THROW(Error, "no allocator for device ", device.str(),
                 ": this build has no CUDA support");
  return *a;
}

void register_allocator(DeviceType type, Allocator* allocator) { slot(type) = allocator; }

StorageImpl::StorageImpl(size_t nbytes, Device device)
    : nbytes_(nbytes), device_(device), owned_(true) {
  data_ = allocator_for(device).allocate(nbytes);
}

StorageImpl::StorageImpl(void* data, size_t nbytes, Device device,
                         std::function<void(void*)> deleter)
    : data_(data), nbytes_(nbytes), device_(device), deleter_(std::move(deleter)) {}

StorageImpl::~StorageImpl() {
  if (owned_) {
    allocator_for(device_).deallocate(data_, nbytes_);
  } else if (deleter_) {
    deleter_(data_);
  }
}

}  // namespace cohort::core
