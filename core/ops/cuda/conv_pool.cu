// CUDA convolution and pooling: whole convolutions through cuDNN (float32 on TF32 tensor cores
// when allowed), im2col/col2im kernels for the generic path, and 2-D max/avg pooling. Winograd
// is a CPU algorithm (conv2d_algorithm never picks it for CUDA tensors).
#include <cudnn.h>

#include <map>
#include <mutex>

#include "core/ops/cuda/common.cuh"
#include "core/ops/cuda/cuda_backend.h"
#include "core/ops/ops.h"

namespace cohort::core::cuda {
namespace conv_kernels {

template <typename T>
__global__ void im2col_kernel(const T* img, Conv2dGeometry g, T* col) {
  const int64_t ohw = g.out_h * g.out_w, total = g.in_channels * g.kernel_h * g.kernel_w * ohw;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t pos = e % ohw, row = e / ohw;
    const int64_t oh = pos / g.out_w, ow = pos % g.out_w;
    const int64_t kj = row % g.kernel_w, ki = (row / g.kernel_w) % g.kernel_h;
    const int64_t c = row / (g.kernel_w * g.kernel_h);
    const int64_t ih = oh * g.stride_h - g.pad_h + ki * g.dilation_h;
    const int64_t iw = ow * g.stride_w - g.pad_w + kj * g.dilation_w;
    col[e] = (ih >= 0 && ih < g.in_h && iw >= 0 && iw < g.in_w)
                 ? img[(c * g.in_h + ih) * g.in_w + iw]
                 : T(0);
  }
}

// Each image element sums the columns that read it (no atomics, a deterministic order).
template <typename T>
__global__ void col2im_kernel(const T* col, Conv2dGeometry g, T* img) {
  const int64_t ohw = g.out_h * g.out_w, total = g.in_channels * g.in_h * g.in_w;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t w = e % g.in_w, h = (e / g.in_w) % g.in_h, c = e / (g.in_w * g.in_h);
    T v = 0;
    for (int64_t ki = 0; ki < g.kernel_h; ++ki) {
      const int64_t hs = h + g.pad_h - ki * g.dilation_h;
      if (hs < 0 || hs % g.stride_h) continue;
      const int64_t oh = hs / g.stride_h;
      if (oh >= g.out_h) continue;
      for (int64_t kj = 0; kj < g.kernel_w; ++kj) {
        const int64_t ws = w + g.pad_w - kj * g.dilation_w;
        if (ws < 0 || ws % g.stride_w) continue;
        const int64_t ow = ws / g.stride_w;
        if (ow >= g.out_w) continue;
        v += col[((c * g.kernel_h + ki) * g.kernel_w + kj) * ohw + oh * g.out_w + ow];
      }
    }
    img[e] = v;
  }
}

template <typename T>
__global__ void max_pool_kernel(const T* x, Pool2dGeometry g, T* y, int64_t* idx) {
  const int64_t ohw = g.out_h * g.out_w, total = g.planes * ohw;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = e / ohw, oh = (e % ohw) / g.out_w, ow = e % g.out_w;
    const T* plane = x + p * g.in_h * g.in_w;
    const int64_t h0 = ::max(oh * g.stride_h - g.pad_h, int64_t(0));
    const int64_t h1 = ::min(oh * g.stride_h - g.pad_h + g.kernel_h, g.in_h);
    const int64_t w0 = ::max(ow * g.stride_w - g.pad_w, int64_t(0));
    const int64_t w1 = ::min(ow * g.stride_w - g.pad_w + g.kernel_w, g.in_w);
    T best = plane[h0 * g.in_w + w0];
    int64_t bi = h0 * g.in_w + w0;
    for (int64_t ih = h0; ih < h1; ++ih)
      for (int64_t iw = w0; iw < w1; ++iw) {
        const T v = plane[ih * g.in_w + iw];
        if (v > best || v != v) {  // the first maximum wins; NaN always wins
          best = v;
          bi = ih * g.in_w + iw;
        }
      }
    y[e] = best;
    idx[e] = bi;
  }
}

