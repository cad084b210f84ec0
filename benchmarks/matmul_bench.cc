// Cohort's matmul against OpenBLAS's cblas_sgemm called directly, at the MLP's shapes (forward and
// both backward products). Prints GFLOP/s of each and the ratio. Run one-threaded for the quality
// bar:
//   OPENBLAS_NUM_THREADS=1 taskset -c 0 build/benchmarks/cohort_bench_matmul
#include <cblas.h>

#include <chrono>
#include <cstdio>
#include <vector>

#include "core/ops/cpu/blas.h"
#include "core/ops/ops.h"
#include "core/util/threads.h"

using namespace cohort::core;

namespace {
template <typename F>
double best_seconds(F&& f, int reps) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best,
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}
}  // namespace

int main() {
  set_num_threads(1);
  openblas_set_num_threads(1);
  struct Shape3 {
    const char* what;
    int m, k, n;
    bool ta, tb;
  } shapes[] = {{"x@W1^T  128x784 * 784x512", 128, 784, 512, false, true},
                {"g@W1    128x512 * 512x784", 128, 512, 784, false, false},
                {"g^T@x   512x128 * 128x784", 512, 128, 784, true, false},
                {"x@W2^T  128x512 * 512x512", 128, 512, 512, false, true}};
  std::printf("blas: %s coretype=%s\n", cpu::blas_info().library.c_str(),
              cpu::blas_info().coretype.empty() ? "(auto)" : cpu::blas_info().coretype.c_str());
  std::printf("%-28s %12s %12s %8s\n", "shape", "cohort_GF/s", "openblas_GF/s", "ratio");
  double worst = 1e9;
  for (auto& s : shapes) {
    Generator g(0);
    Tensor a = s.ta ? randn({s.k, s.m}, {}, &g) : randn({s.m, s.k}, {}, &g);
    Tensor b = s.tb ? randn({s.n, s.k}, {}, &g) : randn({s.k, s.n}, {}, &g);
    Tensor av = s.ta ? a.t() : a, bv = s.tb ? b.t() : b;
    std::vector<float> c(static_cast<size_t>(s.m) * s.n);
    const int reps = 50;
    auto ours = [&] {
      for (int i = 0; i < 10; ++i) {
        Tensor r = matmul(av, bv);
        (void)r;
      }
    };
    auto direct = [&] {
      for (int i = 0; i < 10; ++i)
        cblas_sgemm(CblasRowMajor, s.ta ? CblasTrans : CblasNoTrans,
                    s.tb ? CblasTrans : CblasNoTrans, s.m, s.n, s.k, 1.0f, a.data_ptr<float>(),
                    s.ta ? s.m : s.k, b.data_ptr<float>(), s.tb ? s.k : s.n, 0.0f, c.data(), s.n);
    };
    ours();
    direct();
    double to = best_seconds(ours, reps) / 10, td = best_seconds(direct, reps) / 10;
    double flops = 2.0 * s.m * s.n * s.k;
    std::printf("%-28s %12.1f %12.1f %8.2f\n", s.what, flops / to / 1e9, flops / td / 1e9, td / to);
    worst = std::min(worst, td / to);
  }
  std::printf("matmul ratio (worst shape): %.2f (goal >= 0.85)\n", worst);
  return 0;
}
