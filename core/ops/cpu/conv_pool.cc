// CPU im2col/col2im for convolution and 2-D pooling kernels, on contiguous NCHW data.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "core/ops/cpu/cpu_backend.h"
#include "core/util/threads.h"

namespace cohort::core::cpu {
namespace {

// col rows are (c, ki, kj) for every input channel; columns are output positions (oh, ow).
template <typename T>
void im2col_typed(const T* img, const Conv2dGeometry& g, T* col) {
  const int64_t ohw = g.out_h * g.out_w;
  for (int64_t c = 0; c < g.in_channels; ++c) {
    const T* plane = img + c * g.in_h * g.in_w;
    for (int64_t ki = 0; ki < g.kernel_h; ++ki) {
      for (int64_t kj = 0; kj < g.kernel_w; ++kj) {
        T* row = col + ((c * g.kernel_h + ki) * g.kernel_w + kj) * ohw;
        for (int64_t oh = 0; oh < g.out_h; ++oh) {
          const int64_t ih = oh * g.stride_h - g.pad_h + ki * g.dilation_h;
          T* out = row + oh * g.out_w;
          if (ih < 0 || ih >= g.in_h) {
            std::memset(out, 0, sizeof(T) * g.out_w);
            continue;
          }
          const T* in_row = plane + ih * g.in_w;
          const int64_t off = kj * g.dilation_w - g.pad_w;
          if (g.stride_w == 1) {
            // Valid ow range where 0 <= ow + off < in_w.
            int64_t lo = std::max<int64_t>(0, -off), hi = std::min<int64_t>(g.out_w, g.in_w - off);
            if (hi < lo) hi = lo;
            for (int64_t ow = 0; ow < lo; ++ow) out[ow] = T(0);
            if (hi > lo) std::memcpy(out + lo, in_row + lo + off, sizeof(T) * (hi - lo));
            for (int64_t ow = hi; ow < g.out_w; ++ow) out[ow] = T(0);
          } else {
            for (int64_t ow = 0; ow < g.out_w; ++ow) {
              const int64_t iw = ow * g.stride_w + off;
              out[ow] = (iw >= 0 && iw < g.in_w) ? in_row[iw] : T(0);
            }
          }
        }
      }
    }
  }
}

template <typename T>
void col2im_typed(const T* col, const Conv2dGeometry& g, T* img) {
  const int64_t ohw = g.out_h * g.out_w;
  std::memset(img, 0, sizeof(T) * g.in_channels * g.in_h * g.in_w);
  for (int64_t c = 0; c < g.in_channels; ++c) {
    T* plane = img + c * g.in_h * g.in_w;
    for (int64_t ki = 0; ki < g.kernel_h; ++ki) {
      for (int64_t kj = 0; kj < g.kernel_w; ++kj) {
        const T* row = col + ((c * g.kernel_h + ki) * g.kernel_w + kj) * ohw;
        for (int64_t oh = 0; oh < g.out_h; ++oh) {
          const int64_t ih = oh * g.stride_h - g.pad_h + ki * g.dilation_h;
          if (ih < 0 || ih >= g.in_h) continue;
          T* in_row = plane + ih * g.in_w;
          const T* src = row + oh * g.out_w;
          const int64_t off = kj * g.dilation_w - g.pad_w;
          if (g.stride_w == 1) {
            // The in-bounds run is contiguous, so the add vectorises; the bounds test per
            // element kept this loop scalar and made it a tenth of a CNN step.
            const int64_t lo = std::max<int64_t>(0, -off);
            const int64_t hi = std::min<int64_t>(g.out_w, g.in_w - off);
            T* dst = in_row + off;
            for (int64_t ow = lo; ow < hi; ++ow) dst[ow] += src[ow];
            continue;
          }
          for (int64_t ow = 0; ow < g.out_w; ++ow) {
            const int64_t iw = ow * g.stride_w + off;
            if (iw >= 0 && iw < g.in_w) in_row[iw] += src[ow];
          }
        }
      }
    }
  }
}

}  // namespace

void CpuBackend::im2col(const Tensor& image, const Conv2dGeometry& g, int64_t n,
                        const Tensor& col) {
  dispatch_floating(image.dtype(), "conv2d", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* img = static_cast<const T*>(image.raw_data()) + n * g.in_channels * g.in_h * g.in_w;
    im2col_typed<T>(img, g, static_cast<T*>(col.raw_data()));
  });
}

