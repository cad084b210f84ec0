// precision: bf16 on the CPU. With AVX512-BF16 (Intel Cooper Lake and later, AMD Zen 4 and
// later), every float32 GEMM of the process (matmul, linear, convolution; forward and backward)
// can round its operands to bfloat16 and multiply them with vdpbf16ps, accumulating in float32:
// the arithmetic of a bfloat16 matmul under autocast, at twice the multiply rate of float32 FMA.
// Activations, gradients and weights stay float32.
#pragma once

#include <cstdint>

namespace cohort::core::cpu {

// Whether this CPU has AVX512-BF16 (and this build the kernel for it).
bool bf16_gemm_supported();
// Turns bfloat16 GEMMs on or off for the whole process (off: OpenBLAS's float32 sgemm).
void set_bf16_gemm(bool on);
bool bf16_gemm_enabled();

// Row-major C = alpha op(A) op(B) + beta C with A and B rounded to bfloat16 (to nearest, ties to
// even) and float32 accumulation. Requires bf16_gemm_supported().
void bf16_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
               const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
               int64_t ldc);

}  // namespace cohort::core::cpu