template <typename T>
__global__ void max_pool_backward_kernel(const T* gy, const int64_t* idx, Pool2dGeometry g, T* gx) {
  const int64_t ohw = g.out_h * g.out_w, total = g.planes * ohw;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = idx[e];
    if (i >= 0) atomicAdd(gx + (e / ohw) * g.in_h * g.in_w + i, gy[e]);
  }
}

__device__ __forceinline__ int64_t pool_divisor(const Pool2dGeometry& g, int64_t oh, int64_t ow) {
  if (g.count_include_pad) return g.kernel_h * g.kernel_w;
  const int64_t h0 = oh * g.stride_h - g.pad_h, w0 = ow * g.stride_w - g.pad_w;
  const int64_t hn = ::min(h0 + g.kernel_h, g.in_h) - ::max(h0, int64_t(0));
  const int64_t wn = ::min(w0 + g.kernel_w, g.in_w) - ::max(w0, int64_t(0));
  return ::max(hn * wn, int64_t(1));
}

template <typename T>
__global__ void avg_pool_kernel(const T* x, Pool2dGeometry g, T* y) {
  const int64_t ohw = g.out_h * g.out_w, total = g.planes * ohw;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = e / ohw, oh = (e % ohw) / g.out_w, ow = e % g.out_w;
    const T* plane = x + p * g.in_h * g.in_w;
    const int64_t h0 = oh * g.stride_h - g.pad_h, w0 = ow * g.stride_w - g.pad_w;
    T s = 0;
    for (int64_t ih = ::max(h0, int64_t(0)); ih < ::min(h0 + g.kernel_h, g.in_h); ++ih)
      for (int64_t iw = ::max(w0, int64_t(0)); iw < ::min(w0 + g.kernel_w, g.in_w); ++iw)
        s += plane[ih * g.in_w + iw];
    y[e] = s / static_cast<T>(pool_divisor(g, oh, ow));
  }
}

// Each input element gathers the outputs whose windows cover it.
template <typename T>
__global__ void avg_pool_backward_kernel(const T* gy, Pool2dGeometry g, T* gx) {
  const int64_t ihw = g.in_h * g.in_w, total = g.planes * ihw;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = e / ihw, ih = (e % ihw) / g.in_w, iw = e % g.in_w;
    // Outputs oh with oh*s - pad <= ih < oh*s - pad + k.
    const int64_t oh_lo = ::max((ih + g.pad_h - g.kernel_h + g.stride_h) / g.stride_h, int64_t(0));
    const int64_t oh_hi = ::min((ih + g.pad_h) / g.stride_h, g.out_h - 1);
    const int64_t ow_lo = ::max((iw + g.pad_w - g.kernel_w + g.stride_w) / g.stride_w, int64_t(0));
    const int64_t ow_hi = ::min((iw + g.pad_w) / g.stride_w, g.out_w - 1);
    T v = 0;
    for (int64_t oh = oh_lo; oh <= oh_hi; ++oh)
      for (int64_t ow = ow_lo; ow <= ow_hi; ++ow) {
        const int64_t h0 = oh * g.stride_h - g.pad_h, w0 = ow * g.stride_w - g.pad_w;
        if (ih < h0 || ih >= h0 + g.kernel_h || iw < w0 || iw >= w0 + g.kernel_w) continue;
        v += gy[(p * g.out_h + oh) * g.out_w + ow] / static_cast<T>(pool_divisor(g, oh, ow));
      }
    gx[e] = v;
  }
}

// --- cuDNN ---------------------------------------------------------------------------------------

void check_cudnn(cudnnStatus_t rc, const char* what) {
  if (rc != CUDNN_STATUS_SUCCESS)
    COHORT_THROW(CudaError, what, " failed: ", cudnnGetErrorString(rc));
}

