// Intra-op parallelism of CPU kernels (today: the BLAS). The trainer's `threads` key sets it.
#pragma once

namespace cohort::core {

// Cores this process may run on (its CPU affinity), at least 1.
int available_cores();
void set_num_threads(int n);
int get_num_threads();

}  // namespace cohort::core
