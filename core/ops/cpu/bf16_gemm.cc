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

template <int MR>
__attribute__((target("avx512f,avx512bf16"))) void micro_kernel(
    const uint32_t* ap, int64_t a_stride, const uint32_t* bp, int64_t pairs, float* c, int64_t ldc,
    __mmask16 m0, __mmask16 m1, bool first, float alpha, float beta) {
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
const Kernel kKernels[kMr + 1] = {nullptr,         micro_kernel<1>, micro_kernel<2>,
                                  micro_kernel<3>, micro_kernel<4>, micro_kernel<5>,
                                  micro_kernel<6>};

// Interleaves the 16 words of each half of v: [x0..x15 | y0..y15] -> x0 y0 x1 y1 ... x15 y15,
// so that 32-bit lane j holds the pair (x_j, y_j).
__attribute__((target("avx512f,avx512bw"))) inline __m512i interleave_halves(__m512i v) {
  const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                       23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  return _mm512_permutexvar_epi16(idx, v);
}

inline __mmask16 first(int64_t count) {
  return count >= 16 ? static_cast<__mmask16>(0xFFFF)
                     : static_cast<__mmask16>((1u << std::max<int64_t>(count, 0)) - 1);
}

// Rows [lo, hi) of op(A) as bfloat16 pairs: ap[i * kp + q] = (A[i][2q], A[i][2q + 1]).
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void pack_a(bool ta, const float* a,
                                                                   int64_t lda, int64_t k,
                                                                   int64_t kp, int64_t lo,
                                                                   int64_t hi, uint32_t* ap) {
  if (!ta) {
    // A row's K values are contiguous: 32 floats become 16 pairs in one conversion.
    for (int64_t i = lo; i < hi; ++i) {
      const float* row = a + i * lda;
      for (int64_t q = 0; q < kp; q += 16) {
        const int64_t k0 = 2 * q;
        const __m512 x0 = _mm512_maskz_loadu_ps(first(k - k0), row + k0);
        const __m512 x1 = _mm512_maskz_loadu_ps(first(k - k0 - 16), row + k0 + 16);
        const __m512i v = (__m512i)_mm512_cvtne2ps_pbh(x1, x0);
        _mm512_mask_storeu_epi32(ap + i * kp + q, first(kp - q), v);
      }
    }
    return;
  }
  // op(A) = A^T: 16 rows i at a time from two rows of the stored matrix.
  for (int64_t i0 = lo; i0 < hi; i0 += 16) {
    const __mmask16 rows = first(hi - i0);
    for (int64_t q = 0; q < kp; ++q) {
      const __m512 x0 = _mm512_maskz_loadu_ps(rows, a + 2 * q * lda + i0);
      const __m512 x1 = 2 * q + 1 < k ? _mm512_maskz_loadu_ps(rows, a + (2 * q + 1) * lda + i0)
                                      : _mm512_setzero_ps();
      alignas(64) uint32_t lane[16];
      _mm512_store_si512(lane, interleave_halves((__m512i)_mm512_cvtne2ps_pbh(x1, x0)));
      for (int64_t r = 0; r < std::min<int64_t>(16, hi - i0); ++r) ap[(i0 + r) * kp + q] = lane[r];
    }
  }
}

// Panels [lo, hi) of op(B): bp[(p * kp + q) * 32 + jj] = (B[2q][j], B[2q + 1][j]), j = 32p + jj.
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void pack_b(bool tb, const float* b,
                                                                   int64_t ldb, int64_t k,
                                                                   int64_t n, int64_t kp,
                                                                   int64_t lo, int64_t hi,
                                                                   uint32_t* bp) {
  for (int64_t p = lo; p < hi; ++p) {
    const int64_t j0 = p * kNr;
    uint32_t* panel = bp + p * kp * kNr;
    if (!tb) {
      // Two rows of B, 16 columns at a time, interleaved into pairs.
      for (int64_t q = 0; q < kp; ++q) {
        const float* r0 = b + 2 * q * ldb;
        const float* r1 = r0 + ldb;
        const bool second = 2 * q + 1 < k;
        for (int h = 0; h < 2; ++h) {
          const __mmask16 cols = first(n - j0 - 16 * h);
          const __m512 x0 = _mm512_maskz_loadu_ps(cols, r0 + j0 + 16 * h);
          const __m512 x1 =
              second ? _mm512_maskz_loadu_ps(cols, r1 + j0 + 16 * h) : _mm512_setzero_ps();
          _mm512_storeu_si512(panel + q * kNr + 16 * h,
                              interleave_halves((__m512i)_mm512_cvtne2ps_pbh(x1, x0)));
        }
      }
      continue;
    }
    // op(B) = B^T: column j's K values are a contiguous row of the stored matrix.
    for (int64_t jj = 0; jj < kNr; ++jj) {
      const int64_t j = j0 + jj;
      if (j >= n) {
        for (int64_t q = 0; q < kp; ++q) panel[q * kNr + jj] = 0;
        continue;
      }
      const float* row = b + j * ldb;
      for (int64_t q = 0; q < kp; q += 16) {
        const int64_t k0 = 2 * q;
        const __m512 x0 = _mm512_maskz_loadu_ps(first(k - k0), row + k0);
        const __m512 x1 = _mm512_maskz_loadu_ps(first(k - k0 - 16), row + k0 + 16);
        alignas(64) uint32_t lane[16];
        _mm512_store_si512(lane, (__m512i)_mm512_cvtne2ps_pbh(x1, x0));
        for (int64_t t = 0; t < std::min<int64_t>(16, kp - q); ++t)
          panel[(q + t) * kNr + jj] = lane[t];
      }
    }
  }
}

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
  // A as rows of pairs [m][kp]; B as panels [n / 32][kp][32], zero beyond n. The buffers stay
  // with the thread between calls: training repeats the same shapes.
  const int64_t panels = (n + kNr - 1) / kNr;
  thread_local std::vector<uint32_t> ap_buf, bp_buf;
  if (ap_buf.size() < static_cast<size_t>(m * kp)) ap_buf.resize(static_cast<size_t>(m * kp));
  if (bp_buf.size() < static_cast<size_t>(panels * kp * kNr))
    bp_buf.resize(static_cast<size_t>(panels * kp * kNr));
  uint32_t* ap = ap_buf.data();
  uint32_t* bp = bp_buf.data();
  // Small products (Winograd's sixteen per convolution) run on the calling thread: handing
  // them to the pool costs more than they do.
  const bool small = static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k) <
                     static_cast<double>(1 << 24);
  if (small) {
    pack_a(ta, a, lda, k, kp, 0, m, ap);
  } else {
    parallel_for(m, 64, [&](int64_t lo, int64_t hi) { pack_a(ta, a, lda, k, kp, lo, hi, ap); });
  }
  // Each thread owns whole panels (columns of C), packs them and multiplies them: outputs are
  // disjoint and the sum order fixed, whatever the thread count.
  auto panels_of_c = [&](int64_t lo, int64_t hi) {
    for (int64_t p = lo; p < hi; ++p) {
      pack_b(tb, b, ldb, k, n, kp, p, p + 1, bp);
      const int64_t cols = std::min(kNr, n - p * kNr);
      const __mmask16 m0 = cols >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << cols) - 1);
      const __mmask16 m1 = cols <= 16   ? 0
                           : cols >= 32 ? 0xFFFF
                                        : static_cast<__mmask16>((1u << (cols - 16)) - 1);
      for (int64_t q0 = 0; q0 < kp; q0 += kKcPairs) {
        const int64_t pairs = std::min(kKcPairs, kp - q0);
        const uint32_t* panel = bp + (p * kp + q0) * kNr;
        for (int64_t i = 0; i < m; i += kMr) {
          const int64_t rows = std::min(kMr, m - i);
          kKernels[rows](ap + i * kp + q0, kp, panel, pairs, c + i * ldc + p * kNr, ldc, m0, m1,
                         q0 == 0, alpha, beta);
        }
      }
    }
  };
  if (small) {
    panels_of_c(0, panels);
  } else {
    parallel_for(panels, 1, panels_of_c);
  }
}

}  // namespace cohort::core::cpu