cudnnHandle_t cudnn_for(int device, cudaStream_t stream) {
  static std::mutex mu;
  static auto* handles = new std::map<int, cudnnHandle_t>();
  cudnnHandle_t h = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = handles->find(device);
    if (it == handles->end()) {
      check_cudnn(cudnnCreate(&h), "cudnnCreate");
      handles->emplace(device, h);
    } else {
      h = it->second;
    }
  }
  check_cudnn(cudnnSetStream(h, stream), "cudnnSetStream");
  return h;
}

// The descriptors of one convolution, destroyed with it.
struct ConvDescriptors {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr, b = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;

  ConvDescriptors(const Conv2dGeometry& g, DType dtype) {
    const cudnnDataType_t t = dtype == DType::kFloat64 ? CUDNN_DATA_DOUBLE : CUDNN_DATA_FLOAT;
    check_cudnn(cudnnCreateTensorDescriptor(&x), "cudnnCreateTensorDescriptor");
    check_cudnn(cudnnCreateTensorDescriptor(&y), "cudnnCreateTensorDescriptor");
    check_cudnn(cudnnCreateTensorDescriptor(&b), "cudnnCreateTensorDescriptor");
    check_cudnn(cudnnCreateFilterDescriptor(&w), "cudnnCreateFilterDescriptor");
    check_cudnn(cudnnCreateConvolutionDescriptor(&conv), "cudnnCreateConvolutionDescriptor");
    const auto i = [](int64_t v) { return static_cast<int>(v); };
    check_cudnn(cudnnSetTensor4dDescriptor(x, CUDNN_TENSOR_NCHW, t, i(g.batch), i(g.in_channels),
                                           i(g.in_h), i(g.in_w)),
                "cudnnSetTensor4dDescriptor");
    check_cudnn(cudnnSetTensor4dDescriptor(y, CUDNN_TENSOR_NCHW, t, i(g.batch), i(g.out_channels),
                                           i(g.out_h), i(g.out_w)),
                "cudnnSetTensor4dDescriptor");
    check_cudnn(cudnnSetTensor4dDescriptor(b, CUDNN_TENSOR_NCHW, t, 1, i(g.out_channels), 1, 1),
                "cudnnSetTensor4dDescriptor");
    check_cudnn(
        cudnnSetFilter4dDescriptor(w, t, CUDNN_TENSOR_NCHW, i(g.out_channels),
                                   i(g.in_channels / g.groups), i(g.kernel_h), i(g.kernel_w)),
        "cudnnSetFilter4dDescriptor");
    check_cudnn(cudnnSetConvolution2dDescriptor(conv, i(g.pad_h), i(g.pad_w), i(g.stride_h),
                                                i(g.stride_w), i(g.dilation_h), i(g.dilation_w),
                                                CUDNN_CROSS_CORRELATION, t),
                "cudnnSetConvolution2dDescriptor");
    check_cudnn(cudnnSetConvolutionGroupCount(conv, i(g.groups)), "cudnnSetConvolutionGroupCount");
    // TF32 tensor cores for float32 unless turned off (then plain FMA arithmetic).
    const cudnnMathType_t math =
        dtype == DType::kFloat32 && allow_tf32() ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH;
    check_cudnn(cudnnSetConvolutionMathType(conv, math), "cudnnSetConvolutionMathType");
  }
  ~ConvDescriptors() {
    cudnnDestroyTensorDescriptor(x);
    cudnnDestroyTensorDescriptor(y);
    cudnnDestroyTensorDescriptor(b);
    cudnnDestroyFilterDescriptor(w);
    cudnnDestroyConvolutionDescriptor(conv);
  }
  ConvDescriptors(const ConvDescriptors&) = delete;
  ConvDescriptors& operator=(const ConvDescriptors&) = delete;
};

// Workspace from the caching allocator, so that steady-state steps allocate nothing.
Tensor workspace(size_t bytes, Device device) {
  return empty({static_cast<int64_t>(std::max<size_t>(bytes, 1))},
               TensorOptions(DType::kUInt8).with_device(device));
}

