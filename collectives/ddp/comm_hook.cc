#include "collectives/ddp/comm_hook.h"

#include <algorithm>
#include <cstdio>

#include "core/autograd/grad_mode.h"
#include "core/ops/ops.h"
#include "core/tensor/generator.h"

namespace cohort::collectives {

using core::DType;
using core::Tensor;

const char* compression_name(Compression c) {
  switch (c) {
    case Compression::kNone:
      return "none";
    case Compression::kBFloat16:
      return "bf16";
    case Compression::kFloat16:
      return "fp16";
    case Compression::kPowerSgd:
      return "powersgd";
  }
  return "?";
}

Compression parse_compression(const std::string& name) {
  for (Compression c :
       {Compression::kNone, Compression::kBFloat16, Compression::kFloat16, Compression::kPowerSgd})
    if (name == compression_name(c)) return c;
  COHORT_THROW(ConfigError, "compression '", name, "' is not one of none, bf16, fp16, powersgd");
}

namespace {

std::string mb(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f MB", bytes / (1 << 20));
  return buf;
}

// bf16 and fp16: the average, computed as a sum of values divided first (so that fp16's sum of
// world-size many gradients cannot overflow where their average would not, as PyTorch's hook).
class HalfHook final : public CommHook {
 public:
  HalfHook(DType wire, ProcessGroup& g, Millis timeout) : wire_(wire), g_(g), timeout_(timeout) {}

  Reduction start(size_t, Tensor& grads, bool reduce_scatter) override {
    core::autograd::NoGradGuard guard;
    const int world = g_.size();
    Reduction r;
    if (grads.dtype() == wire_) {  // already 16-bit: nothing to gain from a cast
      Tensor part = mine(grads);
      r.work = reduce_scatter ? g_.reduce_scatter(part, grads, {ReduceOp::kAvg, timeout_})
                              : g_.allreduce(grads, {ReduceOp::kAvg, timeout_});
      return r;
    }
    Tensor wire = core::mul(grads, 1.0 / world).to(wire_);
    if (!reduce_scatter) {
      r.work = g_.allreduce(wire, {ReduceOp::kSum, timeout_});
      r.then = [grads, wire]() mutable {
        core::autograd::NoGradGuard g;
        grads.copy_(wire);
        return Reduction{};
      };
    } else {
      Tensor part = mine(wire);
      r.work = g_.reduce_scatter(part, wire, {ReduceOp::kSum, timeout_});
      r.then = [this, grads, part, wire]() mutable {
        core::autograd::NoGradGuard g;
        mine(grads).copy_(part);
        return Reduction{};
      };
    }
    return r;
  }

  std::string describe() const override {
    return "gradient compression " + std::string(core::dtype_name(wire_)) +
           ": buckets cross the wire in half the bytes";
  }

 private:
  // This rank's block of a padded bucket.
  Tensor mine(const Tensor& t) const {
    const int64_t n = t.numel() / g_.size();
    return t.narrow(0, n * g_.rank(), n);
  }

