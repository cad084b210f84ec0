// Internal: the batched GEMM used by matmul, linear and conv2d (no autograd).
#pragma once

#include "core/tensor/tensor.h"

namespace cohort::core::detail {

// c[i] = alpha a[i] @ b[i] + beta c[i] for 3-D a [B|1, m, k], b [B|1, k, n] and contiguous
// c [B, m, n]. Transposed views of a and b go to BLAS as transpose flags; other layouts are copied
// first.
void batched_gemm(const Tensor& a, const Tensor& b, const Tensor& c, double beta,
                  double alpha = 1.0);

}  // namespace cohort::core::detail
