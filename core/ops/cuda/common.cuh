// Shared pieces of the CUDA kernels: error checks, launch shapes, the device-side element types
// and their conversions, strided offset arithmetic (up to kMaxDims dims, byte strides, operands
// broadcast to the output by stride 0) and block reductions. Only .cu files include this.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <type_traits>

#include "core/ops/backend.h"
#include "core/ops/cpu/loops.h"
#include "core/tensor/cuda/cuda_device.h"
#include "core/tensor/cuda/kernel_error.h"
#include "core/util/error.h"

namespace cohort::core::cuda {

inline void check_cuda(cudaError_t rc, const char* what) {
  if (rc != cudaSuccess) COHORT_THROW(CudaError, what, " failed: ", cudaGetErrorString(rc));
}
// After a launch: a bad configuration is reported here, a fault at the next synchronisation.
#define COHORT_CUDA_LAUNCHED(name) ::cohort::core::cuda::check_cuda(cudaGetLastError(), name)

// Every kernel runs on the stream of its device (see cuda_device.h).
inline cudaStream_t stream_of(const Tensor& t) {
  return static_cast<cudaStream_t>(current_stream(t.device().index));
}

constexpr int kThreads = 256;
constexpr int kMaxDims = 8;

// Blocks for a grid-stride loop over n items: enough to fill the GPU, no more.
inline unsigned blocks_for(int64_t n, int threads = kThreads) {
  const int64_t want = (n + threads - 1) / threads;
  return static_cast<unsigned>(want < 1 ? 1 : (want > 65536 ? 65536 : want));
}

// --- element types -------------------------------------------------------------------------------
// The device type that stores each host type, and the type arithmetic on it runs in.
template <typename T>
struct DeviceType {
  using type = T;
};
template <>
struct DeviceType<BFloat16> {
  using type = __nv_bfloat16;
};
template <>
struct DeviceType<Float16> {
  using type = __half;
};
template <typename T>
using dev_t = typename DeviceType<T>::type;

template <typename T>
struct AccType {
  using type = T;
};
template <>
struct AccType<__nv_bfloat16> {
  using type = float;
};
template <>
struct AccType<__half> {
  using type = float;
};
template <typename T>
using acc_t = typename AccType<T>::type;

template <typename T>
constexpr bool is_half_v = std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>;

// static_cast with the 16-bit floats going through float, and bool as "!= 0" (the CPU's rule).
template <typename To, typename From>
__device__ __forceinline__ To convert(From v) {
  if constexpr (std::is_same_v<To, From>) {
    return v;
  } else if constexpr (is_half_v<From>) {
    return convert<To, float>(static_cast<float>(v));
  } else if constexpr (std::is_same_v<To, __half>) {
    return __float2half_rn(static_cast<float>(v));
  } else if constexpr (std::is_same_v<To, __nv_bfloat16>) {
    return __float2bfloat16_rn(static_cast<float>(v));
  } else if constexpr (std::is_same_v<To, bool>) {
    return static_cast<float>(v) != 0.0f;
  } else {
    return static_cast<To>(v);
  }
}

// --- strided offsets -----------------------------------------------------------------------------
// Byte offsets of N operands for a linear index over a coalesced shape (innermost dim last).
template <int N>
struct Offsets {
  int nd = 0;
  bool small = false;  // fewer than 2^31 indices: 32-bit division, several times cheaper
  int64_t sizes[kMaxDims] = {};
  int64_t strides[kMaxDims][N] = {};

  __device__ __forceinline__ void at(int64_t i, int64_t (&off)[N]) const {
#pragma unroll
    for (int k = 0; k < N; ++k) off[k] = 0;
    if (small) {
      uint32_t j = static_cast<uint32_t>(i);
      for (int d = nd - 1; d >= 0; --d) {
        const uint32_t s = static_cast<uint32_t>(sizes[d]);
        const uint32_t c = j % s;
        j /= s;
#pragma unroll
        for (int k = 0; k < N; ++k) off[k] += static_cast<int64_t>(c) * strides[d][k];
      }
      return;
    }
    for (int d = nd - 1; d >= 0; --d) {
      const int64_t s = sizes[d];
      const int64_t c = i % s;
      i /= s;
#pragma unroll
      for (int k = 0; k < N; ++k) off[k] += c * strides[d][k];
    }
  }
};

// The operands' byte strides broadcast to `shape`, coalesced. `flat` is set when every operand
// is dense along the single remaining dim (a plain loop over elements).
template <int N>
Offsets<N> make_offsets(const Shape& shape, const std::array<Shape, N>& byte_strides,
                        const std::array<int64_t, N>& element_sizes, bool* flat) {
  cpu::LoopDims<N> d = cpu::coalesce<N>(shape, byte_strides);
  COHORT_CHECK(d.sizes.size() <= static_cast<size_t>(kMaxDims), "CUDA kernels take at most ",
               kMaxDims, " dimensions");
  Offsets<N> o;
  o.nd = static_cast<int>(d.sizes.size());
  int64_t count = 1;
  for (int64_t v : d.sizes) count *= v;
  o.small = count < (int64_t{1} << 31);
  for (int i = 0; i < o.nd; ++i) {
    o.sizes[i] = d.sizes[i];
    for (int k = 0; k < N; ++k) o.strides[i][k] = d.strides[i][k];
  }
  bool dense = o.nd <= 1;
  if (o.nd == 1)
    for (int k = 0; k < N; ++k) dense = dense && o.strides[0][k] == element_sizes[k];
  if (flat) *flat = dense;
  return o;
}

// --- reductions within a block -----------------------------------------------------------------
template <typename T, typename F>
__device__ __forceinline__ T warp_reduce(T v, F f) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = f(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Every thread of the block gets the reduction of all threads' v. blockDim.x is a multiple of 32
// and at most 1024; `shared` holds 33 values; `identity` fills the lanes past the last warp.
template <typename T, typename F>
__device__ __forceinline__ T block_reduce(T v, F f, T* shared, T identity) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_reduce(v, f);
  __syncthreads();  // shared may still be read from a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (warp == 0) {
    T w = lane < warps ? shared[lane] : identity;
    w = warp_reduce(w, f);
    if (lane == 0) shared[32] = w;
  }
  __syncthreads();
  return shared[32];
}

// --- index errors --------------------------------------------------------------------------------
// A kernel that meets an index out of range records the first one in its device's slot and skips
// the element; the host raises it at its next synchronisation with the device.
__device__ __forceinline__ void record_index_error(KernelError* slot, int op, int64_t index,
                                                   int64_t size) {
  if (atomicCAS(&slot->flag, 0, 1) == 0) {
    slot->op = op;
    slot->index = index;
    slot->size = size;
  }
}

}  // namespace cohort::core::cuda
