// The table of layer kinds and their arguments (PyTorch's names, with short aliases), and the
// parsing of sequential and graph models against it.
#include "trainer/model_spec.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <set>

#include "core/util/error.h"
#include "trainer/suggest.h"

namespace cohort::trainer {
namespace {

enum class Type { kInt, kFloat, kBool, kString, kIntList };

struct ArgDef {
  std::string name, alias;
  Type type;
  std::optional<LayerArg> def;  // none: required
  double min = -std::numeric_limits<double>::infinity();
  double max = std::numeric_limits<double>::infinity();
  std::vector<std::string> choices = {};
};

struct KindDef {
  std::string kind;
  std::vector<ArgDef> args;
};

constexpr double kBig = double{int64_t{1} << 40};

const std::vector<KindDef>& kinds() {
  const LayerArg yes = true, no = false;
  static const std::vector<KindDef> table = {
      {"linear",
       {{"out_features", "out", Type::kInt, std::nullopt, 1, kBig},
        {"bias", "", Type::kBool, yes}}},
      {"conv2d",
       {{"out_channels", "out", Type::kInt, std::nullopt, 1, kBig},
        {"kernel_size", "kernel", Type::kInt, std::nullopt, 1, 1024},
        {"stride", "", Type::kInt, LayerArg(int64_t{1}), 1, 1024},
        {"padding", "", Type::kInt, LayerArg(int64_t{0}), 0, 1024},
        {"dilation", "", Type::kInt, LayerArg(int64_t{1}), 1, 1024},
        {"groups", "", Type::kInt, LayerArg(int64_t{1}), 1, kBig},
        {"bias", "", Type::kBool, yes}}},
      {"max_pool2d",
       {{"kernel_size", "kernel", Type::kInt, std::nullopt, 1, 1024},
        {"stride", "", Type::kInt, LayerArg(int64_t{0}), 0, 1024},
        {"padding", "", Type::kInt, LayerArg(int64_t{0}), 0, 1024}}},
      {"avg_pool2d",
       {{"kernel_size", "kernel", Type::kInt, std::nullopt, 1, 1024},
        {"stride", "", Type::kInt, LayerArg(int64_t{0}), 0, 1024},
        {"padding", "", Type::kInt, LayerArg(int64_t{0}), 0, 1024}}},
      {"adaptive_avg_pool2d", {{"output_size", "", Type::kInt, LayerArg(int64_t{1}), 1, 1 << 20}}},
      {"flatten",
       {{"start_dim", "", Type::kInt, LayerArg(int64_t{1}), -64, 64},
        {"end_dim", "", Type::kInt, LayerArg(int64_t{-1}), -64, 64}}},
      {"unflatten",
       {{"dim", "", Type::kInt, std::nullopt, -64, 64},
        {"unflattened_size", "sizes", Type::kIntList, std::nullopt, 1, kBig}}},
      {"identity", {}},
      {"relu", {}},
      {"tanh", {}},
      {"sigmoid", {}},
      {"silu", {}},
      {"gelu",
       {{"approximate", "", Type::kString, LayerArg(std::string("none")), 0, 0, {"none", "tanh"}}}},
      {"dropout", {{"p", "", Type::kFloat, LayerArg(0.5), 0, 1}}},
      {"layer_norm",
       {{"eps", "", Type::kFloat, LayerArg(1e-5), 0, 1},
        {"elementwise_affine", "", Type::kBool, yes}}},
      {"batch_norm1d",
       {{"eps", "", Type::kFloat, LayerArg(1e-5), 0, 1},
        {"momentum", "", Type::kFloat, LayerArg(0.1), 1e-12, 1},
        {"affine", "", Type::kBool, yes},
        {"track_running_stats", "", Type::kBool, yes},
        {"sync", "", Type::kBool, no}}},
      {"batch_norm2d",
       {{"eps", "", Type::kFloat, LayerArg(1e-5), 0, 1},
        {"momentum", "", Type::kFloat, LayerArg(0.1), 1e-12, 1},
        {"affine", "", Type::kBool, yes},
        {"track_running_stats", "", Type::kBool, yes},
        {"sync", "", Type::kBool, no}}},
      {"embedding",
       {{"num_embeddings", "num", Type::kInt, std::nullopt, 1, kBig},
        {"embedding_dim", "dim", Type::kInt, std::nullopt, 1, kBig}}},
      {"position_embedding", {{"num_embeddings", "num", Type::kInt, std::nullopt, 1, kBig}}},
      {"attention",
       {{"num_heads", "heads", Type::kInt, std::nullopt, 1, 4096},
        {"bias", "", Type::kBool, yes},
        {"causal", "", Type::kBool, no}}},
      {"transformer_block",
       {{"nhead", "heads", Type::kInt, std::nullopt, 1, 4096},
        {"dim_feedforward", "", Type::kInt, LayerArg(int64_t{2048}), 1, kBig},
        {"dropout", "", Type::kFloat, LayerArg(0.1), 0, 1},
        {"activation", "", Type::kString, LayerArg(std::string("relu")), 0, 0, {"relu", "gelu"}},
        {"layer_norm_eps", "", Type::kFloat, LayerArg(1e-5), 0, 1},
        {"norm_first", "", Type::kBool, no},
        {"bias", "", Type::kBool, yes},
        {"causal", "", Type::kBool, no}}},
  };
  return table;
}

const KindDef* find_kind(const std::string& kind) {
  for (const KindDef& k : kinds())
    if (k.kind == kind) return &k;
  return nullptr;
}

const std::vector<std::string> kJoins = {"add", "mul", "concat"};

class Parser {
 public:
  explicit Parser(std::string file) : file_(std::move(file)) {}

