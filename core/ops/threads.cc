#include "core/util/threads.h"

#include <sched.h>

#include <thread>

#include "core/ops/cpu/blas.h"

namespace cohort::core {
namespace {
int g_threads = 0;
}

int available_cores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

void set_num_threads(int n) {
  g_threads = n > 0 ? n : available_cores();
  cpu::set_blas_threads(g_threads);
}

int get_num_threads() { return g_threads > 0 ? g_threads : available_cores(); }

}  // namespace cohort::core
