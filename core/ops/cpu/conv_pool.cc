// CPU im2col/col2im for convolution and 2-D pooling kernels, on contiguous NCHW data.
#include <cmath>
#include <cstring>
#include <limits>

#include "core/ops/cpu/cpu_backend.h"

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

void CpuBackend::max_pool2d(const Tensor& in, const Pool2dGeometry& g, const Tensor& out,
                            const Tensor& indices) {
  dispatch_floating(in.dtype(), "max_pool2d", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* x = static_cast<const T*>(in.raw_data());
    T* y = static_cast<T*>(out.raw_data());
    int64_t* idx = indices.data_ptr<int64_t>();
    for (int64_t p = 0; p < g.planes; ++p) {
      const T* plane = x + p * g.in_h * g.in_w;
      for (int64_t oh = 0; oh < g.out_h; ++oh) {
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
          T best = -std::numeric_limits<T>::infinity();
          int64_t bi = -1;
          for (int64_t ki = 0; ki < g.kernel_h; ++ki) {
            const int64_t ih = oh * g.stride_h - g.pad_h + ki;
            if (ih < 0 || ih >= g.in_h) continue;
            for (int64_t kj = 0; kj < g.kernel_w; ++kj) {
              const int64_t iw = ow * g.stride_w - g.pad_w + kj;
              if (iw < 0 || iw >= g.in_w) continue;
              const T v = plane[ih * g.in_w + iw];
              if (bi < 0 || v > best || v != v) {
                best = v;
                bi = ih * g.in_w + iw;
              }
            }
          }
          const int64_t o = (p * g.out_h + oh) * g.out_w + ow;
          y[o] = best;
          idx[o] = bi;
        }
      }
    }
  });
}

void CpuBackend::max_pool2d_backward(const Tensor& grad, const Tensor& indices,
                                     const Pool2dGeometry& g, const Tensor& grad_in) {
  dispatch_floating(grad.dtype(), "max_pool2d backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* gy = static_cast<const T*>(grad.raw_data());
    const int64_t* idx = indices.data_ptr<int64_t>();
    T* gx = static_cast<T*>(grad_in.raw_data());
    std::memset(gx, 0, sizeof(T) * g.planes * g.in_h * g.in_w);
    const int64_t ohw = g.out_h * g.out_w, ihw = g.in_h * g.in_w;
    for (int64_t p = 0; p < g.planes; ++p)
      for (int64_t o = 0; o < ohw; ++o) {
        const int64_t i = idx[p * ohw + o];
        if (i >= 0) gx[p * ihw + i] += gy[p * ohw + o];
      }
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
