// Core's side of the CUDA device layer: every function forwards to the CUDA module
// (libcohort_cuda.so), opened on first use. The NVIDIA driver is looked for first: without it no
// GPU can be used, and a CPU job (device: auto on a node without GPUs) then never maps the CUDA
// libraries at all.
#include <dlfcn.h>

#include <atomic>
#include <cstring>

#include "cohort/config.h"
#include "core/tensor/cuda/cuda_runtime.h"
#include "core/util/env.h"
#include "core/util/error.h"
#include "core/util/module.h"

namespace cohort::core::cuda {
namespace {

struct Loaded {
  Runtime* runtime = nullptr;
  std::string why;  // what is missing when runtime is null
};

Loaded open_runtime() {
  Loaded l;
  if (!COHORT_USE_CUDA) {
    l.why = "this build of cohort has no CUDA (it was built without the CUDA Toolkit)";
    return l;
  }
  if (!dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL)) {
    l.why = "this machine has no NVIDIA driver (libcuda.so.1 is not installed)";
    return l;
  }
  std::string why;
  const auto* entry =
      static_cast<const RuntimeEntry*>(module::open("cuda", kRuntimeEntrySymbol, false, why));
  if (!entry) {
    l.why = why;
    return l;
  }
  if (std::strcmp(entry->cohort_version, COHORT_VERSION) != 0) {
    l.why = "cohort's cuda module " + module::path("cuda") + " is from cohort " +
            entry->cohort_version + ", this is cohort " COHORT_VERSION;
    return l;
  }
  l.runtime = entry->runtime();
  return l;
}

std::atomic<Runtime*> opened{nullptr};

const Loaded& loaded() {
  static const Loaded l = [] {
    Loaded r = open_runtime();
    opened.store(r.runtime);
    return r;
  }();
  return l;
}

}  // namespace

Runtime& runtime() {
  const Loaded& l = loaded();
  if (!l.runtime) COHORT_THROW(ConfigError, "CUDA is not available: ", l.why);
  return *l.runtime;
}

Runtime* runtime_if_loaded() { return opened.load(); }

int device_count() {
  Runtime* r = loaded().runtime;
  return r ? r->device_count() : 0;
}

std::string unavailable_reason() {
  const Loaded& l = loaded();
  return l.runtime ? l.runtime->unavailable_reason() : l.why;
}

std::string device_name(int index) { return runtime().device_name(index); }
Allocator& allocator(int device) { return runtime().allocator(device); }
void* current_stream(int device) { return runtime().current_stream(device); }
void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t n) {
  runtime().copy_bytes(dst, dst_device, src, src_device, n);
}

// Queries about device memory have a truthful answer without the module (no device memory,
// nothing queued), so they never open it: a CPU job's report must not map CUDA.
size_t cached_bytes() {
  Runtime* r = runtime_if_loaded();
  return r ? r->cached_bytes() : 0;
}
void release_cache() {
  if (Runtime* r = runtime_if_loaded()) r->release_cache();
}
MemoryStats memory_stats() {
  Runtime* r = runtime_if_loaded();
  return r ? r->memory_stats() : MemoryStats{};
}
void reset_peak_memory() {
  if (Runtime* r = runtime_if_loaded()) r->reset_peak_memory();
}
void synchronize() {
  if (Runtime* r = runtime_if_loaded()) r->synchronize();
}

namespace {
std::atomic<int>& tf32_setting() {
  static std::atomic<int> v{env::flag(env::kAllowTf32, true) ? 1 : 0};
  return v;
}
}  // namespace

bool allow_tf32() { return tf32_setting().load() != 0; }
void set_allow_tf32(bool allow) { tf32_setting().store(allow ? 1 : 0); }

DeviceGuard::DeviceGuard(int device) { previous_ = runtime().set_device(device); }
DeviceGuard::~DeviceGuard() {
  if (previous_ >= 0) runtime_if_loaded()->restore_device(previous_);
}

}  // namespace cohort::core::cuda
