// BatchNorm's state and its choice between batch and running statistics.
#include "core/nn/normalization.h"

#include "core/autograd/grad_mode.h"

namespace cohort::core::nn {

BatchNorm::BatchNorm(const BatchNormSpec& s) : spec_(s) {
  COHORT_CHECK(s.num_features > 0, "BatchNorm: num_features must be positive, got ",
               s.num_features);
  COHORT_CHECK(s.momentum > 0 && s.momentum <= 1, "BatchNorm: momentum must be in (0, 1], got ",
               s.momentum);
  if (s.affine) {
    register_parameter("weight", weight, ones({s.num_features}));
    register_parameter("bias", bias, zeros({s.num_features}));
  }
  if (s.track_running_stats) {
    register_buffer("running_mean", running_mean, zeros({s.num_features}));
    register_buffer("running_var", running_var, ones({s.num_features}));
    register_buffer("num_batches_tracked", num_batches_tracked,
                    zeros({}, TensorOptions(DType::kInt64)));
  }
}

Tensor BatchNorm::forward(const Tensor& x) {
  COHORT_CHECK(x.dim() >= 2 && x.size(1) == spec_.num_features, "batch_norm: expected input [N, ",
               spec_.num_features, ", ...], got ", shape_str(x.sizes()));
  const bool batch_stats = is_training() || !spec_.track_running_stats;
  BatchNormOptions o{batch_stats, spec_.momentum, spec_.eps};
  if (batch_stats && spec_.track_running_stats) {
    autograd::NoGradGuard guard;
    Tensor counted = add(num_batches_tracked.to(DType::kFloat64), 1.0).to(DType::kInt64);
    num_batches_tracked.copy_(counted);
  }
  // Evaluation with batch statistics (track_running_stats false) stays local, as in PyTorch.
  return batch_norm(x, weight, bias, running_mean, running_var, o,
                    is_training() ? stat_sum_ : StatSum());
}

}  // namespace cohort::core::nn
