// conv2d through im2col + one batched GEMM per group, and 2-D max/avg pooling.
#include "core/autograd/grad_mode.h"
#include "core/autograd/node.h"
#include "core/ops/backend.h"
#include "core/ops/gemm.h"
#include "core/ops/ops.h"

namespace cohort::core {

using autograd::SavedTensor;
using autograd::TensorList;
using Needs = std::vector<bool>;

namespace {

int64_t out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d, const char* op) {
  int64_t eff = d * (k - 1) + 1;
  int64_t o = (in + 2 * p - eff) / s + 1;
  COHORT_CHECK(in + 2 * p >= eff && o > 0, op, ": input size ", in, " (padding ", p,
               ") is too small for kernel ", k, " with dilation ", d);
  return o;
}

// Why Winograd does not apply to this geometry, or nullptr when it does.
const char* winograd_unsuitable(const Tensor& weight, const Conv2dOptions& o) {
  if (weight.dim() != 4 || weight.size(2) != 3 || weight.size(3) != 3) return "needs a 3x3 kernel";
  if (o.stride.first != 1 || o.stride.second != 1) return "needs stride 1";
  if (o.dilation.first != 1 || o.dilation.second != 1) return "needs dilation 1";
  if (o.groups != 1) return "needs groups=1";
  return nullptr;
}

// kron(G, G) for F(2x2, 3x3), G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]: row i*4+j, column
// k*3+l holds G[i][k] G[j][l], so u = K w[o, c] (flattened) is G w G^T for every (o, c) in one
// GEMM. Every entry is exact in any floating dtype.
Tensor winograd_weight_matrix(const TensorOptions& opts) {
  static constexpr double G[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
  std::vector<double> k(16 * 9);
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j)
      for (int a = 0; a < 3; ++a)
        for (int b = 0; b < 3; ++b) k[(i * 4 + j) * 9 + a * 3 + b] = G[i][a] * G[j][b];
  return from_vector(k, {16, 9}).to(opts.dtype).to(opts.device);
}

// [16, rows, tiles] for the transformed positions, each position's matrix 64 bytes further into
// the cache sets than the last: at a whole multiple of 4 KiB apart (the plain layout, for most
// sizes) the transforms' 16 streams would all fall into one L1 set.
Tensor winograd_buffer(int64_t rows, int64_t tiles, const TensorOptions& opts) {
  const int64_t n = rows * tiles, skewed = (n + 1023) / 1024 * 1024 + 16;
  return empty({16, skewed}, opts).slice(1, 0, n).view({16, rows, tiles});
}

// Images per pass of a Winograd convolution: about this many tiles, so that the transformed
// output of a pass (16 O tiles values) stays near the cache instead of growing with the batch.
constexpr int64_t kWinogradPassTiles = 1024;

// Winograd F(2x2, 3x3): u = G w G^T, v = B^T d B per input tile, m[i] = u[i] v[i] as 16 GEMMs,
// y = A^T m A per output tile. Backward runs the adjoint of each step. What it keeps is the
// transformed input v (16 C tiles values, less than im2col's 9 C out_h out_w).
Tensor conv2d_winograd(const Tensor& x, const Tensor& w, const Tensor& bias,
                       const Conv2dGeometry& g) {
  const int64_t C = g.in_channels, O = g.out_channels;
  const int64_t per_image = ((g.out_h + 1) / 2) * ((g.out_w + 1) / 2), tiles = g.batch * per_image;
  const int64_t npass = std::max<int64_t>(1, (tiles + kWinogradPassTiles - 1) / kWinogradPassTiles);
  const int64_t step = (g.batch + npass - 1) / npass;  // even passes: no small straggler
  // Runs fn(first image, images, geometry of those images) pass by pass.
  auto passes = [=](auto&& fn) {
    for (int64_t n0 = 0; n0 < g.batch; n0 += step) {
      Conv2dGeometry gp = g;
      gp.batch = std::min(step, g.batch - n0);
      fn(n0, gp.batch, gp);
    }
  };
  std::vector<Tensor> inputs{x, w};
  if (bias.defined()) inputs.push_back(bias);
  const bool backward = autograd::any_requires_grad(inputs);

  Tensor kmat = winograd_weight_matrix(x.options());
  Tensor u, v = backward ? winograd_buffer(C, tiles, x.options()) : Tensor();
  Tensor out = empty({g.batch, O, g.out_h, g.out_w}, x.options());
  {
    autograd::NoGradGuard guard;
    Backend& be = backend_for(x.device());
    u = matmul(kmat, w.detach().view({O * C, 9}).t()).view({16, O, C});
    Tensor b = bias.defined() ? bias.detach().contiguous() : Tensor();
    passes([&](int64_t n0, int64_t nb, const Conv2dGeometry& gp) {
      Tensor vp = backward ? v.slice(2, n0 * per_image, (n0 + nb) * per_image)
                           : winograd_buffer(C, nb * per_image, x.options());
      be.winograd_input(x.detach().slice(0, n0, n0 + nb), gp, vp);
      Tensor m = winograd_buffer(O, nb * per_image, x.options());
      detail::batched_gemm(u, vp, m, 0);
      be.winograd_output(m, b, gp, out.slice(0, n0, n0 + nb));
    });
  }
  if (backward) {
    const bool has_bias = bias.defined();
    autograd::record("Conv2dBackward", inputs, {&out}, [=](const TensorList& gr, const Needs& nd) {
      Tensor gy = gr[0].contiguous();
      Backend& be = backend_for(gy.device());
      Tensor gx = nd[0] ? empty({g.batch, C, g.in_h, g.in_w}, gy.options()) : Tensor();
      // An empty batch has no pass to write gu: its gradient is zero.
      Tensor gu = !nd[1]         ? Tensor()
                  : g.batch == 0 ? zeros({16, O, C}, gy.options())
                                 : empty({16, O, C}, gy.options());
      passes([&](int64_t n0, int64_t nb, const Conv2dGeometry& gp) {
        Tensor gm = winograd_buffer(O, nb * per_image, gy.options());
        be.winograd_output_backward(gy.slice(0, n0, n0 + nb), gp, gm);
        if (gx.defined()) {
          Tensor gv = winograd_buffer(C, nb * per_image, gy.options());
          detail::batched_gemm(u.transpose(1, 2), gm, gv, 0);
          be.winograd_input_backward(gv, gp, gx.slice(0, n0, n0 + nb));
        }
        if (gu.defined()) {
          Tensor vp = v.slice(2, n0 * per_image, (n0 + nb) * per_image);
          detail::batched_gemm(gm, vp.transpose(1, 2), gu, n0 == 0 ? 0 : 1);
        }
      });
      TensorList r(has_bias ? 3 : 2);
      r[0] = gx;
      if (gu.defined()) r[1] = matmul(gu.view({16, O * C}).t(), kmat).view({O, C, 3, 3});
      if (has_bias && nd[2]) r[2] = sum(gy, {0, 2, 3});
      return r;
    });
  }
  return out;
}

// The whole convolution in the device's library (cuDNN); backward saves x and w.
Tensor conv2d_library(const Tensor& x, const Tensor& w, const Tensor& bias,
                      const Conv2dGeometry& g) {
  Backend& be = backend_for(x.device());
  Tensor out = empty({g.batch, g.out_channels, g.out_h, g.out_w}, x.options());
  Tensor b = bias.defined() ? bias.detach().contiguous() : Tensor();
  be.conv2d_forward(x.detach(), w.detach(), b, g, out);
  std::vector<Tensor> inputs{x, w};
  if (bias.defined()) inputs.push_back(bias);
  if (autograd::any_requires_grad(inputs)) {
    SavedTensor sx(x), sw(w);
    const bool has_bias = bias.defined();
    autograd::record("Conv2dBackward", inputs, {&out}, [=](const TensorList& gr, const Needs& nd) {
      Tensor gy = gr[0].contiguous();
      TensorList r(has_bias ? 3 : 2);
      if (nd[0]) r[0] = empty({g.batch, g.in_channels, g.in_h, g.in_w}, gy.options());
      if (nd[1]) r[1] = empty(sw.get().sizes(), gy.options());
      if (has_bias && nd[2]) r[2] = empty({g.out_channels}, gy.options());
      backend_for(gy.device())
          .conv2d_backward(gy, sx.get(), sw.get(), g, r[0], r[1], has_bias ? r[2] : Tensor());
      return r;
    });
  }
  return out;
}

}  // namespace

