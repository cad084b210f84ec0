// Batch normalisation over [N, C, *] inputs, with an optional cross-rank sum of the statistics
// (SyncBatchNorm). Built from the device-generic ops, so it runs wherever they run; the backward is
// the closed form rather than the recorded graph of those ops (one node, two saved tensors).
#include "core/autograd/grad_mode.h"
#include "core/autograd/node.h"
#include "core/ops/ops.h"

namespace cohort::core {

using autograd::SavedTensor;
using autograd::TensorList;

namespace {

// The dimensions statistics reduce over (all but the channel) and the shape that broadcasts a
// per-channel vector against the input.
void channel_layout(const Tensor& x, Shape& dims, Shape& per_channel) {
  per_channel.assign(static_cast<size_t>(x.dim()), 1);
  per_channel[1] = x.size(1);
  dims = {0};
  for (int64_t d = 2; d < x.dim(); ++d) dims.push_back(d);
}

}  // namespace

Tensor batch_norm(const Tensor& input, const Tensor& weight, const Tensor& bias,
                  Tensor running_mean, Tensor running_var, const BatchNormOptions& o,
                  const StatSum& sum_over_ranks) {
  COHORT_CHECK(input.dim() >= 2, "batch_norm: input must be [N, C, ...], got ",
               shape_str(input.sizes()));
  COHORT_CHECK(is_floating(input.dtype()), "batch_norm needs a floating-point input, got ",
               dtype_name(input.dtype()));
  const int64_t C = input.size(1);
  for (const Tensor* t :
       std::initializer_list<const Tensor*>{&weight, &bias, &running_mean, &running_var})
    if (t->defined())
      COHORT_CHECK(t->dim() == 1 && t->size(0) == C, "batch_norm: input has ", C,
                   " channels but a per-channel tensor has shape ", shape_str(t->sizes()));
  // Statistics of 16-bit activations (autocast) are taken in the parameters' float32.
  const DType compute = is_half_float(input) && weight.defined() ? weight.dtype() : input.dtype();
  const Tensor x = input.dtype() == compute ? input : input.to(compute);
  Shape dims, per_channel;
  channel_layout(x, dims, per_channel);

  if (!o.training) {
    COHORT_CHECK(running_mean.defined() && running_var.defined(),
                 "batch_norm: evaluation without running statistics needs training mode's batch "
                 "statistics (track_running_stats false)");
    Tensor scale = rsqrt(add(running_var.detach(), o.eps));
    if (weight.defined()) scale = mul(scale, weight);
    Tensor shift = neg(mul(running_mean.detach(), scale));
    if (bias.defined()) shift = add(shift, bias);
    Tensor y = add(mul(x, scale.reshape(per_channel)), shift.reshape(per_channel));
    return y.dtype() == input.dtype() ? y : y.to(input.dtype());
  }

  Tensor xhat, invstd;
  double count = 0;
  {
    autograd::NoGradGuard guard;
    const Tensor xd = x.detach();
    count = static_cast<double>(xd.numel() / std::max<int64_t>(C, 1));
    Tensor mean;
    if (sum_over_ranks) {
      // Two passes (sum, then squared deviations from the global mean) keep the variance exact
      // where E[x^2] - E[x]^2 would cancel; the count travels with the first sum.
      Tensor packed = cat({sum(xd, dims), full({1}, count, xd.options())}, 0);
      sum_over_ranks(packed);
      count = packed.slice(0, C, C + 1).to(Device::cpu()).to(DType::kFloat64).item<double>();
      mean = div(packed.slice(0, 0, C), count);
    } else {
      mean = div(sum(xd, dims), count);
    }
    COHORT_CHECK(count > 1 || !running_var.defined(),
                 "batch_norm: training needs more than one value per channel, got input ",
                 shape_str(input.sizes()));
    Tensor centred = sub(xd, mean.reshape(per_channel));
    Tensor squares = sum(square(centred), dims);
    if (sum_over_ranks) sum_over_ranks(squares);
    Tensor var = div(squares, count);
    invstd = rsqrt(add(var, o.eps));
    xhat = mul(centred, invstd.reshape(per_channel));
    if (running_mean.defined()) {
      // PyTorch's update: the running variance is the unbiased one.
      mul_(running_mean, 1 - o.momentum);
      add_(running_mean, mean.to(running_mean.dtype()), o.momentum);
      mul_(running_var, 1 - o.momentum);
      add_(running_var, mul(var, count / (count - 1)).to(running_var.dtype()), o.momentum);
    }
  }
  // A tensor of its own even without affine parameters: the node is recorded on y, not on xhat.
  Tensor y = weight.defined() || bias.defined() ? xhat : xhat.clone();
  {
    autograd::NoGradGuard guard;
    if (weight.defined()) y = mul(y, weight.detach().reshape(per_channel));
    if (bias.defined()) y = add(y, bias.detach().reshape(per_channel));
  }
  std::vector<Tensor> inputs{x};
  if (weight.defined()) inputs.push_back(weight);
  if (bias.defined()) inputs.push_back(bias);
  if (autograd::any_requires_grad(inputs)) {
    SavedTensor sxhat(xhat), sinv(invstd), sw(weight.defined() ? weight.detach() : Tensor());
    const bool has_w = weight.defined(), has_b = bias.defined();
    autograd::record("BatchNormBackward", inputs, {&y},
                     [=](const TensorList& g, const std::vector<bool>& needs) {
                       const Tensor& xh = sxhat.get();
                       const Tensor gy = g[0];
                       // The parameters' gradients are this rank's own sums: DDP averages them
                       // afterwards.
                       Tensor sum_g = sum(gy, dims), sum_gx = sum(mul(gy, xh), dims);
                       TensorList r(1 + (has_w ? 1 : 0) + (has_b ? 1 : 0));
                       if (needs[0]) {
                         Tensor sg = sum_g, sgx = sum_gx;
                         if (sum_over_ranks) {
                           // Every rank's loss depends on every rank's inputs through the shared
                           // statistics.
                           Tensor packed = cat({sum_g, sum_gx}, 0);
                           sum_over_ranks(packed);
                           sg = packed.slice(0, 0, C);
                           sgx = packed.slice(0, C, 2 * C);
                         }
                         Tensor scale = sinv.get();
                         if (has_w) scale = mul(scale, sw.get());
                         Tensor inner = sub(sub(gy, div(sg, count).reshape(per_channel)),
                                            mul(xh, div(sgx, count).reshape(per_channel)));
                         r[0] = mul(inner, scale.reshape(per_channel));
                       }
                       size_t i = 1;
                       if (has_w && needs[i]) r[i] = sum_gx;
                       if (has_w) ++i;
                       if (has_b && needs[i]) r[i] = sum_g;
                       return r;
                     });
  }
  return y.dtype() == input.dtype() ? y : y.to(input.dtype());
}

}  // namespace cohort::core
