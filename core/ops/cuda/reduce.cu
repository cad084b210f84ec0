// CUDA reductions over any set of dims (sum, prod, max, min), and max/min along one dim with the
// index of the first extreme. Float types accumulate in their own precision over a tree (more
// accurate than the CPU's sequential double sum needs to be for float32), integers in int64.
#include <limits>

#include "core/ops/cuda/common.cuh"
#include "core/ops/cuda/cuda_backend.h"

namespace cohort::core::cuda {
namespace reduce_kernels {

// Float types accumulate in their own precision (the 16-bit ones in float), integers in int64.
template <typename T>
using reduce_acc_t =
    std::conditional_t<is_half_v<T>, float,
                       std::conditional_t<std::is_floating_point_v<T>, T, int64_t>>;
// numeric_limits of the type the limits are taken from (float's for the 16-bit floats, whose
// range bounds theirs: an identity of +-inf is exact in them).
template <typename T>
using limits_t = std::conditional_t<is_half_v<T>, float, T>;

template <typename Acc, ReduceOp OP>
struct Combine {
  __device__ __forceinline__ Acc operator()(Acc a, Acc b) const {
    if constexpr (OP == ReduceOp::kSum) return a + b;
    if constexpr (OP == ReduceOp::kProd) return a * b;
    if constexpr (OP == ReduceOp::kMax) return (b > a || b != b) ? b : a;
    if constexpr (OP == ReduceOp::kMin) return (b < a || b != b) ? b : a;
    return a;
  }
};

// One block per output (grid-stride over outputs): for long reductions.
template <typename T, typename Acc, typename F>
__global__ void reduce_block(int64_t n_out, int64_t n_red, Offsets<2> kept, Offsets<1> red,
                             char* out, const char* in, Acc init, F f) {
  __shared__ Acc shared[33];
  for (int64_t o = blockIdx.x; o < n_out; o += gridDim.x) {
    int64_t ko[2];
    kept.at(o, ko);
    const char* base = in + ko[1];
    Acc acc = init;
    for (int64_t j = threadIdx.x; j < n_red; j += blockDim.x) {
      int64_t ro[1];
      red.at(j, ro);
      acc = f(acc, convert<Acc>(*reinterpret_cast<const T*>(base + ro[0])));
    }
    acc = block_reduce(acc, f, shared, init);
    if (threadIdx.x == 0) *reinterpret_cast<T*>(out + ko[0]) = convert<T>(acc);
  }
}

// One thread per output: for many short reductions (neighbouring threads read neighbours).
template <typename T, typename Acc, typename F>
__global__ void reduce_thread(int64_t n_out, int64_t n_red, Offsets<2> kept, Offsets<1> red,
                              char* out, const char* in, Acc init, F f) {
  for (int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; o < n_out;
       o += int64_t(gridDim.x) * blockDim.x) {
    int64_t ko[2];
    kept.at(o, ko);
    const char* base = in + ko[1];
    Acc acc = init;
    for (int64_t j = 0; j < n_red; ++j) {
      int64_t ro[1];
      red.at(j, ro);
      acc = f(acc, convert<Acc>(*reinterpret_cast<const T*>(base + ro[0])));
    }
    *reinterpret_cast<T*>(out + ko[0]) = convert<T>(acc);
  }
}

// Few outputs, long reductions: block (s, o) reduces part s of output o's range into
// partial[o * splits + s]; reduce_partials then combines each output's parts.
template <typename T, typename Acc, typename F>
__global__ void reduce_split(int64_t n_out, int64_t n_red, int64_t chunk, Offsets<2> kept,
                             Offsets<1> red, const char* in, Acc init, F f, Acc* partial) {
  __shared__ Acc shared[33];
  const int64_t splits = gridDim.x, s = blockIdx.x;
  const int64_t begin = s * chunk, end = ::min(n_red, begin + chunk);
  for (int64_t o = blockIdx.y; o < n_out; o += gridDim.y) {
    int64_t ko[2];
    kept.at(o, ko);
    const char* base = in + ko[1];
    Acc acc = init;
    for (int64_t j = begin + threadIdx.x; j < end; j += blockDim.x) {
      int64_t ro[1];
      red.at(j, ro);
      acc = f(acc, convert<Acc>(*reinterpret_cast<const T*>(base + ro[0])));
    }
    acc = block_reduce(acc, f, shared, init);
    if (threadIdx.x == 0) partial[o * splits + s] = acc;
  }
}

template <typename T, typename Acc, typename F>
__global__ void reduce_partials(int64_t n_out, int64_t splits, const Acc* partial, Offsets<2> kept,
                                char* out, Acc init, F f) {
  __shared__ Acc shared[33];
  for (int64_t o = blockIdx.x; o < n_out; o += gridDim.x) {
    Acc acc = init;
    for (int64_t k = threadIdx.x; k < splits; k += blockDim.x)
      acc = f(acc, partial[o * splits + k]);
    acc = block_reduce(acc, f, shared, init);
    int64_t ko[2];
    kept.at(o, ko);
    if (threadIdx.x == 0) *reinterpret_cast<T*>(out + ko[0]) = convert<T>(acc);
  }
}

template <typename T>
__global__ void reduce_with_index(int64_t outer, int64_t n, int64_t inner, const T* x, T* out,
                                  int64_t* idx, bool is_max) {
  const int64_t total = outer * inner;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t a = i / inner, c = i % inner;
    const T* base = x + a * n * inner + c;
    T best = base[0];
    int64_t bi = 0;
    for (int64_t j = 1; j < n; ++j) {
      const T v = base[j * inner];
      if (best != best) break;  // NaN wins and stays
      if (v != v || (is_max ? v > best : v < best)) {
        best = v;
        bi = j;
      }
    }
    out[i] = best;
    idx[i] = bi;
  }
}

template <typename T, ReduceOp OP>
void reduce_general(const Tensor& in, const Tensor& out) {
  using Acc = reduce_acc_t<T>;
  const Shape& shape = in.sizes();
  const Shape out_strides = cpu::broadcast_byte_strides(out, shape);
  const Shape in_strides = cpu::broadcast_byte_strides(in, shape);
  // Kept dims: the output has them; reduced dims: the output has size 1 there.
  Shape kept_sizes, red_sizes, kept_out, kept_in, red_in;
  const size_t lead = shape.size() - out.sizes().size();  // out is right-aligned like a broadcast
  for (size_t d = 0; d < shape.size(); ++d) {
    const int64_t od = d < lead ? 1 : out.sizes()[d - lead];
    if (od == shape[d]) {
      kept_sizes.push_back(shape[d]);
      kept_out.push_back(out_strides[d]);
      kept_in.push_back(in_strides[d]);
    } else {
      red_sizes.push_back(shape[d]);
      red_in.push_back(in_strides[d]);
    }
  }
  int64_t n_out = 1, n_red = 1;
  for (int64_t s : kept_sizes) n_out *= s;
  for (int64_t s : red_sizes) n_red *= s;
  if (n_out == 0) return;
  Offsets<2> kept = make_offsets<2>(kept_sizes, {kept_out, kept_in}, {0, 0}, nullptr);
  Offsets<1> red = make_offsets<1>(red_sizes, {red_in}, {0}, nullptr);
  const Acc init = reduce_identity<limits_t<T>, Acc>(OP);
  DeviceGuard guard(in.device().index);
  char* o = static_cast<char*>(out.raw_data());
  const char* x = static_cast<const char*>(in.raw_data());
  // Long reductions into few outputs (a whole-tensor sum, a gradient norm): one block per output
  // would leave the GPU idle, so each output's range is split over many blocks.
  constexpr int64_t kPerBlock = 16384;
  const int64_t splits =
      std::min<int64_t>((n_red + kPerBlock - 1) / kPerBlock, std::max<int64_t>(1, 8192 / n_out));
  if (splits > 1) {
    const int64_t chunk = (n_red + splits - 1) / splits;
    Tensor partial =
        empty({n_out * splits}, TensorOptions(dtype_of<Acc>()).with_device(in.device()));
    Acc* pp = static_cast<Acc*>(partial.raw_data());
    const dim3 grid(static_cast<unsigned>(splits),
                    static_cast<unsigned>(std::min<int64_t>(n_out, 65535)));
    reduce_split<T, Acc><<<grid, kThreads, 0, stream_of(in)>>>(n_out, n_red, chunk, kept, red, x,
                                                               init, Combine<Acc, OP>{}, pp);
    COHORT_CUDA_LAUNCHED("reduce");
    reduce_partials<T, Acc>
        <<<static_cast<unsigned>(std::min<int64_t>(n_out, 65536)), kThreads, 0, stream_of(in)>>>(
            n_out, splits, pp, kept, o, init, Combine<Acc, OP>{});
    COHORT_CUDA_LAUNCHED("reduce");
    return;
  }
  // Short reductions with many outputs: a thread each; otherwise a block each.
  if (n_red <= 64 && n_out >= 1024) {
    reduce_thread<T, Acc><<<blocks_for(n_out), kThreads, 0, stream_of(in)>>>(
        n_out, n_red, kept, red, o, x, init, Combine<Acc, OP>{});
  } else {
    const unsigned grid = static_cast<unsigned>(std::min<int64_t>(n_out, 65536));
    reduce_block<T, Acc><<<grid, kThreads, 0, stream_of(in)>>>(n_out, n_red, kept, red, o, x, init,
                                                               Combine<Acc, OP>{});
  }
  COHORT_CUDA_LAUNCHED("reduce");
}

}  // namespace reduce_kernels