Conv2dAlgorithm conv2d_algorithm(const Tensor& x, const Tensor& weight, const Conv2dOptions& o) {
  const char* why_not = winograd_unsuitable(weight, o);
  switch (o.algorithm) {
    case Conv2dAlgorithm::kIm2col:
      return Conv2dAlgorithm::kIm2col;
    case Conv2dAlgorithm::kWinograd:
      COHORT_CHECK(why_not == nullptr, "conv2d: the Winograd algorithm ", why_not ? why_not : "");
      return Conv2dAlgorithm::kWinograd;
    case Conv2dAlgorithm::kLibrary:
      COHORT_CHECK(backend_for(x.device()).has_conv2d(x.dtype()), "conv2d: ", x.device().str(),
                   " has no convolution library for ", dtype_name(x.dtype()));
      return Conv2dAlgorithm::kLibrary;
    case Conv2dAlgorithm::kAuto:
      break;
  }
  // Below 16 channels the 16 GEMMs are too thin to repay the transforms. float64 is asked for
  // precision, so it keeps im2col's rounding.
  const bool suits = why_not == nullptr && x.device().is_cpu() && x.dtype() == DType::kFloat32 &&
                     x.dim() >= 3 && x.size(-3) >= 16 && weight.size(0) >= 16;
  if (suits) return Conv2dAlgorithm::kWinograd;
  if (backend_for(x.device()).has_conv2d(x.dtype())) return Conv2dAlgorithm::kLibrary;
  return Conv2dAlgorithm::kIm2col;
}

