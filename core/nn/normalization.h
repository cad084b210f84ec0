// BatchNorm1d / BatchNorm2d with PyTorch's parameters and buffers (weight, bias, running_mean,
// running_var, num_batches_tracked), and its SyncBatchNorm mode: given a way to sum over the ranks,
// the batch statistics (and their gradients) are those of the whole job's batch.
#pragma once

#include "core/nn/module.h"
#include "core/ops/ops.h"

namespace cohort::core::nn {

struct BatchNormSpec {
  int64_t num_features = 0;
  double eps = 1e-5, momentum = 0.1;
  bool affine = true, track_running_stats = true;
  // Wants SyncBatchNorm when trained data-parallel: the trainer calls set_stat_sum.
  bool sync = false;
};

class BatchNorm : public Module {
 public:
  explicit BatchNorm(const BatchNormSpec& spec);
  Tensor forward(const Tensor& x) override;
  // Makes this layer a SyncBatchNorm: `sum` adds a tensor over the ranks in place (blocking, on
  // the job's process group). Call it on every rank or on none.
  void set_stat_sum(StatSum sum) { stat_sum_ = std::move(sum); }
  bool synchronised() const { return static_cast<bool>(stat_sum_); }
  const BatchNormSpec& spec() const { return spec_; }

  Tensor weight, bias, running_mean, running_var, num_batches_tracked;

 private:
  BatchNormSpec spec_;
  StatSum stat_sum_;
};

}  // namespace cohort::core::nn
