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

// cuBLAS's fast Hopper kernels need leading dimensions that are whole multiples of 16 bytes; with
// one that is not (GPT-2's vocabulary of 50257 in bfloat16) it falls back to kernels several
// times slower. A large operand of `rows` rows of `cols` elements is then copied into a padded
// buffer first: a pitched copy costs a small fraction of the product. `keep` holds the buffer
// until the GEMM is queued (the caching allocator orders its reuse after it).
Operand aligned(const Operand& o, int64_t rows, int64_t cols, int64_t es, Device device,
                DType dtype, cudaStream_t stream, std::vector<Tensor>& keep) {
  if ((o.ld * es) % 16 == 0 || rows <= 1) return o;
  const int64_t per = 16 / es;
  const int64_t ld = (cols + per - 1) / per * per;
  keep.push_back(empty({rows * ld}, TensorOptions(dtype).with_device(device)));
  check_cuda(cudaMemcpy2DAsync(keep.back().raw_data(), ld * es, o.ptr, o.ld * es, cols * es, rows,
                               cudaMemcpyDeviceToDevice, stream),
             "cudaMemcpy2DAsync");
  return {keep.back().raw_data(), ld};
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
  std::vector<Tensor> keep;
  const auto es = static_cast<int64_t>(c.element_size());
  cudaStream_t stream = stream_of(c);
  const bool big = g.batch == 1 &&
                   static_cast<double>(g.m) * static_cast<double>(g.n) * static_cast<double>(g.k) >=
                       static_cast<double>(1 << 28);
  if (big) {
    A = aligned(A, g.trans_a ? g.k : g.m, g.trans_a ? g.m : g.k, es, c.device(), c.dtype(), stream,
                keep);
    B = aligned(B, g.trans_b ? g.n : g.k, g.trans_b ? g.k : g.n, es, c.device(), c.dtype(), stream,
                keep);
    if ((g.ldc * es) % 16 != 0) {
      // C is written (and read when beta != 0) in a padded buffer and copied back after.
      if (g.beta != 0) {
        C = aligned(C, g.m, g.n, es, c.device(), c.dtype(), stream, keep);
      } else {
        const int64_t per = 16 / es, ld = (g.n + per - 1) / per * per;
        keep.push_back(empty({g.m * ld}, TensorOptions(c.dtype()).with_device(c.device())));
        C = {keep.back().raw_data(), ld};
      }
    }
  }
  // An empty inner dimension leaves C = beta C; cuBLAS handles k = 0 as that.
  check_cublas(
      cublasGemmStridedBatchedEx(h, op_b, op_a, static_cast<int>(g.n), static_cast<int>(g.m),
                                 static_cast<int>(g.k), alpha, B.ptr, type, static_cast<int>(B.ld),
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