  std::string where(const YAML::Node& n) const {
    return n.IsDefined() && n.Mark().line >= 0 ? file_ + ":" + std::to_string(n.Mark().line + 1)
                                               : file_;
  }

  [[noreturn]] void fail(const YAML::Node& n, const std::string& label,
                         const std::string& msg) const {
    COHORT_THROW(ConfigError, where(n), ": ", label, ": ", msg);
  }

  std::vector<LayerSpec> layer_list(const YAML::Node& list, const std::string& path) const {
    if (!list.IsDefined() || list.IsNull())
      COHORT_THROW(ConfigError, file_, ": ", path,
                   " is missing: give the model's layers as a list");
    if (!list.IsSequence() || list.size() == 0)
      fail(list, path, "must be a non-empty list of layers, e.g. [{linear: {out: 10}}]");
    std::vector<LayerSpec> out;
    for (size_t i = 0; i < list.size(); ++i) {
      const YAML::Node entry = list[i];
      out.push_back(layer_entry(entry, path + "[" + std::to_string(i) + "]"));
    }
    return out;
  }

  // `relu`, `{relu: {}}`, `{relu: null}`, `{conv2d: {out: 32, kernel: 3}}`,
  // `{sequential: [...]}`.
  LayerSpec layer_entry(const YAML::Node& entry, const std::string& label) const {
    if (entry.IsScalar()) return layer(entry.Scalar(), YAML::Node(), entry, label);
    if (!entry.IsMap() || entry.size() != 1)
      fail(entry, label,
           "a layer is a name (relu) or a mapping of one name to its arguments "
           "({conv2d: {out: 32, kernel: 3}})");
    auto it = entry.begin();
    if (!it->first.IsScalar()) fail(entry, label, "a layer's name must be a plain word");
    const YAML::Node args = it->second;
    return layer(it->first.Scalar(), args, entry, label);
  }

  LayerSpec layer(const std::string& kind, const YAML::Node& args, const YAML::Node& at,
                  const std::string& label) const {
    LayerSpec spec;
    spec.kind = kind;
    spec.label = label + " (" + kind + ")";
    spec.where = where(at);
    if (kind == "sequential") {
      spec.layers = layer_list(args, label + ".sequential");
      return spec;
    }
    const KindDef* def = find_kind(kind);
    if (!def) {
      std::vector<std::string> names;
      for (const KindDef& k : kinds()) names.push_back(k.kind);
      names.push_back("sequential");
      std::string hint = did_you_mean(kind, names);
      std::string all;
      for (const auto& n : names) all += (all.empty() ? "" : ", ") + n;
      fail(at, label,
           "unknown layer '" + kind + "'" + (hint.empty() ? " (layers: " + all + ")" : hint));
    }
    if (args.IsDefined() && !args.IsNull() && !args.IsMap())
      fail(args, spec.label,
           "arguments must be a mapping, e.g. {" +
               (def->args.empty()
                    ? std::string("}")
                    : (def->args[0].alias.empty() ? def->args[0].name : def->args[0].alias) +
                          ": ...}"));
    std::set<std::string> seen;
    if (args.IsMap()) {
      for (auto it = args.begin(); it != args.end(); ++it) {
        if (!it->first.IsScalar()) fail(args, spec.label, "an argument name must be a plain word");
        const std::string name = it->first.Scalar();
        const ArgDef* a = nullptr;
        for (const ArgDef& d : def->args)
          if (d.name == name || (!d.alias.empty() && d.alias == name)) a = &d;
        if (!a) {
          std::vector<std::string> names;
          for (const ArgDef& d : def->args) {
            names.push_back(d.name);
            if (!d.alias.empty()) names.push_back(d.alias);
          }
          std::string known;
          for (const ArgDef& d : def->args) known += (known.empty() ? "" : ", ") + d.name;
          std::string hint = did_you_mean(name, names);
          fail(it->first, spec.label,
               "unknown argument '" + name + "'" +
                   (!hint.empty()       ? hint
                    : def->args.empty() ? " (" + kind + " takes no arguments)"
                                        : " (arguments: " + known + ")"));
        }
        if (!seen.insert(a->name).second)
          fail(it->first, spec.label,
               "argument '" + a->name + "' is given twice (as '" + a->name + "' and '" + a->alias +
                   "')");
        const YAML::Node v = it->second;
        spec.args[a->name] = value(*a, v, spec.label);
      }
    }
    for (const ArgDef& d : def->args) {
      if (seen.count(d.name)) continue;
      if (!d.def)
        fail(at, spec.label,
             "missing argument '" + d.name + "'" +
                 (d.alias.empty() ? std::string() : " (or '" + d.alias + "')"));
      spec.args[d.name] = *d.def;
    }
    return spec;
  }

