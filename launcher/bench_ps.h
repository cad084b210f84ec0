// `cohort bench ps CONFIG`: each worker of a parameter-server job (cohort launch --ps-servers)
// pushes its model's gradients and pulls the parameters `iters` times and reports the time of a
// push plus pull, the bytes each moved and the rate; rank 0 prints one summary line per rank.
// The gradients lie where backward leaves them in training: a linear layer's, of a tensor a server
// on this node holds whole, in that server's shared memory (nothing to copy in to push them).
// scripts/bench/ps.sh sets it beside an all-reduce of the same bytes and beside DDP training.
#pragma once

#include <string>
#include <vector>

namespace cohort::launcher {

struct BenchPsOptions {
  std::string config;
  std::vector<std::string> overrides;
  int iters = 50, warmup = 5;
  // Gradients start in tensors of their own and are copied in, as for layers whose gradients
  // backward cannot write in place; by default they lie where backward leaves them in training.
  bool copy_gradients = false;
};

int bench_ps(const BenchPsOptions& o);

}  // namespace cohort::launcher