void CpuBackend::col2im(const Tensor& col, const Conv2dGeometry& g, int64_t n,
                        const Tensor& image) {
  dispatch_floating(image.dtype(), "conv2d backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* img = static_cast<T*>(image.raw_data()) + n * g.in_channels * g.in_h * g.in_w;
    col2im_typed<T>(static_cast<const T*>(col.raw_data()), g, img);
  });
}

namespace {

// PyTorch's rule: the first maximum in scan order wins, and a NaN always wins (so it propagates).
// Written as selects rather than branches: which element is largest is a coin flip on real
// activations, and the mispredicted branches made pooling cost as much as the convolution.
template <typename T>
inline void take_max(T v, int64_t i, T& best, int64_t& bi) {
  const bool take = (v > best) | (v != v);
  best = take ? v : best;
  bi = take ? i : bi;
}

#if defined(__AVX2__)
// Eight outputs of a float 2x2/stride-2 window at once: the compiler turns the scalar selects
// below back into branches, which mispredict on real activations. `code` records which of the
// four window elements won (0..3, scan order) so the index is computed without branches too.
inline void max_pool_2x2_row8(const float* r0, const float* r1, float* y, int32_t* code) {
  auto evens_odds = [](const float* p, __m256& ev, __m256& od) {
    const __m256 lo = _mm256_loadu_ps(p), hi = _mm256_loadu_ps(p + 8);
    ev = _mm256_castpd_ps(
        _mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(lo, hi, 0x88)), 0xD8));
    od = _mm256_castpd_ps(
        _mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(lo, hi, 0xDD)), 0xD8));
  };
  __m256 a, b, c, d;
  evens_odds(r0, a, b);
  evens_odds(r1, c, d);
  __m256 best = a;
  __m256i k = _mm256_setzero_si256();
  auto take = [&](__m256 v, int which) {
    const __m256 m =
        _mm256_or_ps(_mm256_cmp_ps(v, best, _CMP_GT_OQ), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    best = _mm256_blendv_ps(best, v, m);
    k = _mm256_castps_si256(
        _mm256_blendv_ps(_mm256_castsi256_ps(k), _mm256_castsi256_ps(_mm256_set1_epi32(which)), m));
  };
  take(b, 1);
  take(c, 2);
  take(d, 3);
  _mm256_storeu_ps(y, best);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(code), k);
}
#endif

// The 2x2, stride-2, unpadded window of nearly every CNN.
template <typename T>
void max_pool_2x2(const T* x, const Pool2dGeometry g, T* y, int64_t* idx) {
  const int64_t in_w = g.in_w;
  [[maybe_unused]] const T* end = x + g.planes * g.in_h * in_w;
  for (int64_t p = 0; p < g.planes; ++p) {
    const T* plane = x + p * g.in_h * in_w;
    for (int64_t oh = 0; oh < g.out_h; ++oh) {
      const int64_t r0 = 2 * oh * in_w, r1 = r0 + in_w;
      T* yo = y + (p * g.out_h + oh) * g.out_w;
      int64_t* io = idx + (p * g.out_h + oh) * g.out_w;
      int64_t ow = 0;
#if defined(__AVX2__)
      if constexpr (std::is_same_v<T, float>) {
        int32_t code[8];
        for (; ow < g.out_w; ow += 8) {
          const int64_t n = std::min<int64_t>(8, g.out_w - ow);
          if (n == 8) {
            max_pool_2x2_row8(plane + r0 + 2 * ow, plane + r1 + 2 * ow, yo + ow, code);
          } else if (plane + r1 + 2 * ow + 16 <= end) {
            // Reading past the row's end is harmless (those lanes are dropped) while inside the
            // tensor; copying into a padded buffer instead stalls on store forwarding.
            float ty[8];
            max_pool_2x2_row8(plane + r0 + 2 * ow, plane + r1 + 2 * ow, ty, code);
            std::memcpy(yo + ow, ty, sizeof(float) * n);
          } else {
            // The ragged end of the row (all of it when out_w < 8, as in a 14x14 map) goes
            // through the same kernel on a padded copy; a scalar tail would be the hot spot.
            float t0[16], t1[16], ty[8];
            std::fill(t0, t0 + 16, -std::numeric_limits<float>::infinity());
            std::fill(t1, t1 + 16, -std::numeric_limits<float>::infinity());
            std::memcpy(t0, plane + r0 + 2 * ow, sizeof(float) * 2 * n);
            std::memcpy(t1, plane + r1 + 2 * ow, sizeof(float) * 2 * n);
            max_pool_2x2_row8(t0, t1, ty, code);
            std::memcpy(yo + ow, ty, sizeof(float) * n);
          }
          for (int64_t j = 0; j < n; ++j)
            io[ow + j] = r0 + 2 * (ow + j) + (code[j] & 1) + (code[j] >> 1) * in_w;
        }
      }
#endif
      for (; ow < g.out_w; ++ow) {
        const int64_t c = 2 * ow;
        T best = plane[r0 + c];
        int64_t bi = r0 + c;
        take_max(plane[r0 + c + 1], r0 + c + 1, best, bi);
        take_max(plane[r1 + c], r1 + c, best, bi);
        take_max(plane[r1 + c + 1], r1 + c + 1, best, bi);
        yo[ow] = best;
        io[ow] = bi;
      }
    }
  }
}

