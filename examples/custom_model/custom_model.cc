// A model and a dataset of one's own, written against Cohort's library API, trained by Cohort's
// trainer: `cohort launch --nproc-per-node 2 -- ./custom_model spirals.yaml` runs it
// data-parallel with DDP, checkpoints, metrics.jsonl, run directories, resume and Ctrl-C, exactly
// as `cohort train` would run a built-in model. The config selects them with `model.type: custom`
// and `data.dataset: custom`, and passes their settings in model.args and data.args.
#include <cmath>
#include <memory>

#include "core/data/dataset.h"
#include "core/nn/layers.h"
#include "core/ops/ops.h"
#include "launcher/train_command.h"

using namespace cohort;
using core::Tensor;

// A layer of one's own: a linear map whose output is gated by a second one,
// y = (W x + b) * sigmoid(V x + c), with PyTorch's initialisation through nn::Linear.
class GatedLinear : public core::nn::Module {
 public:
  GatedLinear(int64_t in, int64_t out, core::Generator* gen) {
    value_ = register_module("value", std::make_shared<core::nn::Linear>(in, out, true, gen));
    gate_ = register_module("gate", std::make_shared<core::nn::Linear>(in, out, true, gen));
  }
  Tensor forward(const Tensor& x) override {
    return core::mul((*value_)(x), core::sigmoid((*gate_)(x)));
  }

 private:
  std::shared_ptr<core::nn::Linear> value_, gate_;
};

// A residual stack of gated layers, then a linear classifier.
class GatedNet : public core::nn::Module {
 public:
  GatedNet(int64_t in, int64_t width, int64_t depth, int64_t classes, core::Generator* gen) {
    stem_ = register_module("stem", std::make_shared<core::nn::Linear>(in, width, true, gen));
    for (int64_t i = 0; i < depth; ++i)
      blocks_.push_back(register_module("block" + std::to_string(i),
                                        std::make_shared<GatedLinear>(width, width, gen)));
    head_ = register_module("head", std::make_shared<core::nn::Linear>(width, classes, true, gen));
  }
  Tensor forward(const Tensor& x) override {
    Tensor h = core::tanh((*stem_)(x));
    for (auto& b : blocks_) h = core::add(h, (*b)(h));
    return (*head_)(h);
  }

 private:
  std::shared_ptr<core::nn::Linear> stem_, head_;
  std::vector<std::shared_ptr<GatedLinear>> blocks_;
};

// Data of one's own: two interleaved spirals, the same points on every rank for a given seed.
class Spirals : public core::data::Dataset {
 public:
  Spirals(int64_t n, double noise, uint64_t seed)
      : x_(static_cast<size_t>(2 * n)), y_(static_cast<size_t>(n)) {
    core::Generator g(seed);
    Tensor u = core::rand({n, 3}, {}, &g);
    for (int64_t i = 0; i < n; ++i) {
      const float* r = u.data_ptr<float>() + 3 * i;
      const int64_t cls = i % 2;
      const double t = 0.5 + 3.0 * r[0];  // how far along its arm
      const double a = t * 2.2 + cls * M_PI;
      x_[static_cast<size_t>(2 * i)] = static_cast<float>(t * std::cos(a) + noise * (r[1] - 0.5));
      x_[static_cast<size_t>(2 * i + 1)] =
          static_cast<float>(t * std::sin(a) + noise * (r[2] - 0.5));
      y_[static_cast<size_t>(i)] = cls;
    }
  }
  int64_t size() const override { return static_cast<int64_t>(y_.size()); }
  int64_t num_classes() const override { return 2; }
  core::data::Batch get_batch(const std::vector<int64_t>& idx) const override {
    const auto b = static_cast<int64_t>(idx.size());
    Tensor x = core::empty({b, 2});
    Tensor y = core::empty({b}, core::TensorOptions(core::DType::kInt64));
    for (int64_t i = 0; i < b; ++i) {
      const auto s = static_cast<size_t>(idx[static_cast<size_t>(i)]);
      x.data_ptr<float>()[2 * i] = x_[2 * s];
      x.data_ptr<float>()[2 * i + 1] = x_[2 * s + 1];
      y.data_ptr<int64_t>()[i] = y_[s];
    }
    return {x, y};
  }

 private:
  std::vector<float> x_;
  std::vector<int64_t> y_;
};

int main(int argc, char** argv) {
  trainer::Extensions ext;
  ext.model = [](const trainer::Config& c, const Tensor& sample, core::Generator* gen) {
    const YAML::Node& a = c.model.args;
    return std::make_shared<GatedNet>(sample.size(1), a["width"].as<int64_t>(32),
                                      a["depth"].as<int64_t>(2), 2, gen);
  };
  ext.data = [](const trainer::Config& c) {
    const YAML::Node& a = c.data.args;
    const int64_t n = a["samples"].as<int64_t>(4000);
    const double noise = a["noise"].as<double>(0.2);
    trainer::Datasets d;
    d.train = std::make_shared<Spirals>(n, noise, c.seed);
    d.eval = std::make_shared<Spirals>(n / 4, noise, c.seed + 1);
    return d;
  };
  return launcher::train_main(argc, argv, ext);
}
