// Times core::cpu::sgemm with bfloat16 GEMMs off and on.
#include "launcher/bench_gemm.h"

#include <chrono>
#include <cstdio>
#include <vector>

#include "core/ops/cpu/bf16_gemm.h"
#include "core/ops/cpu/blas.h"
#include "core/util/threads.h"

namespace cohort::launcher {

int bench_gemm() {
  struct Shape {
    const char* what;
    int64_t m, n, k;
    bool ta, tb;
  };
  // The CNN's fc1 forward and its weight gradient, a conv's im2col product, and a square one.
  const Shape shapes[] = {
      {"square", 1024, 1024, 1024, false, false},
      {"linear 3136->128, batch 64", 64, 128, 3136, false, true},
      {"its weight gradient", 128, 3136, 64, true, false},
      {"conv 32->64 3x3 at 14x14, batch 64 (im2col)", 12544, 64, 288, false, true},
      {"the same conv as Winograd, one of 16", 64, 3136, 32, false, false},
      {"conv 1->32 3x3 at 28x28, batch 64 (im2col)", 32, 50176, 9, false, false}};
  const bool bf16 = core::cpu::bf16_gemm_supported();
  std::printf("cohort bench gemm: %d threads, AVX512-BF16 %s\n", core::get_num_threads(),
              bf16 ? "yes" : "no");
  std::printf("%-46s %12s %12s %8s\n", "shape (m x n x k)", "fp32 GF/s", "bf16 GF/s", "ratio");
  for (const Shape& s : shapes) {
    std::vector<float> a(static_cast<size_t>(s.m * s.k)), b(static_cast<size_t>(s.k * s.n)),
        c(static_cast<size_t>(s.m * s.n));
    for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i % 97) / 97.0f - 0.5f;
    for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<float>(i % 89) / 89.0f - 0.5f;
    double rate[2] = {0, 0};
    for (int mode = 0; mode < (bf16 ? 2 : 1); ++mode) {
      core::cpu::set_bf16_gemm(mode == 1);
      auto once = [&] {
        core::cpu::sgemm(s.ta, s.tb, s.m, s.n, s.k, 1.0f, a.data(), s.ta ? s.m : s.k, b.data(),
                         s.tb ? s.k : s.n, 0.0f, c.data(), s.n);
      };
      once();
      int64_t reps = 0;
      const auto t0 = std::chrono::steady_clock::now();
      double el = 0;
      do {
        once();
        ++reps;
        el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      } while (el < 0.5);
      rate[mode] = 2.0 * static_cast<double>(s.m * s.n * s.k * reps) / el / 1e9;
    }
    core::cpu::set_bf16_gemm(false);
    char label[96];
    std::snprintf(label, sizeof label, "%s %lldx%lldx%lld", s.what, static_cast<long long>(s.m),
                  static_cast<long long>(s.n), static_cast<long long>(s.k));
    if (bf16)
      std::printf("%-46s %12.1f %12.1f %7.2fx\n", label, rate[0], rate[1], rate[1] / rate[0]);
    else
      std::printf("%-46s %12.1f %12s %8s\n", label, rate[0], "-", "-");
  }
  return 0;
}

}  // namespace cohort::launcher