Tensor conv2d(const Tensor& input, const Tensor& weight, const Tensor& bias,
              const Conv2dOptions& o) {
  COHORT_CHECK(input.dim() == 4 || input.dim() == 3,
               "conv2d: input must be [N, C, H, W] or [C, H, W], got ", shape_str(input.sizes()));
  if (input.dim() == 3) return conv2d(input.unsqueeze(0), weight, bias, o).squeeze(0);
  COHORT_CHECK(weight.dim() == 4, "conv2d: weight must be [O, C/groups, kh, kw], got ",
               shape_str(weight.sizes()));
  COHORT_CHECK(o.groups >= 1 && input.size(1) % o.groups == 0 && weight.size(0) % o.groups == 0,
               "conv2d: groups=", o.groups, " must divide both input channels (", input.size(1),
               ") and output channels (", weight.size(0), ")");
  COHORT_CHECK(weight.size(1) * o.groups == input.size(1), "conv2d: weight ",
               shape_str(weight.sizes()), " expects ", weight.size(1) * o.groups,
               " input channels, got ", input.size(1));
  COHORT_CHECK(
      o.stride.first > 0 && o.stride.second > 0 && o.dilation.first > 0 && o.dilation.second > 0,
      "conv2d: stride and dilation must be positive");
  Conv2dGeometry g{};
  g.batch = input.size(0);
  g.in_channels = input.size(1);
  g.in_h = input.size(2);
  g.in_w = input.size(3);
  g.out_channels = weight.size(0);
  g.kernel_h = weight.size(2);
  g.kernel_w = weight.size(3);
  g.stride_h = o.stride.first;
  g.stride_w = o.stride.second;
  g.pad_h = o.padding.first;
  g.pad_w = o.padding.second;
  g.dilation_h = o.dilation.first;
  g.dilation_w = o.dilation.second;
  g.groups = o.groups;
  g.out_h = out_size(g.in_h, g.kernel_h, g.stride_h, g.pad_h, g.dilation_h, "conv2d");
  g.out_w = out_size(g.in_w, g.kernel_w, g.stride_w, g.pad_w, g.dilation_w, "conv2d");
  if (bias.defined()) {
    COHORT_CHECK(bias.dim() == 1 && bias.size(0) == g.out_channels, "conv2d: bias of shape ",
                 shape_str(bias.sizes()), " does not match ", g.out_channels, " output channels");
  }

  const Conv2dAlgorithm algorithm = conv2d_algorithm(input, weight, o);
  if (algorithm == Conv2dAlgorithm::kWinograd)
    return conv2d_winograd(input.contiguous(), weight.contiguous(), bias, g);
  if (algorithm == Conv2dAlgorithm::kLibrary)
    return conv2d_library(input.contiguous(), weight.contiguous(), bias, g);

  const int64_t G = g.groups, Og = g.out_channels / G;
  const int64_t K = g.in_channels * g.kernel_h * g.kernel_w, Kg = K / G, ohw = g.out_h * g.out_w;
  Tensor x = input.contiguous(), w = weight.contiguous();
  Tensor col = empty({g.batch, K, ohw}, x.options());
  Tensor out = empty({g.batch, g.out_channels, g.out_h, g.out_w}, x.options());
  {
    autograd::NoGradGuard guard;
    Backend& be = backend_for(x.device());
    for (int64_t n = 0; n < g.batch; ++n) be.im2col(x.detach(), g, n, col.select(0, n));
    Tensor w3 = w.detach().view({G, Og, Kg});
    Tensor out3 = out.view({g.batch, G * Og, ohw});
    double beta = 0;
    if (bias.defined()) {
      be.copy(bias.view({1, g.out_channels, 1}), out3);
      beta = 1;
    }
    for (int64_t gi = 0; gi < G; ++gi) {
      Tensor wg = w3.select(0, gi).unsqueeze(0);          // [1, Og, Kg]
      Tensor cg = col.slice(1, gi * Kg, (gi + 1) * Kg);   // [N, Kg, ohw]
      Tensor og = out3.slice(1, gi * Og, (gi + 1) * Og);  // [N, Og, ohw]
      if (G == 1) {
        detail::batched_gemm(wg, cg, og, beta);
      } else {
        for (int64_t n = 0; n < g.batch; ++n)
          detail::batched_gemm(wg, cg.select(0, n).unsqueeze(0), og.select(0, n).unsqueeze(0),
                               beta);
      }
    }
  }
  std::vector<Tensor> inputs{x, w};
  if (bias.defined()) inputs.push_back(bias);
  if (autograd::any_requires_grad(inputs)) {
    SavedTensor sw(w), scol(col);
    bool has_bias = bias.defined();
    autograd::record("Conv2dBackward", inputs, {&out}, [=](const TensorList& gr, const Needs& nd) {
      Tensor gy = gr[0].contiguous().view({g.batch, g.out_channels, ohw});
      Backend& be = backend_for(gy.device());
      Tensor w3 = sw.get().view({G, Og, Kg});
      TensorList r(has_bias ? 3 : 2);
      if (nd[0]) {
        Tensor gcol = empty({K, ohw}, gy.options());
        Tensor gx = empty({g.batch, g.in_channels, g.in_h, g.in_w}, gy.options());
        for (int64_t n = 0; n < g.batch; ++n) {
          for (int64_t gi = 0; gi < G; ++gi) {
            Tensor wt = w3.select(0, gi).t().unsqueeze(0);                  // [1, Kg, Og]
            Tensor gyn = gy.select(0, n).slice(0, gi * Og, (gi + 1) * Og);  // [Og, ohw]
            detail::batched_gemm(wt, gyn.unsqueeze(0),
                                 gcol.slice(0, gi * Kg, (gi + 1) * Kg).unsqueeze(0), 0);
          }
          be.col2im(gcol, g, n, gx);
        }
        r[0] = gx;
      }
      if (nd[1]) {
        // Accumulated image by image: an empty batch leaves it zero.
        Tensor gw =
            g.batch == 0 ? zeros({G, Og, Kg}, gy.options()) : empty({G, Og, Kg}, gy.options());
        const Tensor& c = scol.get();
        for (int64_t gi = 0; gi < G; ++gi) {
          Tensor gwg = gw.select(0, gi).unsqueeze(0);
          for (int64_t n = 0; n < g.batch; ++n) {
            Tensor gyn =
                gy.select(0, n).slice(0, gi * Og, (gi + 1) * Og).unsqueeze(0);  // [1, Og, ohw]
            Tensor cn =
                c.select(0, n).slice(0, gi * Kg, (gi + 1) * Kg).t().unsqueeze(0);  // [1, ohw, Kg]
            detail::batched_gemm(gyn, cn, gwg, n == 0 ? 0.0 : 1.0);
          }
        }
        r[1] = gw.view(sw.get().sizes());
      }
      if (has_bias && nd[2]) r[2] = sum(gy, {0, 2});
      return r;
    });
  }
  return out;
}

