// One constructor per layer kind, reading input sizes off the probe tensor that has run through
// the layers before it.
#include "trainer/model_builder.h"

#include <cstdio>
#include <map>
#include <new>
#include <sstream>

#include "core/autograd/grad_mode.h"
#include "core/nn/attention.h"
#include "core/nn/graph.h"
#include "core/nn/layers.h"
#include "core/nn/normalization.h"
#include "core/util/error.h"

namespace cohort::trainer {

using core::Tensor;
using core::nn::ModulePtr;
namespace nn = core::nn;

namespace {

class Builder {
 public:
  explicit Builder(core::Generator* gen) : gen_(gen) {}

  // Builds `spec` for input `probe`, runs it, and leaves its output in `probe`.
  ModulePtr build(const LayerSpec& spec, Tensor& probe, const std::string& name) {
    if (spec.kind == "sequential") {
      // Named "<name>.<index>" as PyTorch names an nn.Sequential attribute's children.
      auto seq = std::make_shared<nn::Sequential>();
      for (size_t i = 0; i < spec.layers.size(); ++i)
        seq->add(build(spec.layers[i], probe, name + "." + std::to_string(i)));
      return seq;
    }
    ModulePtr m;
    try {
      m = make(spec, probe);
      core::autograd::NoGradGuard guard;
      m->eval();
      probe = m->forward(probe);
      m->train();
    } catch (const ConfigError&) {
      throw;
    } catch (const Error& e) {
      COHORT_THROW(ConfigError, spec.where, ": ", spec.label, ": ", e.what(), " (its input is ",
                   core::shape_str(probe.sizes()), ")");
    } catch (const std::bad_alloc&) {
      COHORT_THROW(ConfigError, spec.where, ": ", spec.label,
                   ": this layer's parameters or output ", "for input ",
                   core::shape_str(probe.sizes()), " do not fit in memory");
    }
    layers.push_back({name, spec.kind, probe.sizes(), m->num_parameters()});
    return m;
  }

  std::vector<LayerSummary> layers;

 private:
  [[noreturn]] void fail(const LayerSpec& s, const std::string& msg) const {
    COHORT_THROW(ConfigError, s.where, ": ", s.label, ": ", msg);
  }

  void need_dims(const LayerSpec& s, const Tensor& x, std::initializer_list<int64_t> dims,
                 const std::string& layout, const std::string& hint = "") const {
    for (int64_t d : dims)
      if (x.dim() == d) return;
    fail(s, "needs " + layout + " input, got " + core::shape_str(x.sizes()) + hint);
  }

  // Sizes come from the config: their product is checked in floating point before any of them
  // multiplies into an int64 element count (2^34 parameters is 64 GiB of float32).
  void bound_parameters(const LayerSpec& s, std::initializer_list<double> factors) const {
    double n = 1;
    for (double f : factors) n *= f;
    if (n > 17179869184.0) {
      char text[64];
      std::snprintf(text, sizeof text, "%.3g", n);
      fail(s, std::string("would hold ") + text + " parameters, more than 2^34");
    }
  }

  void need_floating(const LayerSpec& s, const Tensor& x) const {
    if (!core::is_floating(x.dtype()))
      fail(s, "needs floating-point input, got " + std::string(core::dtype_name(x.dtype())) +
                  " (integer data such as tokens goes through an embedding first)");
  }

