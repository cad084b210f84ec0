// CPU-only builds (COHORT_USE_CUDA=OFF) link this instead of cuda_device.cc.
#include "core/tensor/cuda/cuda_device.h"
#include "core/util/error.h"

namespace cohort::core::cuda {

namespace {
constexpr const char* kNoCuda =
    "this build of cohort has no CUDA (COHORT_USE_CUDA=OFF); rebuild on a machine with the CUDA "
    "Toolkit, or use device: cpu";
}

DeviceGuard::DeviceGuard(int) { COHORT_THROW(ConfigError, kNoCuda); }
DeviceGuard::~DeviceGuard() = default;
int device_count() { return 0; }
std::string unavailable_reason() { return kNoCuda; }
std::string device_name(int) { COHORT_THROW(ConfigError, kNoCuda); }
Allocator& allocator(int) { COHORT_THROW(ConfigError, kNoCuda); }
// Queries and settings about device memory and math stay callable (a trainer logs them, a user's
// code may set TF32) and truthfully report that there is none: no device memory, nothing queued
// to wait for, no TF32. Anything that would need a GPU throws ConfigError above.
size_t cached_bytes() { return 0; }
void release_cache() {}
MemoryStats memory_stats() { return {}; }
void reset_peak_memory() {}
void* current_stream(int) { return nullptr; }
void synchronize() {}
bool allow_tf32() { return false; }
void set_allow_tf32(bool) {}
void copy_bytes(void*, Device, const void*, Device, size_t) { COHORT_THROW(ConfigError, kNoCuda); }

}  // namespace cohort::core::cuda