namespace {

Pool2dGeometry pool_geometry(const Tensor& x, const Pool2dOptions& o, const char* op) {
  COHORT_CHECK(x.dim() == 4 || x.dim() == 3, op, ": input must be [N, C, H, W] or [C, H, W], got ",
               shape_str(x.sizes()));
  Pool2dGeometry g{};
  g.kernel_h = o.kernel.first;
  g.kernel_w = o.kernel.second;
  g.stride_h = o.stride.first ? o.stride.first : g.kernel_h;
  g.stride_w = o.stride.second ? o.stride.second : g.kernel_w;
  g.pad_h = o.padding.first;
  g.pad_w = o.padding.second;
  COHORT_CHECK(g.kernel_h > 0 && g.kernel_w > 0 && g.stride_h > 0 && g.stride_w > 0, op,
               ": kernel and stride must be positive");
  COHORT_CHECK(2 * g.pad_h <= g.kernel_h && 2 * g.pad_w <= g.kernel_w, op,
               ": padding must be at most half the kernel size");
  g.in_h = x.size(-2);
  g.in_w = x.size(-1);
  g.planes = x.numel() / std::max<int64_t>(g.in_h * g.in_w, 1);
  g.out_h = out_size(g.in_h, g.kernel_h, g.stride_h, g.pad_h, 1, op);
  g.out_w = out_size(g.in_w, g.kernel_w, g.stride_w, g.pad_w, 1, op);
  g.count_include_pad = o.count_include_pad;
  return g;
}

Shape pooled_shape(const Tensor& x, const Pool2dGeometry& g) {
  Shape s = x.sizes();
  s[s.size() - 2] = g.out_h;
  s[s.size() - 1] = g.out_w;
  return s;
}

}  // namespace

