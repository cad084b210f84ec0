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

}  // namespace

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
        Tensor gw = empty({G, Og, Kg}, gy.options());
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
