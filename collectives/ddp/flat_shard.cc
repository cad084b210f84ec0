#include "collectives/ddp/flat_shard.h"

#include <set>
#include <string>

#include "core/autograd/grad_mode.h"
#include "core/ops/ops.h"

namespace cohort::collectives {

using core::Tensor;

namespace {

// The names of per-parameter buffers in a state ("3.exp_avg" -> "exp_avg").
std::set<std::string> buffer_names(const core::optim::OptimizerState& state) {
  std::set<std::string> names;
  for (auto& [key, v] : state) {
    const size_t dot = key.find('.');
    if (dot != std::string::npos) names.insert(key.substr(dot + 1));
  }
  return names;
}

}  // namespace

FlatGroup make_flat_group(const std::vector<Tensor>& params, const std::vector<size_t>& order,
                          int world) {
  FlatGroup g;
  for (size_t k : order) {
    g.params.push_back(k);
    g.offsets.push_back(g.numel);
    g.numel += params[k].numel();
  }
  g.padded = (g.numel + world - 1) / world * world;
  if (g.padded == 0) g.padded = world;  // every rank holds a (padding) element
  return g;
}

Tensor param_slice(const Tensor& flat, const FlatGroup& g, size_t i, const Tensor& like) {
  return flat.narrow(0, g.offsets[i], like.numel()).view(like.sizes());
}

core::optim::OptimizerState consolidate_state(const core::optim::OptimizerState& sharded,
                                              const std::vector<FlatGroup>& groups,
                                              const std::vector<Tensor>& params, ProcessGroup& pg) {
  core::autograd::NoGradGuard guard;
  core::optim::OptimizerState out;
  for (const std::string& name : buffer_names(sharded)) {
    for (size_t b = 0; b < groups.size(); ++b) {
      // Every rank's optimiser creates a group's buffers at the same step, so either all hold
      // this one or none does.
      auto it = sharded.find(std::to_string(b) + "." + name);
      if (it == sharded.end()) continue;
      const Tensor mine = it->second.contiguous();
      Tensor full = core::zeros({groups[b].padded},
                                core::TensorOptions(mine.dtype()).with_device(mine.device()));
      pg.allgather(full, mine)->wait();
      for (size_t i = 0; i < groups[b].params.size(); ++i) {
        const size_t k = groups[b].params[i];
        out[std::to_string(k) + "." + name] = param_slice(full, groups[b], i, params[k]).clone();
      }
    }
  }
  if (auto it = sharded.find("step"); it != sharded.end()) out["step"] = it->second;
  return out;
}

core::optim::OptimizerState shard_state(const core::optim::OptimizerState& full,
                                        const std::vector<FlatGroup>& groups,
                                        const std::vector<Tensor>& params, int rank, int world) {
  core::autograd::NoGradGuard guard;
  core::optim::OptimizerState out;
  for (const std::string& name : buffer_names(full)) {
    for (size_t b = 0; b < groups.size(); ++b) {
      const FlatGroup& g = groups[b];
      Tensor flat;
      for (size_t i = 0; i < g.params.size(); ++i) {
        const size_t k = g.params[i];
        auto it = full.find(std::to_string(k) + "." + name);
        if (it == full.end()) continue;
        COHORT_CHECK(it->second.sizes() == params[k].sizes(), "optimizer state '", it->first,
                     "' has shape ", core::shape_str(it->second.sizes()), ", its parameter ",
                     core::shape_str(params[k].sizes()));
        if (!flat.defined())
          flat = core::zeros(
              {g.padded}, core::TensorOptions(params[k].dtype()).with_device(params[k].device()));
        param_slice(flat, g, i, params[k]).copy_(it->second);
      }
      if (flat.defined())
        out[std::to_string(b) + "." + name] =
            flat.narrow(0, g.shard_numel(world) * rank, g.shard_numel(world)).clone();
    }
  }
  if (auto it = full.find("step"); it != full.end()) out["step"] = it->second;
  return out;
}

}  // namespace cohort::collectives
