// The CPU BLAS, loaded at first use. Loading late lets Cohort choose OpenBLAS's kernels for the CPU
// (OpenBLAS 0.3.21 takes AVX-512 AMD CPUs for Haswell and runs half as fast) before the library
// initialises, so users never need OPENBLAS_CORETYPE. Without an OpenBLAS a portable GEMM is used.
#pragma once

#include <cstdint>
#include <string>

namespace cohort::core::cpu {

struct BlasInfo {
  std::string library;   // path loaded, or "builtin"
  std::string coretype;  // OPENBLAS_CORETYPE in force ("" when OpenBLAS chose by itself)
};

const BlasInfo& blas_info();
// Row-major GEMM: C = alpha op(A) op(B) + beta C.
void sgemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
           int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);
void dgemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const double* a,
           int64_t lda, const double* b, int64_t ldb, double beta, double* c, int64_t ldc);
// Intra-op threads for BLAS calls.
void set_blas_threads(int n);

}  // namespace cohort::core::cpu
