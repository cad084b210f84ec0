// Graph construction checks and its forward, which frees each intermediate after its last reader.
#include "core/nn/graph.h"

#include "core/ops/ops.h"

namespace cohort::core::nn {

int Graph::index_of(const std::string& name, const std::string& reader) const {
  if (name == kInput) return -1;
  for (size_t i = 0; i < nodes_.size(); ++i)
    if (nodes_[i].name == name) return static_cast<int>(i);
  COHORT_THROW(InvalidArgument, "node '", reader, "' reads '", name,
               "', which is not an earlier node (nor '", kInput, "')");
}

void Graph::add_node(Node node, const std::vector<std::string>& inputs) {
  COHORT_CHECK(
      !node.name.empty() && node.name != kInput && node.name.find('.') == std::string::npos,
      "a node name must be non-empty, without '.', and not '", kInput, "', got '", node.name, "'");
  for (const Node& n : nodes_)
    COHORT_CHECK(n.name != node.name, "node name '", node.name, "' is used twice");
  const int me = static_cast<int>(nodes_.size());
  for (const std::string& in : inputs) {
    const int i = index_of(in, node.name);
    node.inputs.push_back(i);
    if (i >= 0) nodes_[static_cast<size_t>(i)].last_use = me;
  }
  if (node.module) register_module(node.name, node.module);
  nodes_.push_back(std::move(node));
}

void Graph::add_layer(const std::string& name, ModulePtr module, const std::string& input) {
  COHORT_CHECK(module != nullptr, "node '", name, "' has no module");
  Node n;
  n.name = name;
  n.module = std::move(module);
  add_node(std::move(n), {input});
}

void Graph::add_join(const std::string& name, Join join, const std::vector<std::string>& inputs,
                     int64_t dim) {
  COHORT_CHECK(inputs.size() >= 2, "join node '", name, "' needs at least two inputs, got ",
               inputs.size());
  Node n;
  n.name = name;
  n.join = join;
  n.dim = dim;
  add_node(std::move(n), inputs);
}

void Graph::set_output(const std::string& name) { output_ = index_of(name, "output"); }

Tensor Graph::forward(const Tensor& x) {
  COHORT_CHECK(!nodes_.empty(), "a graph model needs at least one node");
  const int out = output_ >= 0 ? output_ : static_cast<int>(nodes_.size()) - 1;
  std::vector<Tensor> values(nodes_.size());
  auto value = [&](int i) -> const Tensor& { return i < 0 ? x : values[static_cast<size_t>(i)]; };
  for (size_t i = 0; i < nodes_.size(); ++i) {
    const Node& n = nodes_[i];
    if (n.module) {
      values[i] = (*n.module)(value(n.inputs[0]));
    } else if (n.join == Join::kConcat) {
      std::vector<Tensor> parts;
      for (int in : n.inputs) parts.push_back(value(in));
      values[i] = cat(parts, n.dim);
    } else {
      Tensor acc = value(n.inputs[0]);
      for (size_t k = 1; k < n.inputs.size(); ++k)
        acc = n.join == Join::kAdd ? add(acc, value(n.inputs[k])) : mul(acc, value(n.inputs[k]));
      values[i] = acc;
    }
    // Activations stay alive through autograd where backward needs them; this drops our own hold.
    for (int in : n.inputs)
      if (in >= 0 && nodes_[static_cast<size_t>(in)].last_use == static_cast<int>(i) && in != out)
        values[static_cast<size_t>(in)] = Tensor();
    if (static_cast<int>(i) == out) break;
  }
  return values[static_cast<size_t>(out)];
}

}  // namespace cohort::core::nn
