// Graph: a model of named nodes, each a module applied to an earlier node's output or a join (add,
// mul, concat) of several, for residual and multi-branch models. Nodes are registered as child
// modules under their names, so parameters are named as in a PyTorch module whose attributes carry
// those names ("stem.weight", "block1.0.weight").
#pragma once

#include <string>
#include <vector>

#include "core/nn/module.h"

namespace cohort::core::nn {

enum class Join { kAdd, kMul, kConcat };

class Graph : public Module {
 public:
  // The name under which a node reads the graph's input.
  static constexpr const char* kInput = "input";

  // Adds a node computing `module` on the output of node `input`, which must already exist (so
  // the graph has no cycles). Throws InvalidArgument for a taken name or an unknown input.
  void add_layer(const std::string& name, ModulePtr module, const std::string& input);
  // Adds a node joining the outputs of `inputs` (at least two): add and mul broadcast, concat
  // joins along `dim`.
  void add_join(const std::string& name, Join join, const std::vector<std::string>& inputs,
                int64_t dim = 1);
  // The node whose output forward() returns; default: the last one added.
  void set_output(const std::string& name);
  Tensor forward(const Tensor& x) override;
  size_t size() const { return nodes_.size(); }

 private:
  struct Node {
    std::string name;
    ModulePtr module;  // null for a join
    Join join = Join::kAdd;
    int64_t dim = 1;
    std::vector<int> inputs;  // node indices; -1 is the graph's input
    int last_use = -1;        // the last node that reads this one's output
  };
  int index_of(const std::string& name, const std::string& reader) const;
  void add_node(Node node, const std::vector<std::string>& inputs);

  std::vector<Node> nodes_;
  int output_ = -1;
};

}  // namespace cohort::core::nn