  DType wire_;
  ProcessGroup& g_;
  Millis timeout_;
};

// PowerSGD (the comment in the header says what; the layout of each step is this):
//   M  (n x m)  the parameter's gradient (plus its error), a view of the bucket
//   Qt (r x m)  Q transposed, kept between steps
//   Pt (r x n)  = Qt M^T, all-reduced with the uncompressed tensors, its rows orthonormalised
//   Qt          = Pt M, all-reduced
//   M          <- Pt^T Qt; the error <- M - Pt^T Qt before that
// Rows, not columns, so that each orthogonalisation works on contiguous memory.
class PowerSgdHook final : public CommHook {
 public:
  PowerSgdHook(const PowerSgdOptions& o, ProcessGroup& g, std::vector<HookBucket> buckets,
               Millis timeout)
      : o_(o), g_(g), timeout_(timeout) {
    if (o_.rank < 1) COHORT_THROW(ConfigError, "powersgd rank must be at least 1, got ", o_.rank);
    if (o_.start_step < 0)
      COHORT_THROW(ConfigError, "powersgd start_step must not be negative, got ", o_.start_step);
    if (!(o_.min_compression_rate >= 1))
      COHORT_THROW(ConfigError, "powersgd min_compression_rate must be at least 1, got ",
                   o_.min_compression_rate);
    if (!(o_.epsilon >= 0))
      COHORT_THROW(ConfigError, "powersgd epsilon must not be negative, got ", o_.epsilon);
    for (HookBucket& b : buckets) {
      Plan plan;
      plan.numel = b.numel;
      for (const HookBucket::Slot& s : b.slots) {
        int64_t numel = 1;
        for (int64_t d : s.shape) numel *= d;
        const int64_t n = s.shape.empty() ? 1 : s.shape[0];
        const int64_t m = n > 0 ? numel / n : 0;
        const int64_t r = std::min({o_.rank, n, m});
        const bool compress = s.shape.size() >= 2 && r > 0 &&
                              static_cast<double>((n + m) * r) * o_.min_compression_rate <=
                                  static_cast<double>(n * m);
        if (compress) {
          plan.mats.push_back({s.name, s.offset, n, m, r, plan.p_numel, plan.q_numel, Tensor()});
          plan.p_numel += r * n;
          plan.q_numel += r * m;
        } else {
          plan.vecs.push_back({s.offset, numel, plan.v_numel});
          plan.v_numel += numel;
        }
      }
      plans_.push_back(std::move(plan));
    }
  }

  Reduction start(size_t index, Tensor& grads, bool reduce_scatter) override {
    COHORT_CHECK(!reduce_scatter, "PowerSGD compresses all-reduced buckets only");
    core::autograd::NoGradGuard guard;
    place(grads);
    Plan& plan = plans_[index];
    Reduction r;
    if (steps_ < o_.start_step || plan.mats.empty()) {
      r.work = g_.allreduce(grads, {ReduceOp::kAvg, timeout_});
      return r;
    }
    const auto opts = core::TensorOptions(grads.dtype()).with_device(grads.device());
    if (o_.error_feedback) {
      if (!plan.error.defined()) plan.error = core::zeros({plan.numel}, opts);
      Tensor all = grads.narrow(0, 0, plan.numel);
      core::add_(all, plan.error);
    }
    for (size_t k = 0; k < plan.mats.size(); ++k) {
      Mat& mat = plan.mats[k];
      if (!mat.qt.defined() || !o_.warm_start) {
        // The same numbers on every rank: a generator per matrix from the seed (and, without
        // warm start, the step), nothing to checkpoint.
        core::Generator gen(o_.seed ^ (0x9E3779B97F4A7C15ull * (index + 1)) ^
                            (0xC2B2AE3D27D4EB4Full * (k + 1)) ^
                            (o_.warm_start ? 0 : 0x165667B19E3779F9ull * (steps_ + 1)));
        mat.qt = core::randn({mat.r, mat.m}, opts, &gen);
      }
    }
    // Phase 1: the uncompressed tensors and every P, in one all-reduce.
    Tensor phase1 = core::empty({plan.v_numel + plan.p_numel}, opts);
    for (const Vec& v : plan.vecs)
      phase1.narrow(0, v.at, v.numel).copy_(grads.narrow(0, v.offset, v.numel));
    for (const Mat& mat : plan.mats)
      p_of(phase1, plan, mat).copy_(core::matmul(mat.qt, m_of(grads, mat).t()));
    r.work = g_.allreduce(phase1, {ReduceOp::kAvg, timeout_});
    r.then_collective = true;
    r.then = [this, index, grads, phase1]() { return second_phase(index, grads, phase1); };
    return r;
  }

  void end_backward() override { ++steps_; }