void CudaBackend::reduce(ReduceOp op, const Tensor& in, const Tensor& out, const Tensor& indices,
                         int64_t dim) {
  using namespace reduce_kernels;
  auto run = [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (indices.defined()) {
      COHORT_CHECK(in.is_contiguous() && out.is_contiguous(),
                   "indexed reduce needs contiguous tensors");
      int64_t outer = 1, inner = 1, n = in.size(dim);
      for (int64_t i = 0; i < dim; ++i) outer *= in.size(i);
      for (int64_t i = dim + 1; i < in.dim(); ++i) inner *= in.size(i);
      COHORT_CHECK(n > 0, "max/min/argmax over an empty dimension");
      if (outer * inner == 0) return;
      DeviceGuard guard(in.device().index);
      reduce_with_index<T><<<blocks_for(outer * inner), kThreads, 0, stream_of(in)>>>(
          outer, n, inner, static_cast<const T*>(in.raw_data()), static_cast<T*>(out.raw_data()),
          static_cast<int64_t*>(indices.raw_data()), op == ReduceOp::kMax);
      COHORT_CUDA_LAUNCHED("reduce with index");
      return;
    }
    switch (op) {
      case ReduceOp::kSum:
        return reduce_general<T, ReduceOp::kSum>(in, out);
      case ReduceOp::kProd:
        return reduce_general<T, ReduceOp::kProd>(in, out);
      case ReduceOp::kMax:
        return reduce_general<T, ReduceOp::kMax>(in, out);
      case ReduceOp::kMin:
        return reduce_general<T, ReduceOp::kMin>(in, out);
    }
  };
  // 16-bit floats: sums in mixed-precision backward (a broadcast bias gradient), argmax of
  // 16-bit logits.
  if (in.dtype() == DType::kBFloat16) return run(TypeTag<__nv_bfloat16>{});
  if (in.dtype() == DType::kFloat16) return run(TypeTag<__half>{});
  dispatch_arith(in.dtype(), "reduction", run);
}

}  // namespace cohort::core::cuda
