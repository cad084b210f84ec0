// GEMM on CUDA tensors through cuBLAS. Our matrices are row-major and cuBLAS's column-major, so
// C = op(A) op(B) is computed as C^T = op(B)^T op(A)^T: the same memory, operands swapped.
// float32 runs on TF32 tensor cores unless cuda::set_allow_tf32(false); bfloat16 and float16
// accumulate in float32.
#include <cublas_v2.h>

#include <map>
#include <mutex>
#include <vector>

#include "core/ops/cuda/common.cuh"
#include "core/ops/cuda/cuda_backend.h"

namespace cohort::core::cuda {
namespace {

void check_cublas(cublasStatus_t rc, const char* what) {
  if (rc != CUBLAS_STATUS_SUCCESS)
    COHORT_THROW(CudaError, what, " failed: ", cublasGetStatusName(rc), " (",
                 cublasGetStatusString(rc), ")");
}

// One handle per device, created on first use and kept for the process (a handle costs
// milliseconds to create and holds the device's cuBLAS workspace).
cublasHandle_t handle_for(int device) {
  static std::mutex mu;
  static auto* handles = new std::map<int, cublasHandle_t>();
  std::lock_guard<std::mutex> lock(mu);
  auto it = handles->find(device);
  if (it != handles->end()) return it->second;
  DeviceGuard guard(device);
  cublasHandle_t h = nullptr;
  check_cublas(cublasCreate(&h), "cublasCreate");
  handles->emplace(device, h);
  return h;
}

// A row-major matrix as cuBLAS will read it: its first element and the distance between rows.
struct Operand {
  const void* ptr;
  int64_t ld;
};

// cuBLAS's fast Hopper kernels want every leading dimension and the sizes n and k in whole
// multiples of 16 bytes; otherwise (GPT-2's vocabulary of 50257 in bfloat16) it falls back to
// kernels several times slower. A large product is then computed on padded copies: `rows` x
// `cols` of `o` placed in a zeroed `rows_pad` x `cols_pad` buffer (zeros in the padding add
// nothing to the product). The pitched copies cost a small fraction of the product. `keep` holds
// the buffers until the GEMM is queued; the caching allocator orders their reuse after it.
Operand padded(const Operand& o, int64_t rows, int64_t cols, int64_t rows_pad, int64_t cols_pad,
               int64_t es, const Tensor& like, cudaStream_t stream, std::vector<Tensor>& keep,
               bool copy) {
  if (rows_pad == rows && cols_pad == cols && (o.ld * es) % 16 == 0) return o;
  keep.push_back(empty({rows_pad * cols_pad}, like.options()));
  void* p = keep.back().raw_data();
  if (cols_pad > cols || rows_pad > rows)
    check_cuda(cudaMemsetAsync(p, 0, static_cast<size_t>(rows_pad * cols_pad * es), stream),
               "cudaMemsetAsync");
  if (copy)
    check_cuda(cudaMemcpy2DAsync(p, cols_pad * es, o.ptr, o.ld * es, cols * es, rows,
                                 cudaMemcpyDeviceToDevice, stream),
               "cudaMemcpy2DAsync");
  return {p, cols_pad};
}

}  // namespace

void CudaBackend::gemm(const GemmArgs& g, const Tensor& a, const Tensor& b, const Tensor& c) {
  if (g.m == 0 || g.n == 0 || g.batch == 0) return;
  const int device = c.device().index;
  DeviceGuard guard(device);
  cublasHandle_t h = handle_for(device);
  check_cublas(cublasSetStream(h, stream_of(c)), "cublasSetStream");
  const cublasOperation_t op_a = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_b = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  cudaDataType_t type;
  cublasComputeType_t compute;
  const float alpha_f = static_cast<float>(g.alpha), beta_f = static_cast<float>(g.beta);
  const double alpha_d = g.alpha, beta_d = g.beta;
  const void* alpha = &alpha_f;
  const void* beta = &beta_f;
  switch (c.dtype()) {
    case DType::kFloat32:
      type = CUDA_R_32F;
      compute = allow_tf32() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
      break;
    case DType::kFloat64:
      type = CUDA_R_64F;
      compute = CUBLAS_COMPUTE_64F;
      alpha = &alpha_d;
      beta = &beta_d;
      break;
    case DType::kBFloat16:
      type = CUDA_R_16BF;
      compute = CUBLAS_COMPUTE_32F;
      break;
    case DType::kFloat16:
      type = CUDA_R_16F;
      compute = CUBLAS_COMPUTE_32F;
      break;
    default:
      COHORT_THROW(InvalidArgument, "matmul on CUDA needs a floating-point dtype, got ",
                   dtype_name(c.dtype()));
  }
  Operand A{a.raw_data(), g.lda}, B{b.raw_data(), g.ldb}, C{c.raw_data(), g.ldc};
  int64_t n = g.n, k = g.k;
  std::vector<Tensor> keep;
  const auto es = static_cast<int64_t>(c.element_size());
  cudaStream_t stream = stream_of(c);
  const int64_t per = 16 / es;
  auto round_up = [per](int64_t v) { return (v + per - 1) / per * per; };
  const bool big = g.batch == 1 &&
                   static_cast<double>(g.m) * static_cast<double>(g.n) * static_cast<double>(g.k) >=
                       static_cast<double>(1 << 28);
  const bool misaligned = n % per != 0 || k % per != 0 || (g.lda * es) % 16 != 0 ||
                          (g.ldb * es) % 16 != 0 || (g.ldc * es) % 16 != 0;
  if (big && misaligned) {
    n = round_up(g.n);
    k = round_up(g.k);
    // A is m x k (k x m when transposed), B k x n (n x k): k and n grow, m stays.
    A = g.trans_a ? padded(A, g.k, g.m, k, round_up(g.m), es, c, stream, keep, true)
                  : padded(A, g.m, g.k, g.m, k, es, c, stream, keep, true);
    B = g.trans_b ? padded(B, g.n, g.k, n, k, es, c, stream, keep, true)
                  : padded(B, g.k, g.n, k, n, es, c, stream, keep, true);
    C = padded(C, g.m, g.n, g.m, n, es, c, stream, keep, g.beta != 0);
  }
  // An empty inner dimension leaves C = beta C; cuBLAS handles k = 0 as that.
  check_cublas(
      cublasGemmStridedBatchedEx(h, op_b, op_a, static_cast<int>(n), static_cast<int>(g.m),
                                 static_cast<int>(k), alpha, B.ptr, type, static_cast<int>(B.ld),
                                 g.stride_b, A.ptr, type, static_cast<int>(A.ld), g.stride_a, beta,
                                 const_cast<void*>(C.ptr), type, static_cast<int>(C.ld), g.stride_c,
                                 static_cast<int>(g.batch), compute, CUBLAS_GEMM_DEFAULT),
      "cublasGemmStridedBatchedEx");
  if (C.ptr != c.raw_data())
    check_cuda(cudaMemcpy2DAsync(c.raw_data(), g.ldc * es, C.ptr, C.ld * es, g.n * es, g.m,
                                 cudaMemcpyDeviceToDevice, stream),
               "cudaMemcpy2DAsync");
}

}  // namespace cohort::core::cuda
