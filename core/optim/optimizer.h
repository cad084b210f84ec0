// Optimisers (SGD with momentum/nesterov/weight decay, AdamW), learning-rate schedules and
// global-norm gradient clipping. Updates run under no-grad with in-place ops on any device.
#pragma once

#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/tensor/tensor.h"

namespace cohort::core::optim {

using OptimizerState = std::map<std::string, Tensor>;

class Optimizer {
 public:
  explicit Optimizer(std::vector<Tensor> params, double lr);
  virtual ~Optimizer() = default;
  // Applies one update to every parameter with a gradient.
  virtual void step() = 0;
  // The step of an optimizer of one parameter with, as its gradient, the mean of `grads`
  // (contiguous buffers of the parameter's size and dtype, summed in order, then scaled). An
  // optimizer that can read them in its update's own pass over memory does so and returns true;
  // otherwise it returns false having changed nothing, and the caller averages them into the
  // gradient and calls step(). A parameter server averages its workers' gradients this way.
  virtual bool step_mean(std::span<const float* const> grads);
  void zero_grad(bool set_to_none = true);
  double lr() const { return lr_; }
  void set_lr(double lr) { lr_ = lr; }
  int64_t steps() const { return steps_; }
  const std::vector<Tensor>& params() const { return params_; }
  // Per-parameter buffers ("<index>.<name>") plus "step"; load restores them (shapes must match).
  virtual OptimizerState state_dict() const;
  virtual void load_state_dict(const OptimizerState& state);

 protected:
  Tensor& buffer(size_t index, const std::string& name, const Tensor& like);
  std::vector<Tensor> params_;
  double lr_;
  int64_t steps_ = 0;
  std::map<std::string, Tensor> state_;
};

struct SGDOptions {
  double lr = 0.01, momentum = 0, dampening = 0, weight_decay = 0;
  bool nesterov = false;
};

class SGD : public Optimizer {
 public:
  SGD(std::vector<Tensor> params, const SGDOptions& o);
  void step() override;
  bool step_mean(std::span<const float* const> grads) override;

 private:
  // The momentum buffer of parameter i for the one-pass update, or false when that update does
  // not apply (the parameter, gradient or buffer is not a plain CPU float32 tensor).
  bool fused_buffer(size_t i, const Tensor& grad, Tensor*& buf, bool& first);
  void fused_step(Tensor& p, const Tensor& grad, Tensor* buf, bool first) const;
  void fused_step_mean(Tensor& p, std::span<const float* const> grads, Tensor* buf,
                       bool first) const;
  SGDOptions o_;
};

struct AdamWOptions {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 1e-2;
};

class AdamW : public Optimizer {
 public:
  AdamW(std::vector<Tensor> params, const AdamWOptions& o);
  void step() override;

 private:
  AdamWOptions o_;
};

// The optimiser a config names, built the same way by trainers and parameter servers.
enum class OptimizerKind { kSgd, kAdamW };
OptimizerKind parse_optimizer_kind(const std::string& name);  // sgd | adamw; throws ConfigError
const char* optimizer_kind_name(OptimizerKind kind);

struct OptimizerSpec {
  OptimizerKind kind = OptimizerKind::kSgd;
  double lr = 0.01, momentum = 0, weight_decay = 0, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  bool nesterov = false;
};
std::unique_ptr<Optimizer> make_optimizer(const OptimizerSpec& spec, std::vector<Tensor> params);

// Learning rate as a function of the step (0-based).
class LRSchedule {
 public:
  virtual ~LRSchedule() = default;
  virtual double lr(int64_t step) const = 0;
};

class ConstantLR : public LRSchedule {
 public:
  explicit ConstantLR(double base) : base_(base) {}
  double lr(int64_t) const override { return base_; }

 private:
  double base_;
};

// base * gamma^(step / step_size)
class StepLR : public LRSchedule {
 public:
  StepLR(double base, int64_t step_size, double gamma)
      : base_(base), step_size_(step_size), gamma_(gamma) {}
  double lr(int64_t step) const override;

 private:
  double base_;
  int64_t step_size_;
  double gamma_;
};

// Linear warm-up from 0 over `warmup` steps, then cosine decay to min_lr at `total` steps.
class CosineLR : public LRSchedule {
 public:
  CosineLR(double base, int64_t warmup, int64_t total, double min_lr)
      : base_(base), warmup_(warmup), total_(total), min_lr_(min_lr) {}
  double lr(int64_t step) const override;

 private:
  double base_;
  int64_t warmup_, total_;
  double min_lr_;
};

// Scales all gradients so that their joint L2 norm is at most max_norm; returns the norm before.
double clip_grad_norm(const std::vector<Tensor>& params, double max_norm);

}  // namespace cohort::core::optim