// The algorithms are chosen by cuDNN's heuristics, once per geometry, dtype and math mode.
struct AlgoKey {
  int64_t v[17];
  bool operator<(const AlgoKey& o) const {
    for (int i = 0; i < 17; ++i)
      if (v[i] != o.v[i]) return v[i] < o.v[i];
    return false;
  }
};
AlgoKey key_of(const Conv2dGeometry& g, DType dtype) {
  return {{g.batch, g.in_channels, g.in_h, g.in_w, g.out_channels, g.kernel_h, g.kernel_w,
           g.stride_h, g.stride_w, g.pad_h, g.pad_w, g.dilation_h, g.dilation_w, g.groups,
           static_cast<int64_t>(dtype), allow_tf32() ? 1 : 0, 0}};
}

struct Algos {
  cudnnConvolutionFwdAlgo_t fwd;
  cudnnConvolutionBwdDataAlgo_t bwd_data;
  cudnnConvolutionBwdFilterAlgo_t bwd_filter;
};

// The heuristics' best algorithm that can run (the first one when none says so).
template <typename Perf>
auto first_usable(const Perf* perf, int n) {
  for (int i = 0; i < n; ++i)
    if (perf[i].status == CUDNN_STATUS_SUCCESS) return perf[i].algo;
  return perf[0].algo;
}

Algos algos_for(cudnnHandle_t h, const ConvDescriptors& d, const Conv2dGeometry& g, DType dtype) {
  static std::mutex mu;
  static auto* cache = new std::map<AlgoKey, Algos>();
  const AlgoKey key = key_of(g, dtype);
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = cache->find(key);
    if (it != cache->end()) return it->second;
  }
  Algos a{};
  int n = 0;
  cudnnConvolutionFwdAlgoPerf_t fwd[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
  check_cudnn(cudnnGetConvolutionForwardAlgorithm_v7(h, d.x, d.w, d.conv, d.y,
                                                     CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &n, fwd),
              "cudnnGetConvolutionForwardAlgorithm_v7");
  a.fwd = first_usable(fwd, n);
  cudnnConvolutionBwdDataAlgoPerf_t bd[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
  check_cudnn(cudnnGetConvolutionBackwardDataAlgorithm_v7(
                  h, d.w, d.y, d.conv, d.x, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &n, bd),
              "cudnnGetConvolutionBackwardDataAlgorithm_v7");
  a.bwd_data = first_usable(bd, n);
  cudnnConvolutionBwdFilterAlgoPerf_t bf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
  check_cudnn(cudnnGetConvolutionBackwardFilterAlgorithm_v7(
                  h, d.x, d.y, d.conv, d.w, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &n, bf),
              "cudnnGetConvolutionBackwardFilterAlgorithm_v7");
  a.bwd_filter = first_usable(bf, n);
  std::lock_guard<std::mutex> lock(mu);
  cache->emplace(key, a);
  return a;
}

}  // namespace conv_kernels

using namespace conv_kernels;

bool CudaBackend::has_conv2d(DType dtype) const {
  return dtype == DType::kFloat32 || dtype == DType::kFloat64;
}

void CudaBackend::conv2d_forward(const Tensor& x, const Tensor& w, const Tensor& bias,
                                 const Conv2dGeometry& g, const Tensor& y) {
  if (y.numel() == 0) return;
  const int device = x.device().index;
  DeviceGuard guard(device);
  cudnnHandle_t h = cudnn_for(device, stream_of(x));
  ConvDescriptors d(g, x.dtype());
  const Algos a = algos_for(h, d, g, x.dtype());
  size_t bytes = 0;
  check_cudnn(cudnnGetConvolutionForwardWorkspaceSize(h, d.x, d.w, d.conv, d.y, a.fwd, &bytes),
              "cudnnGetConvolutionForwardWorkspaceSize");
  Tensor ws = workspace(bytes, x.device());
  const double one_d = 1, zero_d = 0;
  const float one_f = 1, zero_f = 0;
  const bool dbl = x.dtype() == DType::kFloat64;
  const void* one = dbl ? static_cast<const void*>(&one_d) : &one_f;
  const void* zero = dbl ? static_cast<const void*>(&zero_d) : &zero_f;
  check_cudnn(cudnnConvolutionForward(h, one, d.x, x.raw_data(), d.w, w.raw_data(), d.conv, a.fwd,
                                      ws.raw_data(), bytes, zero, d.y, y.raw_data()),
              "cudnnConvolutionForward");
  if (bias.defined())
    check_cudnn(cudnnAddTensor(h, one, d.b, bias.raw_data(), one, d.y, y.raw_data()),
                "cudnnAddTensor");
}

