// GEMM on CUDA tensors through cuBLAS. Our matrices are row-major and cuBLAS's column-major, so
// C = op(A) op(B) is computed as C^T = op(B)^T op(A)^T: the same memory, operands swapped.
// float32 runs on TF32 tensor cores unless cuda::set_allow_tf32(false); bfloat16 and float16
// accumulate in float32.
#include <cublas_v2.h>

#include <map>
#include <mutex>

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
  // An empty inner dimension leaves C = beta C; cuBLAS handles k = 0 as that.
  check_cublas(
      cublasGemmStridedBatchedEx(
          h, op_b, op_a, static_cast<int>(g.n), static_cast<int>(g.m), static_cast<int>(g.k), alpha,
          b.raw_data(), type, static_cast<int>(g.ldb), g.stride_b, a.raw_data(), type,
          static_cast<int>(g.lda), g.stride_a, beta, c.raw_data(), type, static_cast<int>(g.ldc),
          g.stride_c, static_cast<int>(g.batch), compute, CUBLAS_GEMM_DEFAULT),
      "cublasGemmStridedBatchedEx");
}

}  // namespace cohort::core::cuda