  void state(std::map<std::string, Tensor>& shared,
             std::map<std::string, Tensor>& own) const override {
    shared["powersgd.steps"] =
        core::full({1}, static_cast<double>(steps_), core::TensorOptions(DType::kInt64));
    for (const Plan& plan : plans_)
      for (const Mat& mat : plan.mats) {
        if (mat.qt.defined() && o_.warm_start)
          shared["powersgd.q." + mat.name] = mat.qt.to(core::Device::cpu());
        if (plan.error.defined())
          own["powersgd.error." + mat.name] =
              plan.error.narrow(0, mat.offset, mat.n * mat.m).to(core::Device::cpu());
      }
  }

  void load_state(const std::map<std::string, Tensor>& shared,
                  const std::map<std::string, Tensor>& own) override {
    core::autograd::NoGradGuard guard;
    if (auto it = shared.find("powersgd.steps"); it != shared.end()) {
      if (it->second.numel() != 1 || it->second.dtype() != DType::kInt64 ||
          it->second.item<int64_t>() < 0)
        COHORT_THROW(ConfigError, "powersgd.steps in the checkpoint is not one non-negative int64");
      steps_ = it->second.item<int64_t>();
    }
    for (Plan& plan : plans_)
      for (Mat& mat : plan.mats) {
        // A Q of another rank (distributed.powersgd.rank changed) is dropped: a fresh one
        // starts, as at the first compressed step.
        if (auto q = shared.find("powersgd.q." + mat.name);
            q != shared.end() && q->second.sizes() == core::Shape{mat.r, mat.m})
          mat.qt = q->second.clone();
        auto e = own.find("powersgd.error." + mat.name);
        if (e == own.end()) continue;
        if (e->second.numel() != mat.n * mat.m)
          COHORT_THROW(ConfigError, "powersgd.error.", mat.name, " in the checkpoint has ",
                       e->second.numel(), " elements, the parameter ", mat.n * mat.m);
        if (!plan.error.defined())
          plan.error = core::zeros({plan.numel}, core::TensorOptions(e->second.dtype()));
        plan.error.narrow(0, mat.offset, mat.n * mat.m).copy_(e->second.view({-1}));
      }
    loaded_ = true;
  }

  // Moves loaded state to the bucket's device and dtype (checkpoints are read on the CPU).
  void place(const Tensor& like) {
    if (!loaded_) return;
    for (Plan& plan : plans_) {
      if (plan.error.defined()) plan.error = plan.error.to(like.device()).to(like.dtype());
      for (Mat& mat : plan.mats)
        if (mat.qt.defined()) mat.qt = mat.qt.to(like.device()).to(like.dtype());
    }
    loaded_ = false;
  }

  std::string describe() const override {
    int64_t total = 0, wire = 0, mats = 0, tensors = 0;
    for (const Plan& plan : plans_) {
      total += plan.numel;
      wire += plan.mats.empty() ? plan.numel : plan.v_numel + plan.p_numel + plan.q_numel;
      mats += static_cast<int64_t>(plan.mats.size());
      tensors += static_cast<int64_t>(plan.mats.size() + plan.vecs.size());
    }
    char ratio[32];
    std::snprintf(ratio, sizeof ratio, "%.1fx", wire > 0 ? static_cast<double>(total) / wire : 1);
    return "gradient compression powersgd rank " + std::to_string(o_.rank) + " from step " +
           std::to_string(o_.start_step) + (o_.error_feedback ? ", error feedback" : "") +
           (o_.warm_start ? ", warm start" : "") + ": " + std::to_string(mats) + " of " +
           std::to_string(tensors) + " tensors compressed, " + mb(4.0 * total) + " -> " +
           mb(4.0 * wire) + " per step (" + ratio + ")";
  }

 private:
  struct Mat {
    std::string name;
    int64_t offset, n, m, r;
    int64_t p_at, q_at;  // in the phase buffers, after the uncompressed tensors
    Tensor qt;           // r x m
  };
  struct Vec {
    int64_t offset, numel, at;
  };
  struct Plan {
    std::vector<Mat> mats;
    std::vector<Vec> vecs;
    int64_t numel = 0, v_numel = 0, p_numel = 0, q_numel = 0;
    Tensor error;  // numel: zero where nothing is compressed
  };