void CudaBackend::conv2d_backward(const Tensor& gy, const Tensor& x, const Tensor& w,
                                  const Conv2dGeometry& g, const Tensor& gx, const Tensor& gw,
                                  const Tensor& gb) {
  const int device = gy.device().index;
  DeviceGuard guard(device);
  if (g.batch == 0) {  // no images: the parameter gradients are zero
    if (gw.defined()) fill(gw, 0);
    if (gb.defined()) fill(gb, 0);
    return;
  }
  cudnnHandle_t h = cudnn_for(device, stream_of(gy));
  ConvDescriptors d(g, gy.dtype());
  const Algos a = algos_for(h, d, g, gy.dtype());
  const double one_d = 1, zero_d = 0;
  const float one_f = 1, zero_f = 0;
  const bool dbl = gy.dtype() == DType::kFloat64;
  const void* one = dbl ? static_cast<const void*>(&one_d) : &one_f;
  const void* zero = dbl ? static_cast<const void*>(&zero_d) : &zero_f;
  if (gx.defined()) {
    size_t bytes = 0;
    check_cudnn(
        cudnnGetConvolutionBackwardDataWorkspaceSize(h, d.w, d.y, d.conv, d.x, a.bwd_data, &bytes),
        "cudnnGetConvolutionBackwardDataWorkspaceSize");
    Tensor ws = workspace(bytes, gy.device());
    check_cudnn(
        cudnnConvolutionBackwardData(h, one, d.w, w.raw_data(), d.y, gy.raw_data(), d.conv,
                                     a.bwd_data, ws.raw_data(), bytes, zero, d.x, gx.raw_data()),
        "cudnnConvolutionBackwardData");
  }
  if (gw.defined()) {
    size_t bytes = 0;
    check_cudnn(cudnnGetConvolutionBackwardFilterWorkspaceSize(h, d.x, d.y, d.conv, d.w,
                                                               a.bwd_filter, &bytes),
                "cudnnGetConvolutionBackwardFilterWorkspaceSize");
    Tensor ws = workspace(bytes, gy.device());
    check_cudnn(cudnnConvolutionBackwardFilter(h, one, d.x, x.raw_data(), d.y, gy.raw_data(),
                                               d.conv, a.bwd_filter, ws.raw_data(), bytes, zero,
                                               d.w, gw.raw_data()),
                "cudnnConvolutionBackwardFilter");
  }
  if (gb.defined())
    check_cudnn(cudnnConvolutionBackwardBias(h, one, d.y, gy.raw_data(), zero, d.b, gb.raw_data()),
                "cudnnConvolutionBackwardBias");
}

void CudaBackend::im2col(const Tensor& image, const Conv2dGeometry& g, int64_t n,
                         const Tensor& col) {
  dispatch_floating(image.dtype(), "conv2d", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t total = g.in_channels * g.kernel_h * g.kernel_w * g.out_h * g.out_w;
    if (total == 0) return;
    DeviceGuard guard(image.device().index);
    const T* img = static_cast<const T*>(image.raw_data()) + n * g.in_channels * g.in_h * g.in_w;
    im2col_kernel<T><<<blocks_for(total), kThreads, 0, stream_of(image)>>>(
        img, g, static_cast<T*>(col.raw_data()));
    COHORT_CUDA_LAUNCHED("im2col");
  });
}

