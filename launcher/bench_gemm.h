// `cohort bench gemm`: the CPU's GEMM rate in GFLOP/s on training shapes, float32 (OpenBLAS's
// sgemm) against bfloat16 operands (Cohort's AVX512-BF16 kernel, precision: bf16), each timed for
// at least half a second after a warm-up, with the ratio.
#pragma once

namespace cohort::launcher {

int bench_gemm();

}  // namespace cohort::launcher