  LayerArg value(const ArgDef& a, const YAML::Node& v, const std::string& label) const {
    auto text = [&] {
      return v.IsScalar() ? "'" + v.Scalar() + "'" : std::string("a list or mapping");
    };
    auto range = [&](double x) {
      if (x < a.min || x > a.max) {
        std::ostringstream os;
        os << a.name << " must be in [" << a.min << ", " << a.max << "], got " << v.Scalar();
        fail(v, label, os.str());
      }
    };
    switch (a.type) {
      case Type::kInt: {
        int64_t x;
        if (!v.IsScalar() || !YAML::convert<int64_t>::decode(v, x))
          fail(v, label, a.name + " must be an integer, got " + text());
        range(static_cast<double>(x));
        return x;
      }
      case Type::kFloat: {
        double x;
        if (!v.IsScalar() || !YAML::convert<double>::decode(v, x) || std::isnan(x))
          fail(v, label, a.name + " must be a number, got " + text());
        range(x);
        return x;
      }
      case Type::kBool: {
        bool x;
        if (!v.IsScalar() || !YAML::convert<bool>::decode(v, x))
          fail(v, label, a.name + " must be true or false, got " + text());
        return x;
      }
      case Type::kString: {
        if (!v.IsScalar()) fail(v, label, a.name + " must be a word, got " + text());
        if (!a.choices.empty() &&
            std::find(a.choices.begin(), a.choices.end(), v.Scalar()) == a.choices.end()) {
          std::string opts;
          for (const auto& c : a.choices) opts += (opts.empty() ? "" : ", ") + c;
          fail(v, label, a.name + " must be one of " + opts + ", got '" + v.Scalar() + "'");
        }
        return v.Scalar();
      }
      case Type::kIntList: {
        if (!v.IsSequence() || v.size() == 0)
          fail(v, label, a.name + " must be a non-empty list of integers, e.g. [1, 28, 28]");
        std::vector<int64_t> xs;
        for (const auto& e : v) {
          int64_t x;
          if (!e.IsScalar() || !YAML::convert<int64_t>::decode(e, x))
            fail(e, label, a.name + " must be a list of integers");
          range(static_cast<double>(x));
          xs.push_back(x);
        }
        return xs;
      }
    }
    fail(v, label, "unreachable argument type");
  }