void CudaBackend::col2im(const Tensor& col, const Conv2dGeometry& g, int64_t n,
                         const Tensor& image) {
  dispatch_floating(image.dtype(), "conv2d backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t total = g.in_channels * g.in_h * g.in_w;
    if (total == 0) return;
    DeviceGuard guard(image.device().index);
    T* img = static_cast<T*>(image.raw_data()) + n * total;
    col2im_kernel<T><<<blocks_for(total), kThreads, 0, stream_of(image)>>>(
        static_cast<const T*>(col.raw_data()), g, img);
    COHORT_CUDA_LAUNCHED("col2im");
  });
}

namespace {
[[noreturn]] void no_winograd() {
  COHORT_THROW(InvalidArgument,
               "conv2d: the Winograd algorithm runs on the CPU only; CUDA tensors use cuDNN "
               "(Conv2dAlgorithm::kAuto)");
}
}  // namespace

void CudaBackend::winograd_input(const Tensor&, const Conv2dGeometry&, const Tensor&) {
  no_winograd();
}
void CudaBackend::winograd_input_backward(const Tensor&, const Conv2dGeometry&, const Tensor&) {
  no_winograd();
}
void CudaBackend::winograd_output(const Tensor&, const Tensor&, const Conv2dGeometry&,
                                  const Tensor&) {
  no_winograd();
}
void CudaBackend::winograd_output_backward(const Tensor&, const Conv2dGeometry&, const Tensor&) {
  no_winograd();
}

void CudaBackend::max_pool2d(const Tensor& in, const Pool2dGeometry& g, const Tensor& out,
                             const Tensor& indices) {
  dispatch_floating(in.dtype(), "max_pool2d", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t total = g.planes * g.out_h * g.out_w;
    if (total == 0) return;
    DeviceGuard guard(in.device().index);
    max_pool_kernel<T><<<blocks_for(total), kThreads, 0, stream_of(in)>>>(
        static_cast<const T*>(in.raw_data()), g, static_cast<T*>(out.raw_data()),
        indices.data_ptr<int64_t>());
    COHORT_CUDA_LAUNCHED("max_pool2d");
  });
}

void CudaBackend::max_pool2d_backward(const Tensor& grad, const Tensor& indices,
                                      const Pool2dGeometry& g, const Tensor& grad_in) {
  dispatch_floating(grad.dtype(), "max_pool2d backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    DeviceGuard guard(grad.device().index);
    check_cuda(cudaMemsetAsync(grad_in.raw_data(), 0, grad_in.nbytes(), stream_of(grad)),
               "cudaMemsetAsync");
    const int64_t total = g.planes * g.out_h * g.out_w;
    if (total == 0) return;
    max_pool_backward_kernel<T><<<blocks_for(total), kThreads, 0, stream_of(grad)>>>(
        static_cast<const T*>(grad.raw_data()), indices.data_ptr<int64_t>(), g,
        static_cast<T*>(grad_in.raw_data()));
    COHORT_CUDA_LAUNCHED("max_pool2d backward");
  });
}

void CudaBackend::avg_pool2d(const Tensor& in, const Pool2dGeometry& g, const Tensor& out) {
  dispatch_floating(in.dtype(), "avg_pool2d", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t total = g.planes * g.out_h * g.out_w;
    if (total == 0) return;
    DeviceGuard guard(in.device().index);
    avg_pool_kernel<T><<<blocks_for(total), kThreads, 0, stream_of(in)>>>(
        static_cast<const T*>(in.raw_data()), g, static_cast<T*>(out.raw_data()));
    COHORT_CUDA_LAUNCHED("avg_pool2d");
  });
}

void CudaBackend::avg_pool2d_backward(const Tensor& grad, const Pool2dGeometry& g,
                                      const Tensor& grad_in) {
  dispatch_floating(grad.dtype(), "avg_pool2d backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t total = g.planes * g.in_h * g.in_w;
    if (total == 0) return;
    DeviceGuard guard(grad.device().index);
    avg_pool_backward_kernel<T><<<blocks_for(total), kThreads, 0, stream_of(grad)>>>(
        static_cast<const T*>(grad.raw_data()), g, static_cast<T*>(grad_in.raw_data()));
    COHORT_CUDA_LAUNCHED("avg_pool2d backward");
  });
}

}  // namespace cohort::core::cuda