  static Tensor m_of(const Tensor& grads, const Mat& mat) {
    return grads.narrow(0, mat.offset, mat.n * mat.m).view({mat.n, mat.m});
  }
  static Tensor p_of(const Tensor& phase1, const Plan& plan, const Mat& mat) {
    return phase1.narrow(0, plan.v_numel + mat.p_at, mat.r * mat.n).view({mat.r, mat.n});
  }
  static Tensor q_of(const Tensor& phase2, const Mat& mat) {
    return phase2.narrow(0, mat.q_at, mat.r * mat.m).view({mat.r, mat.m});
  }

  // Gram-Schmidt over the rows of pt, in place.
  void orthonormalise(Tensor pt) const {
    for (int64_t i = 0; i < pt.size(0); ++i) {
      Tensor row = pt.narrow(0, i, 1);
      row.copy_(core::div(
          row, core::clamp(core::sqrt(core::sum(core::square(row))), o_.epsilon, std::nullopt)));
      if (i + 1 < pt.size(0)) {
        Tensor rest = pt.narrow(0, i + 1, pt.size(0) - i - 1);
        // rest -= (rest . row) row, every later row at once
        rest.copy_(core::sub(rest, core::matmul(core::matmul(rest, row.t()), row)));
      }
    }
  }

  Reduction second_phase(size_t index, Tensor grads, Tensor phase1) {
    core::autograd::NoGradGuard guard;
    Plan& plan = plans_[index];
    for (const Vec& v : plan.vecs)
      grads.narrow(0, v.offset, v.numel).copy_(phase1.narrow(0, v.at, v.numel));
    Tensor phase2 = core::empty({plan.q_numel}, phase1.options());
    for (const Mat& mat : plan.mats) {
      Tensor pt = p_of(phase1, plan, mat);
      orthonormalise(pt);
      q_of(phase2, mat).copy_(core::matmul(pt, m_of(grads, mat)));
    }
    Reduction r;
    r.work = g_.allreduce(phase2, {ReduceOp::kAvg, timeout_});
    r.then = [this, index, grads, phase1, phase2]() mutable {
      core::autograd::NoGradGuard g;
      Plan& plan = plans_[index];
      for (Mat& mat : plan.mats) {
        Tensor m = m_of(grads, mat), qt = q_of(phase2, mat);
        Tensor approx = core::matmul(p_of(phase1, plan, mat).t(), qt);
        if (o_.error_feedback)
          plan.error.narrow(0, mat.offset, mat.n * mat.m)
              .view({mat.n, mat.m})
              .copy_(core::sub(m, approx));
        m.copy_(approx);
        if (o_.warm_start) mat.qt.copy_(qt);
      }
      return Reduction{};
    };
    return r;
  }

  PowerSgdOptions o_;
  ProcessGroup& g_;
  Millis timeout_;
  std::vector<Plan> plans_;
  int64_t steps_ = 0;  // backward passes reduced so far
  bool loaded_ = false;
};

}  // namespace

std::unique_ptr<CommHook> make_comm_hook(const CompressionOptions& o, ProcessGroup& group,
                                         std::vector<HookBucket> buckets, Millis timeout) {
  switch (o.kind) {
    case Compression::kNone:
      return nullptr;
    case Compression::kBFloat16:
      return std::make_unique<HalfHook>(DType::kBFloat16, group, timeout);
    case Compression::kFloat16:
      return std::make_unique<HalfHook>(DType::kFloat16, group, timeout);
    case Compression::kPowerSgd:
      return std::make_unique<PowerSgdHook>(o.powersgd, group, std::move(buckets), timeout);
  }
  return nullptr;
}

}  // namespace cohort::collectives
