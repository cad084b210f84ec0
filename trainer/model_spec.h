// Models written in the config: `model.type: sequential` (a list of layers) and `model.type:
// graph` (named nodes with inputs, joined by add, mul or concat). This file parses and checks the
// YAML into plain structs, naming the layer index and key in every error; model_builder.h turns
// them into modules once the data's shape is known. The layers and their arguments are listed in
// docs/models.md.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <variant>
#include <vector>

#include <yaml-cpp/yaml.h>

namespace cohort::trainer {

using LayerArg = std::variant<int64_t, double, bool, std::string, std::vector<int64_t>>;

struct LayerSpec {
  std::string kind;  // "conv2d", "relu", ..., "sequential", or a join: "add", "mul", "concat"
  // Every argument of the kind under its PyTorch name, defaults filled in.
  std::map<std::string, LayerArg> args;
  std::vector<LayerSpec> layers;  // kind sequential: its layers
  // "model.layers[3] (conv2d)", and the YAML position "configs/x.yaml:12", for messages.
  std::string label, where;

  int64_t i64(const std::string& name) const { return std::get<int64_t>(args.at(name)); }
  double f64(const std::string& name) const { return std::get<double>(args.at(name)); }
  bool flag(const std::string& name) const { return std::get<bool>(args.at(name)); }
  const std::string& str(const std::string& name) const {
    return std::get<std::string>(args.at(name));
  }
  const std::vector<int64_t>& ints(const std::string& name) const {
    return std::get<std::vector<int64_t>>(args.at(name));
  }
};

struct NodeSpec {
  std::string name;
  LayerSpec layer;
  std::vector<std::string> inputs;  // one for a layer, two or more for a join
};

struct ModelSpec {
  bool graph = false;
  std::vector<LayerSpec> layers;  // sequential
  std::vector<NodeSpec> nodes;    // graph
  std::string output;             // graph: the node the model returns; default the last
};

// Parses model.layers (sequential) or model.nodes and model.output (graph). `file` names the
// config for messages. Throws ConfigError: "x.yaml:12: model.layers[3] (conv2d): unknown argument
// 'kernal'; did you mean 'kernel'?".
ModelSpec parse_sequential(const YAML::Node& layers, const std::string& file);
ModelSpec parse_graph(const YAML::Node& nodes, const YAML::Node& output, const std::string& file);

// The layer kinds a config can name, for help texts.
std::vector<std::string> layer_kinds();

}  // namespace cohort::trainer
