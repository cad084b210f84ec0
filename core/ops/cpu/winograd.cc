// CPU transforms of Winograd F(2x2, 3x3) convolution (Lavin & Gray, "Fast Algorithms for
// Convolutional Neural Networks", 2016), on contiguous NCHW tensors. The 16 GEMMs between the
// transforms run in core/ops/conv.cc.
//
// One output tile is 2x2; it reads the 4x4 input window starting at (2th - pad_h, 2tw - pad_w).
//   v = B^T d B     B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]
//   y = A^T m A     A^T = [1 1 1 0; 0 1 -1 -1]
// Each plane goes through a zero-padded copy, so no window needs a bounds test, and every
// transform is split into a pass over whole rows (contiguous, vectorised) and a pass along them.
// The 16 positions of a tile are read or written in step, so the caller lays their matrices out
// so that they do not share cache sets (see winograd_buffer in core/ops/conv.cc).
#include <algorithm>
#include <cstring>
#include <vector>

#include "core/ops/cpu/cpu_backend.h"
#include "core/util/threads.h"

namespace cohort::core::cpu {
namespace {

struct Tiles {
  int64_t h, w, per_image;  // tiles per column, per row, per image
  // The padded plane, (2h + 2) x (2w + 2), holds the whole image at (pad_h, pad_w):
  // 2 ceil(out / 2) + 2 >= out + 2 = in + 2 pad.
  int64_t pad_h, pad_w;
};

Tiles tiles_of(const Conv2dGeometry& g) {
  Tiles t{};
  t.h = (g.out_h + 1) / 2;
  t.w = (g.out_w + 1) / 2;
  t.per_image = t.h * t.w;
  t.pad_h = 2 * t.h + 2;
  t.pad_w = 2 * t.w + 2;
  return t;
}

// Planes (image, channel) per parallel_for range: a 14x14 plane is about a microsecond of work.
// Each range runs in a function of its own with the geometry by value: inside the range lambda,
// reached through captured references, GCC reloaded them after every store.
constexpr int64_t kPlanesPerTask = 32;

// Where position i of tile t of row r lives in v or m: i * pos + r * row + t.
struct Layout {
  int64_t pos, row;
};
Layout layout_of(const Tensor& t) { return {t.stride(0), t.stride(1)}; }

template <typename T>
void input_transform_planes(const T* x, const Conv2dGeometry g, T* v, Layout l, int64_t begin,
                            int64_t end) {
  const Tiles tl = tiles_of(g);
  const int64_t pw = tl.pad_w, rows = g.in_h, cols = g.in_w;
  std::vector<T> padded(tl.pad_h * pw), rowt(4 * pw);
  for (int64_t nc = begin; nc < end; ++nc) {
    const int64_t n = nc / g.in_channels, c = nc % g.in_channels;
    const T* plane = x + nc * g.in_h * g.in_w;
    std::fill(padded.begin(), padded.end(), T(0));
    for (int64_t r = 0; r < rows; ++r)
      std::memcpy(&padded[(r + g.pad_h) * pw + g.pad_w], plane + r * g.in_w, sizeof(T) * cols);
    T* vc = v + c * l.row + n * tl.per_image;
    for (int64_t th = 0; th < tl.h; ++th) {
      const T* r0 = &padded[2 * th * pw];
      const T *r1 = r0 + pw, *r2 = r1 + pw, *r3 = r2 + pw;
      T *t0 = rowt.data(), *t1 = t0 + pw, *t2 = t1 + pw, *t3 = t2 + pw;
      for (int64_t q = 0; q < pw; ++q) {  // B^T down the columns
        t0[q] = r0[q] - r2[q];
        t1[q] = r1[q] + r2[q];
        t2[q] = r2[q] - r1[q];
        t3[q] = r1[q] - r3[q];
      }
      for (int k = 0; k < 4; ++k) {  // ... and along the rows
        const T* tk = rowt.data() + k * pw;
        T* o0 = vc + 4 * k * l.pos + th * tl.w;
        T *o1 = o0 + l.pos, *o2 = o1 + l.pos, *o3 = o2 + l.pos;
        for (int64_t tw = 0; tw < tl.w; ++tw) {
          const T a = tk[2 * tw], b = tk[2 * tw + 1], cc = tk[2 * tw + 2], d = tk[2 * tw + 3];
          o0[tw] = a - cc;
          o1[tw] = b + cc;
          o2[tw] = cc - b;
          o3[tw] = b - d;
        }
      }
    }
  }
}

template <typename T>
void input_transform(const T* x, const Conv2dGeometry& g, T* v, Layout l) {
  parallel_for(g.batch * g.in_channels, kPlanesPerTask, [&](int64_t begin, int64_t end) {
    input_transform_planes<T>(x, g, v, l, begin, end);
  });
}

// The adjoint of input_transform: the gradient of the input from that of v.
template <typename T>
void input_transform_backward_planes(const T* v, Layout l, const Conv2dGeometry g, T* x,
                                     int64_t begin, int64_t end) {
  const Tiles tl = tiles_of(g);
  const int64_t pw = tl.pad_w, rows = g.in_h, cols = g.in_w;
  std::vector<T> padded(tl.pad_h * pw), rowt(4 * pw);
  for (int64_t nc = begin; nc < end; ++nc) {
    const int64_t n = nc / g.in_channels, c = nc % g.in_channels;
    std::fill(padded.begin(), padded.end(), T(0));
    const T* vc = v + c * l.row + n * tl.per_image;
    for (int64_t th = 0; th < tl.h; ++th) {
      std::fill(rowt.begin(), rowt.end(), T(0));
      for (int k = 0; k < 4; ++k) {  // B along the rows; neighbouring windows overlap by two
        T* tk = rowt.data() + k * pw;
        const T* i0 = vc + 4 * k * l.pos + th * tl.w;
        const T *i1 = i0 + l.pos, *i2 = i1 + l.pos, *i3 = i2 + l.pos;
        for (int64_t tw = 0; tw < tl.w; ++tw) {
          const T a = i0[tw], b = i1[tw], cc = i2[tw], d = i3[tw];
          tk[2 * tw] += a;
          tk[2 * tw + 1] += b - cc + d;
          tk[2 * tw + 2] += b + cc - a;
          tk[2 * tw + 3] -= d;
        }
      }
      T* r0 = &padded[2 * th * pw];
      T *r1 = r0 + pw, *r2 = r1 + pw, *r3 = r2 + pw;
      const T *t0 = rowt.data(), *t1 = t0 + pw, *t2 = t1 + pw, *t3 = t2 + pw;
      for (int64_t q = 0; q < pw; ++q) {  // ... and down the columns
        r0[q] += t0[q];
        r1[q] += t1[q] - t2[q] + t3[q];
        r2[q] += t1[q] + t2[q] - t0[q];
        r3[q] -= t3[q];
      }
    }
    // Padding positions have no gradient to give; every image position is inside the plane.
    T* plane = x + nc * g.in_h * g.in_w;
    for (int64_t r = 0; r < rows; ++r)
      std::memcpy(plane + r * g.in_w, &padded[(r + g.pad_h) * pw + g.pad_w], sizeof(T) * cols);
  }
}

template <typename T>
void input_transform_backward(const T* v, Layout l, const Conv2dGeometry& g, T* x) {
  parallel_for(g.batch * g.in_channels, kPlanesPerTask, [&](int64_t begin, int64_t end) {
    input_transform_backward_planes<T>(v, l, g, x, begin, end);
  });
}

template <typename T>
void output_transform_planes(const T* m, Layout l, const T* bias, const Conv2dGeometry g, T* y,
                             int64_t begin, int64_t end) {
  const Tiles tl = tiles_of(g);
  const int64_t w2 = 2 * tl.w;
  std::vector<T> rows(2 * w2);
  for (int64_t no = begin; no < end; ++no) {
    const int64_t n = no / g.out_channels, o = no % g.out_channels;
    const T b0 = bias ? bias[o] : T(0);
    const T* mo = m + o * l.row + n * tl.per_image;
    T* plane = y + no * g.out_h * g.out_w;
    for (int64_t th = 0; th < tl.h; ++th) {
      T *y0 = rows.data(), *y1 = y0 + w2;
      for (int64_t tw = 0; tw < tl.w; ++tw) {
        T s[4][2];
        for (int k = 0; k < 4; ++k) {  // A^T along the rows
          const T* ik = mo + 4 * k * l.pos + th * tl.w + tw;
          const T a = ik[0], b = ik[l.pos], cc = ik[2 * l.pos], d = ik[3 * l.pos];
          s[k][0] = a + b + cc;
          s[k][1] = b - cc - d;
        }
        for (int j = 0; j < 2; ++j) {  // ... and down the columns
          y0[2 * tw + j] = s[0][j] + s[1][j] + s[2][j] + b0;
          y1[2 * tw + j] = s[1][j] - s[2][j] - s[3][j] + b0;
        }
      }
      // A 2x2 tile may hang over an odd-sized output; those values are dropped.
      std::memcpy(plane + 2 * th * g.out_w, y0, sizeof(T) * g.out_w);
      if (2 * th + 1 < g.out_h)
        std::memcpy(plane + (2 * th + 1) * g.out_w, y1, sizeof(T) * g.out_w);
    }
  }
}

template <typename T>
void output_transform(const T* m, Layout l, const T* bias, const Conv2dGeometry& g, T* y) {
  parallel_for(g.batch * g.out_channels, kPlanesPerTask, [&](int64_t begin, int64_t end) {
    output_transform_planes<T>(m, l, bias, g, y, begin, end);
  });
}

// The adjoint of output_transform (without the bias): m = A dy A^T.
template <typename T>
void output_transform_backward_planes(const T* dy, const Conv2dGeometry g, T* m, Layout l,
                                      int64_t begin, int64_t end) {
  const Tiles tl = tiles_of(g);
  const int64_t w2 = 2 * tl.w;
  // Outputs past an odd edge were dropped, so their gradient is zero: `rows` past out_w stays 0.
  std::vector<T> rows(2 * w2, T(0));
  for (int64_t no = begin; no < end; ++no) {
    const int64_t n = no / g.out_channels, o = no % g.out_channels;
    const T* plane = dy + no * g.out_h * g.out_w;
    T* mo = m + o * l.row + n * tl.per_image;
    for (int64_t th = 0; th < tl.h; ++th) {
      T *d0 = rows.data(), *d1 = d0 + w2;
      std::memcpy(d0, plane + 2 * th * g.out_w, sizeof(T) * g.out_w);
      if (2 * th + 1 < g.out_h)
        std::memcpy(d1, plane + (2 * th + 1) * g.out_w, sizeof(T) * g.out_w);
      else
        std::fill(d1, d1 + w2, T(0));
      for (int64_t tw = 0; tw < tl.w; ++tw) {
        const T a0 = d0[2 * tw], a1 = d0[2 * tw + 1], b0 = d1[2 * tw], b1 = d1[2 * tw + 1];
        const T u[4][2] = {{a0, a1}, {a0 + b0, a1 + b1}, {a0 - b0, a1 - b1}, {-b0, -b1}};
        for (int k = 0; k < 4; ++k) {  // A down the columns, then along the rows
          T* ok = mo + 4 * k * l.pos + th * tl.w + tw;
          ok[0] = u[k][0];
          ok[l.pos] = u[k][0] + u[k][1];
          ok[2 * l.pos] = u[k][0] - u[k][1];
          ok[3 * l.pos] = -u[k][1];
        }
      }
    }
  }
}

template <typename T>
void output_transform_backward(const T* dy, const Conv2dGeometry& g, T* m, Layout l) {
  parallel_for(g.batch * g.out_channels, kPlanesPerTask, [&](int64_t begin, int64_t end) {
    output_transform_backward_planes<T>(dy, g, m, l, begin, end);
  });
}

}  // namespace

void CpuBackend::winograd_input(const Tensor& x, const Conv2dGeometry& g, const Tensor& v) {
  dispatch_floating(x.dtype(), "conv2d", [&](auto tag) {
    using T = typename decltype(tag)::type;
    input_transform<T>(static_cast<const T*>(x.raw_data()), g, static_cast<T*>(v.raw_data()),
                       layout_of(v));
  });
}

void CpuBackend::winograd_input_backward(const Tensor& v, const Conv2dGeometry& g,
                                         const Tensor& x) {
  dispatch_floating(x.dtype(), "conv2d backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    input_transform_backward<T>(static_cast<const T*>(v.raw_data()), layout_of(v), g,
                                static_cast<T*>(x.raw_data()));
  });
}

void CpuBackend::winograd_output(const Tensor& m, const Tensor& bias, const Conv2dGeometry& g,
                                 const Tensor& y) {
  dispatch_floating(y.dtype(), "conv2d", [&](auto tag) {
    using T = typename decltype(tag)::type;
    output_transform<T>(static_cast<const T*>(m.raw_data()), layout_of(m),
                        bias.defined() ? static_cast<const T*>(bias.raw_data()) : nullptr, g,
                        static_cast<T*>(y.raw_data()));
  });
}

void CpuBackend::winograd_output_backward(const Tensor& dy, const Conv2dGeometry& g,
                                          const Tensor& m) {
  dispatch_floating(dy.dtype(), "conv2d backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    output_transform_backward<T>(static_cast<const T*>(dy.raw_data()), g,
                                 static_cast<T*>(m.raw_data()), layout_of(m));
  });
}

}  // namespace cohort::core::cpu