  ModulePtr make(const LayerSpec& s, const Tensor& x) {
    const std::string& k = s.kind;
    const std::string image_hint = x.dim() == 2
                                       ? "; reshape flat features first, e.g. unflatten: {dim: 1, "
                                         "unflattened_size: [1, 28, 28]}"
                                       : "";
    if (k == "linear") {
      need_floating(s, x);
      need_dims(s, x, {2, 3, 4, 5}, "[N, ..., features]");
      bound_parameters(
          s, {static_cast<double>(x.size(-1)) + 1, static_cast<double>(s.i64("out_features"))});
      return std::make_shared<nn::Linear>(x.size(-1), s.i64("out_features"), s.flag("bias"), gen_);
    }
    if (k == "conv2d") {
      need_floating(s, x);
      need_dims(s, x, {4}, "[N, C, H, W]", image_hint);
      nn::Conv2dSpec c{x.size(1), s.i64("out_channels"), s.i64("kernel_size")};
      c.stride = s.i64("stride");
      c.padding = s.i64("padding");
      c.dilation = s.i64("dilation");
      c.groups = s.i64("groups");
      c.bias = s.flag("bias");
      if (c.in_channels % c.groups != 0 || c.out_channels % c.groups != 0)
        fail(s, "groups " + std::to_string(c.groups) + " must divide the input's " +
                    std::to_string(c.in_channels) + " channels and out_channels " +
                    std::to_string(c.out_channels));
      bound_parameters(s, {static_cast<double>(c.out_channels),
                           static_cast<double>(c.in_channels / c.groups) + 1,
                           static_cast<double>(c.kernel * c.kernel)});
      return std::make_shared<nn::Conv2d>(c, gen_);
    }
    if (k == "max_pool2d" || k == "avg_pool2d") {
      need_dims(s, x, {4}, "[N, C, H, W]", image_hint);
      if (2 * s.i64("padding") > s.i64("kernel_size"))
        fail(s, "padding must be at most half of kernel_size");
      if (k == "max_pool2d")
        return std::make_shared<nn::MaxPool2d>(s.i64("kernel_size"), s.i64("stride"),
                                               s.i64("padding"));
      return std::make_shared<nn::AvgPool2d>(s.i64("kernel_size"), s.i64("stride"),
                                             s.i64("padding"));
    }
    if (k == "adaptive_avg_pool2d") {
      need_dims(s, x, {4}, "[N, C, H, W]", image_hint);
      const int64_t o = s.i64("output_size");
      if (x.size(2) % o != 0 || x.size(3) % o != 0)
        fail(s, "output_size " + std::to_string(o) + " must divide the input's height and width " +
                    core::shape_str(x.sizes()) +
                    " (this layer pools evenly; PyTorch's overlapping windows are not supported)");
      return std::make_shared<nn::AdaptiveAvgPool2d>(o, o);
    }
    if (k == "flatten") return std::make_shared<nn::Flatten>(s.i64("start_dim"), s.i64("end_dim"));
    if (k == "unflatten")
      return std::make_shared<nn::Unflatten>(s.i64("dim"), s.ints("unflattened_size"));
    if (k == "identity") return std::make_shared<nn::Identity>();
    if (k == "relu") return std::make_shared<nn::ReLU>();
    if (k == "tanh") return std::make_shared<nn::Tanh>();
    if (k == "sigmoid") return std::make_shared<nn::Sigmoid>();
    if (k == "silu") return std::make_shared<nn::SiLU>();
    if (k == "gelu") return std::make_shared<nn::GELU>(s.str("approximate"));
    if (k == "dropout") return std::make_shared<nn::Dropout>(s.f64("p"), nullptr);
    if (k == "layer_norm") {
      need_floating(s, x);
      return std::make_shared<nn::LayerNorm>(x.size(-1), s.f64("eps"),
                                             s.flag("elementwise_affine"));
    }
    if (k == "batch_norm1d" || k == "batch_norm2d") {
      need_floating(s, x);
      if (k == "batch_norm1d")
        need_dims(s, x, {2, 3}, "[N, C] or [N, C, L]");
      else
        need_dims(s, x, {4}, "[N, C, H, W]", image_hint);
      nn::BatchNormSpec b;
      b.num_features = x.size(1);
      b.eps = s.f64("eps");
      b.momentum = s.f64("momentum");
      b.affine = s.flag("affine");
      b.track_running_stats = s.flag("track_running_stats");
      b.sync = s.flag("sync");
      return std::make_shared<nn::BatchNorm>(b);
    }
    if (k == "embedding") {
      if (core::is_floating(x.dtype()))
        fail(s, "needs integer indices as input, got " + std::string(core::dtype_name(x.dtype())));
      bound_parameters(s, {static_cast<double>(s.i64("num_embeddings")),
                           static_cast<double>(s.i64("embedding_dim"))});
      return std::make_shared<nn::Embedding>(s.i64("num_embeddings"), s.i64("embedding_dim"), gen_);
    }
    if (k == "position_embedding") {
      need_dims(s, x, {3}, "[N, T, D]");
      bound_parameters(
          s, {static_cast<double>(s.i64("num_embeddings")), static_cast<double>(x.size(2))});
      return std::make_shared<nn::PositionEmbedding>(s.i64("num_embeddings"), x.size(2), gen_);
    }
    if (k == "attention") {
      need_floating(s, x);
      need_dims(s, x, {3}, "[N, T, D]");
      if (x.size(2) % s.i64("num_heads") != 0)
        fail(s, "num_heads " + std::to_string(s.i64("num_heads")) + " must divide the input's " +
                    std::to_string(x.size(2)) + " features");
      bound_parameters(s,
                       {4.0 * static_cast<double>(x.size(2)) + 4, static_cast<double>(x.size(2))});
      return std::make_shared<nn::MultiheadAttention>(
          nn::AttentionSpec{x.size(2), s.i64("num_heads"), s.flag("bias"), s.flag("causal")}, gen_);
    }
    if (k == "transformer_block") {
      need_floating(s, x);
      need_dims(s, x, {3}, "[N, T, D]");
      nn::TransformerSpec t;
      t.d_model = x.size(2);
      t.nhead = s.i64("nhead");
      if (t.d_model % t.nhead != 0)
        fail(s, "nhead " + std::to_string(t.nhead) + " must divide the input's " +
                    std::to_string(t.d_model) + " features");
      t.dim_feedforward = s.i64("dim_feedforward");
      t.dropout = s.f64("dropout");
      t.activation = s.str("activation");
      t.layer_norm_eps = s.f64("layer_norm_eps");
      t.norm_first = s.flag("norm_first");
      t.bias = s.flag("bias");
      t.causal = s.flag("causal");
      bound_parameters(s, {static_cast<double>(t.d_model),
                           4.0 * static_cast<double>(t.d_model) +
                               2.0 * static_cast<double>(t.dim_feedforward) + 8});
      return std::make_shared<nn::TransformerEncoderLayer>(t, gen_);
    }
    fail(s, "no constructor for layer '" + k + "'");
  }