template <typename T>
void max_pool_general(const T* x, const Pool2dGeometry g, T* y, int64_t* idx) {
  for (int64_t p = 0; p < g.planes; ++p) {
    const T* plane = x + p * g.in_h * g.in_w;
    for (int64_t oh = 0; oh < g.out_h; ++oh) {
      // Padding is at most half the kernel, so every window holds at least one real element.
      const int64_t h0 = std::max<int64_t>(oh * g.stride_h - g.pad_h, 0);
      const int64_t h1 = std::min<int64_t>(oh * g.stride_h - g.pad_h + g.kernel_h, g.in_h);
      for (int64_t ow = 0; ow < g.out_w; ++ow) {
        const int64_t w0 = std::max<int64_t>(ow * g.stride_w - g.pad_w, 0);
        const int64_t w1 = std::min<int64_t>(ow * g.stride_w - g.pad_w + g.kernel_w, g.in_w);
        T best = plane[h0 * g.in_w + w0];
        int64_t bi = h0 * g.in_w + w0;
        for (int64_t ih = h0; ih < h1; ++ih)
          for (int64_t iw = w0; iw < w1; ++iw)
            take_max(plane[ih * g.in_w + iw], ih * g.in_w + iw, best, bi);
        const int64_t o = (p * g.out_h + oh) * g.out_w + ow;
        y[o] = best;
        idx[o] = bi;
      }
    }
  }
}

// gx = the gradient of `planes` pooled planes from gy, through the recorded argmax offsets. A
// function of its own, so that its pointers are locals: reached through the range lambda's
// captured references, GCC reloaded them after every store.
template <typename T>
void max_pool_backward_planes(const T* gy, const int64_t* idx, int64_t ohw, int64_t ihw,
                              int64_t planes, T* gx) {
  std::memset(gx, 0, sizeof(T) * planes * ihw);
  for (int64_t p = 0; p < planes; ++p)
    for (int64_t o = 0; o < ohw; ++o) {
      const int64_t i = idx[p * ohw + o];
      if (i >= 0) gx[p * ihw + i] += gy[p * ohw + o];
    }
}

// Planes per parallel_for range of max pooling (a 28x28 plane is well under a microsecond).
constexpr int64_t kPoolPlanesPerTask = 64;

}  // namespace

void CpuBackend::max_pool2d(const Tensor& in, const Pool2dGeometry& g, const Tensor& out,
                            const Tensor& indices) {
  dispatch_floating(in.dtype(), "max_pool2d", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const bool two_by_two = g.kernel_h == 2 && g.kernel_w == 2 && g.stride_h == 2 &&
                            g.stride_w == 2 && g.pad_h == 0 && g.pad_w == 0;
    // Planes are independent (indices are offsets within a plane): split them over threads.
    parallel_for(g.planes, kPoolPlanesPerTask, [&](int64_t begin, int64_t end) {
      Pool2dGeometry part = g;
      part.planes = end - begin;
      const T* x = static_cast<const T*>(in.raw_data()) + begin * g.in_h * g.in_w;
      T* y = static_cast<T*>(out.raw_data()) + begin * g.out_h * g.out_w;
      int64_t* idx = indices.data_ptr<int64_t>() + begin * g.out_h * g.out_w;
      if (two_by_two)
        max_pool_2x2(x, part, y, idx);
      else
        max_pool_general(x, part, y, idx);
    });
  });
}

