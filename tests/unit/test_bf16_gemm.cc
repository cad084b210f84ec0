// The CPU's bfloat16 GEMM (precision: bf16 on AVX512-BF16 CPUs) against a float64 product of the
// same bfloat16-rounded operands: every shape edge (1 row, odd K, a partial panel), both
// transposes, alpha and beta. The tolerance is float32 accumulation's: K roundings of the running
// sum, 2^-24 each, bounded by the sum of |a||b|.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "core/ops/cpu/bf16_gemm.h"
#include "core/tensor/dtype.h"

namespace cohort::core::cpu {
namespace {

float round_bf16(float x) { return static_cast<float>(BFloat16(x)); }

TEST(Bf16Gemm, MatchesTheRoundedOperandsProductForEveryShapeAndLayout) {
  if (!bf16_gemm_supported()) GTEST_SKIP() << "this CPU has no AVX512-BF16";
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-2, 2);
  for (int64_t m : {1, 5, 6, 13}) {
    for (int64_t n : {1, 16, 31, 33, 70}) {
      for (int64_t k : {1, 2, 7, 64, 600}) {
        for (int t = 0; t < 4; ++t) {
          const bool ta = t & 1, tb = t & 2;
          const float alpha = t == 3 ? 0.5f : 1.0f, beta = t >= 2 ? 2.0f : 0.0f;
          const int64_t lda = ta ? m + 3 : k + 1, ldb = tb ? k + 2 : n + 5, ldc = n + 4;
          std::vector<float> a((ta ? k : m) * lda), b((tb ? n : k) * ldb), c(m * ldc);
          for (auto& x : a) x = u(rng);
          for (auto& x : b) x = u(rng);
          for (auto& x : c) x = u(rng);
          std::vector<float> out = c;
          bf16_gemm(ta, tb, m, n, k, alpha, a.data(), lda, b.data(), ldb, beta, out.data(), ldc);
          for (int64_t i = 0; i < m; ++i)
            for (int64_t j = 0; j < n; ++j) {
              double sum = 0, bound = 0;
              for (int64_t q = 0; q < k; ++q) {
                const double x = round_bf16(ta ? a[q * lda + i] : a[i * lda + q]);
                const double y = round_bf16(tb ? b[j * ldb + q] : b[q * ldb + j]);
                sum += x * y;
                bound += std::abs(x * y);
              }
              const double want = alpha * sum + beta * c[i * ldc + j];
              const double tol =
                  (static_cast<double>(k) + 4) * std::ldexp(1.0, -24) *
                  (std::abs(alpha) * bound + std::abs(beta * c[i * ldc + j]) + 1e-30);
              ASSERT_NEAR(out[i * ldc + j], want, tol)
                  << "m " << m << " n " << n << " k " << k << " ta " << ta << " tb " << tb << " at "
                  << i << "," << j;
            }
          // Nothing outside the n columns of C moved.
          for (int64_t i = 0; i < m; ++i)
            for (int64_t j = n; j < ldc; ++j) ASSERT_EQ(out[i * ldc + j], c[i * ldc + j]);
        }
      }
    }
  }
}

}  // namespace
}  // namespace cohort::core::cpu