  NodeSpec node(const YAML::Node& n, const std::string& label, const std::string& previous) const {
    if (!n.IsMap())
      fail(n, label,
           "a node is a mapping with a name and one layer, e.g. {name: stem, conv2d: {out: 32, "
           "kernel: 3}}");
    NodeSpec out;
    std::string named = label;
    {
      // A missing key is an invalid node, which throws when asked its type.
      const YAML::Node name = n["name"];
      if (name.IsDefined() && name.IsScalar()) named = label + " '" + name.Scalar() + "'";
    }
    YAML::Node layer_key, layer_value, input;
    bool has_layer = false, has_input = false;
    for (auto it = n.begin(); it != n.end(); ++it) {
      if (!it->first.IsScalar()) fail(n, label, "a node's keys must be plain words");
      const std::string key = it->first.Scalar();
      const YAML::Node v = it->second;
      if (key == "name") {
        if (!v.IsScalar() || v.Scalar().empty()) fail(v, label, "name must be a word");
        out.name = v.Scalar();
      } else if (key == "input") {
        input = v;
        has_input = true;
      } else {
        if (has_layer)
          fail(it->first, named,
               "has two layers ('" + layer_key.Scalar() + "' and '" + key +
                   "'); a node holds one (use a sequential node for several)");
        layer_key = it->first;
        layer_value = v;
        has_layer = true;
      }
    }
    if (out.name.empty()) fail(n, label, "missing 'name'");
    if (out.name == "input" || out.name.find('.') != std::string::npos)
      fail(n, named, "a node's name must not be 'input' (the data) or contain '.'");
    if (!has_layer) fail(n, named, "has no layer (e.g. relu, conv2d: {...}, add: [a, b])");
    const std::string kind = layer_key.Scalar();
    if (std::find(kJoins.begin(), kJoins.end(), kind) != kJoins.end()) {
      if (has_input)
        fail(input, named,
             kind + " takes its inputs as its value (" + kind + ": [a, b]), not 'input'");
      out.layer.kind = kind;
      out.layer.label = named + " (" + kind + ")";
      out.layer.where = where(layer_value);
      YAML::Node list = layer_value;
      int64_t dim = 1;
      if (kind == "concat" && layer_value.IsMap()) {
        for (auto it = layer_value.begin(); it != layer_value.end(); ++it) {
          const std::string k = it->first.IsScalar() ? it->first.Scalar() : "";
          if (k == "inputs") {
            list = it->second;
          } else if (k == "dim") {
            if (!it->second.IsScalar() || !YAML::convert<int64_t>::decode(it->second, dim))
              fail(it->second, out.layer.label, "dim must be an integer");
          } else {
            fail(it->first, out.layer.label,
                 "unknown argument '" + k + "' (arguments: inputs, dim)");
          }
        }
      }
      if (!list.IsSequence() || list.size() < 2)
        fail(layer_value, out.layer.label,
             "needs a list of at least two node names, e.g. " + kind + ": [a, b]");
      for (const auto& e : list) {
        if (!e.IsScalar()) fail(e, out.layer.label, "inputs must be node names");
        out.inputs.push_back(e.Scalar());
      }
      out.layer.args["dim"] = dim;
      return out;
    }
    out.layer = layer(kind, layer_value, layer_key, named);
    if (has_input) {
      if (!input.IsScalar())
        fail(input, named, "input must be one node name (join several with add, mul or concat)");
      out.inputs = {input.Scalar()};
    } else {
      out.inputs = {previous};
    }
    return out;
  }

 private:
  std::string file_;
};

}  // namespace

ModelSpec parse_sequential(const YAML::Node& layers, const std::string& file) {
  ModelSpec m;
  m.layers = Parser(file).layer_list(layers, "model.layers");
  return m;
}

ModelSpec parse_graph(const YAML::Node& nodes, const YAML::Node& output, const std::string& file) {
  Parser p(file);
  if (!nodes.IsDefined() || nodes.IsNull())
    COHORT_THROW(ConfigError, file, ": model.nodes is missing: a graph model lists its nodes");
  if (!nodes.IsSequence() || nodes.size() == 0)
    p.fail(nodes, "model.nodes", "must be a non-empty list of nodes");
  ModelSpec m;
  m.graph = true;
  std::set<std::string> names;
  std::string previous = "input";
  for (size_t i = 0; i < nodes.size(); ++i) {
    const YAML::Node n = nodes[i];
    const std::string label = "model.nodes[" + std::to_string(i) + "]";
    NodeSpec node = p.node(n, label, previous);
    if (!names.insert(node.name).second)
      p.fail(n, label + " '" + node.name + "'", "the name '" + node.name + "' is used twice");
    for (const std::string& in : node.inputs)
      if (in != "input" && !names.count(in)) {
        std::vector<std::string> known(names.begin(), names.end());
        known.push_back("input");
        p.fail(n, node.layer.label,
               "reads '" + in + "', which is not an earlier node" + did_you_mean(in, known));
      }
    if (std::find(node.inputs.begin(), node.inputs.end(), node.name) != node.inputs.end())
      p.fail(n, node.layer.label, "reads its own output");
    previous = node.name;
    m.nodes.push_back(std::move(node));
  }
  if (output.IsDefined() && !output.IsNull()) {
    if (!output.IsScalar() || !names.count(output.Scalar()))
      p.fail(output, "model.output",
             "must name a node, got '" + (output.IsScalar() ? output.Scalar() : std::string("?")) +
                 "'");
    m.output = output.Scalar();
  }
  return m;
}

std::vector<std::string> layer_kinds() {
  std::vector<std::string> out;
  for (const KindDef& k : kinds()) out.push_back(k.kind);
  out.push_back("sequential");
  return out;
}

}  // namespace cohort::trainer