void CpuBackend::max_pool2d_backward(const Tensor& grad, const Tensor& indices,
                                     const Pool2dGeometry& g, const Tensor& grad_in) {
  dispatch_floating(grad.dtype(), "max_pool2d backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* gy = static_cast<const T*>(grad.raw_data());
    const int64_t* idx = indices.data_ptr<int64_t>();
    T* gx = static_cast<T*>(grad_in.raw_data());
    const int64_t ohw = g.out_h * g.out_w, ihw = g.in_h * g.in_w;
    parallel_for(g.planes, kPoolPlanesPerTask, [&](int64_t begin, int64_t end) {
      max_pool_backward_planes(gy + begin * ohw, idx + begin * ohw, ohw, ihw, end - begin,
                               gx + begin * ihw);
    });
  });
}

void CpuBackend::avg_pool2d(const Tensor& in, const Pool2dGeometry& g, const Tensor& out) {
  dispatch_floating(in.dtype(), "avg_pool2d", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* x = static_cast<const T*>(in.raw_data());
    T* y = static_cast<T*>(out.raw_data());
    for (int64_t p = 0; p < g.planes; ++p) {
      const T* plane = x + p * g.in_h * g.in_w;
      for (int64_t oh = 0; oh < g.out_h; ++oh)
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
          const int64_t h0 = oh * g.stride_h - g.pad_h, w0 = ow * g.stride_w - g.pad_w;
          T s = 0;
          int64_t count = 0;
          for (int64_t ih = h0; ih < h0 + g.kernel_h; ++ih)
            for (int64_t iw = w0; iw < w0 + g.kernel_w; ++iw) {
              if (ih < 0 || ih >= g.in_h || iw < 0 || iw >= g.in_w) continue;
              s += plane[ih * g.in_w + iw];
              ++count;
            }
          const int64_t div =
              g.count_include_pad ? g.kernel_h * g.kernel_w : std::max<int64_t>(count, 1);
          y[(p * g.out_h + oh) * g.out_w + ow] = s / static_cast<T>(div);
        }
    }
  });
}

void CpuBackend::avg_pool2d_backward(const Tensor& grad, const Pool2dGeometry& g,
                                     const Tensor& grad_in) {
  dispatch_floating(grad.dtype(), "avg_pool2d backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* gy = static_cast<const T*>(grad.raw_data());
    T* gx = static_cast<T*>(grad_in.raw_data());
    std::memset(gx, 0, sizeof(T) * g.planes * g.in_h * g.in_w);
    for (int64_t p = 0; p < g.planes; ++p) {
      T* plane = gx + p * g.in_h * g.in_w;
      for (int64_t oh = 0; oh < g.out_h; ++oh)
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
          const int64_t h0 = oh * g.stride_h - g.pad_h, w0 = ow * g.stride_w - g.pad_w;
          int64_t count = 0;
          for (int64_t ih = h0; ih < h0 + g.kernel_h; ++ih)
            for (int64_t iw = w0; iw < w0 + g.kernel_w; ++iw)
              count += (ih >= 0 && ih < g.in_h && iw >= 0 && iw < g.in_w);
          const int64_t div =
              g.count_include_pad ? g.kernel_h * g.kernel_w : std::max<int64_t>(count, 1);
          const T v = gy[(p * g.out_h + oh) * g.out_w + ow] / static_cast<T>(div);
          for (int64_t ih = h0; ih < h0 + g.kernel_h; ++ih)
            for (int64_t iw = w0; iw < w0 + g.kernel_w; ++iw)
              if (ih >= 0 && ih < g.in_h && iw >= 0 && iw < g.in_w) plane[ih * g.in_w + iw] += v;
        }
    }
  });
}

}  // namespace cohort::core::cpu
