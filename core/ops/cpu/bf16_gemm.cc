// The bfloat16 GEMM: B is packed into panels of 32 columns holding bfloat16 pairs (k, k+1) per
// 32-bit lane, A into rows of such pairs, and a 6x32 micro-kernel runs vdpbf16ps over blocks of
// K that keep a panel's block in L1. Panels are shared out over the threads.
#include "core/ops/cpu/bf16_gemm.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "core/tensor/dtype.h"
#include "core/util/error.h"
#include "core/util/threads.h"

namespace cohort::core::cpu {
namespace {

std::atomic<bool> g_enabled{false};

constexpr int64_t kMr = 6, kNr = 32;
constexpr int64_t kKcPairs = 256;  // 512 values of K per block: a 32-column panel block is 32 KB

inline uint32_t pair(float lo, float hi) {
  return static_cast<uint32_t>(BFloat16(lo).bits) | (static_cast<uint32_t>(BFloat16(hi).bits) << 16);
}

template <int MR>
__attribute__((target("avx512f,avx512bf16")))
void micro_kernel(const uint32_t* ap, int64_t a_stride, const uint32_t* bp, int64_t pairs, float* c,
                  int64_t ldc, __mmask16 m0, __mmask16 m1, bool first, float alpha, float beta) {
  __m512 acc[MR][2];
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  for (int64_t kk = 0; kk < pairs; ++kk) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(bp + kk * kNr);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(bp + kk * kNr + 16);
    for (int r = 0; r < MR; ++r) {
      const __m512bh a = (__m512bh)_mm512_set1_epi32(static_cast<int>(ap[r * a_stride + kk]));
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], a, b0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], a, b1);
    }
  }
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
  for (int r = 0; r < MR; ++r) {
    float* row = c + r * ldc;
    for (int h = 0; h < 2; ++h) {
      const __mmask16 mask = h == 0 ? m0 : m1;
      if (!mask) continue;
      __m512 old = _mm512_maskz_loadu_ps(mask, row + 16 * h);
      // The first block of K brings beta C in; later blocks add to what earlier ones stored.
      __m512 v = first ? (beta == 0.0f ? _mm512_mul_ps(va, acc[r][h])
                                       : _mm512_fmadd_ps(va, acc[r][h], _mm512_mul_ps(vb, old)))
                       : _mm512_fmadd_ps(va, acc[r][h], old);
      _mm512_mask_storeu_ps(row + 16 * h, mask, v);
    }
  }
}

using Kernel = void (*)(const uint32_t*, int64_t, const uint32_t*, int64_t, float*, int64_t,
                        __mmask16, __mmask16, bool, float, float);
const Kernel kKernels[kMr + 1] = {nullptr,          micro_kernel<1>, micro_kernel<2>,
                                  micro_kernel<3>, micro_kernel<4>, micro_kernel<5>,
                                  micro_kernel<6>};

}  // namespace

bool bf16_gemm_supported() {
  static const bool ok = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
  }();
  return ok;
}

void set_bf16_gemm(bool on) {
  COHORT_CHECK(!on || bf16_gemm_supported(),
               "bfloat16 GEMMs on the CPU need AVX512-BF16, which this CPU does not have");
  g_enabled.store(on);
}

bool bf16_gemm_enabled() { return g_enabled.load(std::memory_order_relaxed); }

void bf16_gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
               int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[i * ldc + j];
    return;
  }
  const int64_t kp = (k + 1) / 2;  // pairs, K padded with a zero
  auto A = [&](int64_t i, int64_t kk) { return kk < k ? (ta ? a[kk * lda + i] : a[i * lda + kk]) : 0.0f; };
  auto B = [&](int64_t kk, int64_t j) { return kk < k ? (tb ? b[j * ldb + kk] : b[kk * ldb + j]) : 0.0f; };
  // A as rows of pairs [m][kp]; B as panels [n / 32][kp][32], zero beyond n.
  std::vector<uint32_t> ap(static_cast<size_t>(m * kp));
  const int64_t panels = (n + kNr - 1) / kNr;
  std::vector<uint32_t> bp(static_cast<size_t>(panels * kp * kNr));
  parallel_for(m, 16, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i)
      for (int64_t q = 0; q < kp; ++q) ap[static_cast<size_t>(i * kp + q)] = pair(A(i, 2 * q), A(i, 2 * q + 1));
  });
  parallel_for(panels, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t p = lo; p < hi; ++p)
      for (int64_t q = 0; q < kp; ++q)
        for (int64_t jj = 0; jj < kNr; ++jj) {
          const int64_t j = p * kNr + jj;
          bp[static_cast<size_t>((p * kp + q) * kNr + jj)] =
              j < n ? pair(B(2 * q, j), B(2 * q + 1, j)) : 0u;
        }
  });
  // Each thread owns whole panels (columns of C): outputs are disjoint, the sum order fixed.
  parallel_for(panels, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t p = lo; p < hi; ++p) {
      const int64_t cols = std::min(kNr, n - p * kNr);
      const __mmask16 m0 = cols >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << cols) - 1);
      const __mmask16 m1 = cols <= 16 ? 0 : cols >= 32 ? 0xFFFF : static_cast<__mmask16>((1u << (cols - 16)) - 1);
      for (int64_t q0 = 0; q0 < kp; q0 += kKcPairs) {
        const int64_t pairs = std::min(kKcPairs, kp - q0);
        const uint32_t* panel = bp.data() + (p * kp + q0) * kNr;
        for (int64_t i = 0; i < m; i += kMr) {
          const int64_t rows = std::min(kMr, m - i);
          kKernels[rows](ap.data() + i * kp + q0, kp, panel, pairs, c + i * ldc + p * kNr, ldc, m0,
                         m1, q0 == 0, alpha, beta);
        }
      }
    }
  });
}

}  // namespace cohort::core::cpu
