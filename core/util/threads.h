// Intra-op parallelism of CPU kernels: the BLAS's threads and Cohort's own parallel_for. The
// trainer's `threads` key sets both.
#pragma once

#include <cstdint>
#include <functional>

namespace cohort::core {

// Cores this process may run on (its CPU affinity), at least 1.
int available_cores();
// Whether this process runs on CPUs of its own, not shared with the other ranks of its node:
// `cohort launch` says so (COHORT_CPU_BIND, "none" when it did not bind); otherwise (mpirun, srun,
// taskset) an affinity narrower than the machine's online CPUs is taken for a binding.
bool bound_to_own_cpus();
void set_num_threads(int n);
int get_num_threads();

// Runs fn(begin, end) over consecutive ranges covering [0, n), on up to get_num_threads()
// threads of which the caller is one, and returns when all are done (rethrowing the first
// exception). Ranges hold at least `grain` items; with fewer than two grains of work, one thread,
// or a call from inside another parallel_for (or while one runs elsewhere), fn(0, n) runs inline.
// fn must write disjoint outputs per item, so results do not depend on the thread count.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace cohort::core