  core::Generator* gen_;
};

}  // namespace

BuiltModel build_config_model(const ModelSpec& spec, const Tensor& sample, core::Generator* gen) {
  Builder b(gen);
  BuiltModel out;
  Tensor probe = sample;
  if (!spec.graph) {
    auto seq = std::make_shared<nn::Sequential>();
    for (size_t i = 0; i < spec.layers.size(); ++i)
      seq->add(b.build(spec.layers[i], probe, std::to_string(i)));
    out.module = seq;
  } else {
    auto g = std::make_shared<nn::Graph>();
    std::map<std::string, Tensor> values{{nn::Graph::kInput, sample}};
    for (const NodeSpec& n : spec.nodes) {
      const LayerSpec& l = n.layer;
      try {
        if (l.kind == "add" || l.kind == "mul" || l.kind == "concat") {
          std::vector<Tensor> ins;
          for (const auto& i : n.inputs) ins.push_back(values.at(i));
          const nn::Join j = l.kind == "add"   ? nn::Join::kAdd
                             : l.kind == "mul" ? nn::Join::kMul
                                               : nn::Join::kConcat;
          g->add_join(n.name, j, n.inputs, l.i64("dim"));
          Tensor acc;
          try {
            if (j == nn::Join::kConcat) {
              acc = core::cat(ins, l.i64("dim"));
            } else {
              acc = ins[0];
              for (size_t k = 1; k < ins.size(); ++k)
                acc = j == nn::Join::kAdd ? core::add(acc, ins[k]) : core::mul(acc, ins[k]);
            }
          } catch (const Error& e) {
            std::string shapes;
            for (size_t k = 0; k < ins.size(); ++k)
              shapes += (k ? ", " : "") + n.inputs[k] + " " + core::shape_str(ins[k].sizes());
            COHORT_THROW(ConfigError, l.where, ": ", l.label, ": cannot ", l.kind, " ", shapes,
                         ": ", e.what());
          }
          values[n.name] = acc;
          b.layers.push_back({n.name, l.kind, acc.sizes(), 0});
        } else {
          Tensor x = values.at(n.inputs[0]);
          ModulePtr m = b.build(l, x, n.name);
          g->add_layer(n.name, m, n.inputs[0]);
          values[n.name] = x;
        }
      } catch (const ConfigError&) {
        throw;
      } catch (const Error& e) {
        COHORT_THROW(ConfigError, l.where, ": ", l.label, ": ", e.what());
      }
    }
    if (!spec.output.empty()) g->set_output(spec.output);
    out.module = g;
  }
  out.layers = std::move(b.layers);
  return out;
}

std::string format_model_summary(const std::vector<LayerSummary>& layers, int64_t total_params) {
  std::ostringstream os;
  size_t w = 5;
  for (const auto& l : layers) w = std::max(w, l.name.size());
  char line[512];
  std::snprintf(line, sizeof line, "%-*s  %-20s  %-22s  %12s\n", static_cast<int>(w), "layer",
                "type", "output shape", "parameters");
  os << line;
  for (const auto& l : layers) {
    std::snprintf(line, sizeof line, "%-*s  %-20s  %-22s  %12lld\n", static_cast<int>(w),
                  l.name.c_str(), l.kind.c_str(), core::shape_str(l.output).c_str(),
                  static_cast<long long>(l.params));
    os << line;
  }
  os << "total parameters: " << total_params << "\n";
  return os.str();
}

}  // namespace cohort::trainer