Tensor max_pool2d(const Tensor& input, const Pool2dOptions& o) {
  Pool2dGeometry g = pool_geometry(input, o, "max_pool2d");
  Tensor x = input.contiguous();
  Tensor out = empty(pooled_shape(x, g), x.options());
  Tensor idx = empty(out.sizes(), x.options().with_dtype(DType::kInt64));
  backend_for(x.device()).max_pool2d(x.detach(), g, out, idx);
  if (autograd::any_requires_grad({&x})) {
    SavedTensor si(idx);
    Shape in_shape = x.sizes();
    autograd::record("MaxPool2dBackward", {x}, {&out}, [=](const TensorList& gr, const Needs&) {
      Tensor gc = gr[0].contiguous();
      Tensor gi = empty(in_shape, gc.options());
      backend_for(gc.device()).max_pool2d_backward(gc, si.get(), g, gi);
      return TensorList{gi};
    });
  }
  return out;
}

Tensor avg_pool2d(const Tensor& input, const Pool2dOptions& o) {
  Pool2dGeometry g = pool_geometry(input, o, "avg_pool2d");
  Tensor x = input.contiguous();
  Tensor out = empty(pooled_shape(x, g), x.options());
  backend_for(x.device()).avg_pool2d(x.detach(), g, out);
  if (autograd::any_requires_grad({&x})) {
    Shape in_shape = x.sizes();
    autograd::record("AvgPool2dBackward", {x}, {&out}, [=](const TensorList& gr, const Needs&) {
      Tensor gc = gr[0].contiguous();
      Tensor gi = empty(in_shape, gc.options());
      backend_for(gc.device()).avg_pool2d_backward(gc, g, gi);
      return TensorList{gi};
    });
  }
  return out;
}

}  // namespace cohort::core
