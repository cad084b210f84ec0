#include "trainer/checkpoint_pieces.h"

#include <algorithm>
#include <set>

#include "core/ops/ops.h"

namespace cohort::trainer {

using core::Tensor;

namespace {

// Where parameter j of a flat group meets this rank's shard of it: elements [begin, end) of the
// parameter, at `at` in the shard (flat_shard.h). Empty when they do not meet.
struct Overlap {
  int64_t begin = 0, end = 0, at = 0;
};
Overlap overlap(const collectives::FlatGroup& g, size_t j, int64_t numel, int rank, int world) {
  const int64_t n = g.shard_numel(world), lo = n * rank;
  const int64_t b = std::max(lo, g.offsets[j]), e = std::min(lo + n, g.offsets[j] + numel);
  if (b >= e) return {};
  return {b - g.offsets[j], e - g.offsets[j], b - lo};
}

}  // namespace

void slice_into(const std::map<std::string, Tensor>& tensors, int rank, int writers,
                std::vector<core::io::Piece>& out) {
  for (auto& [name, t] : tensors) {
    const int64_t n = t.numel(), b = n * rank / writers, e = n * (rank + 1) / writers;
    if (e > b)
      out.push_back({name, t.sizes(), b, t.detach().contiguous().view({-1}).narrow(0, b, e - b)});
  }
}

// Sharded strategies write what they hold and read back only that: the pieces of each parameter
// inside this rank's shard of its group (FSDP's units, ZeRO's buckets), and the same pieces of
// the optimiser's buffers ("<group>.<name>" inside, "<param>.<name>" in the checkpoint).
void shard_pieces(const std::vector<collectives::FlatGroup>& groups,
                  const std::vector<Tensor>& shards, const std::vector<Tensor>& params,
                  const std::vector<std::string>& names, int rank, int world,
                  std::vector<core::io::Piece>& out) {
  for (size_t u = 0; u < groups.size(); ++u)
    for (size_t j = 0; j < groups[u].params.size(); ++j) {
      const size_t k = groups[u].params[j];
      const Overlap o = overlap(groups[u], j, params[k].numel(), rank, world);
      if (o.end > o.begin)
        out.push_back(
            {names[k], params[k].sizes(), o.begin, shards[u].narrow(0, o.at, o.end - o.begin)});
    }
}

void optimizer_pieces(const std::vector<collectives::FlatGroup>& groups,
                      const core::optim::OptimizerState& inner, const std::vector<Tensor>& params,
                      int rank, int world, std::vector<core::io::Piece>& out) {
  for (size_t u = 0; u < groups.size(); ++u) {
    const std::string prefix = std::to_string(u) + ".";
    for (auto& [key, t] : inner) {
      if (key.rfind(prefix, 0) != 0) continue;
      const std::string buffer = key.substr(prefix.size());
      for (size_t j = 0; j < groups[u].params.size(); ++j) {
        const size_t k = groups[u].params[j];
        const Overlap o = overlap(groups[u], j, params[k].numel(), rank, world);
        if (o.end > o.begin)
          out.push_back({std::to_string(k) + "." + buffer, params[k].sizes(), o.begin,
                         t.narrow(0, o.at, o.end - o.begin)});
      }
    }
  }
  if (rank == 0)
    if (auto it = inner.find("step"); it != inner.end())
      out.push_back({"step", it->second.sizes(), 0, it->second.contiguous().view({-1})});
}

void expect_shape(const core::io::CheckpointReader& ck, const std::string& name,
                  const core::Shape& shape) {
  const auto& shapes = ck.shapes(core::io::CheckpointReader::Part::kModel);
  const auto it = shapes.find(name);
  if (it == shapes.end())
    COHORT_THROW(ConfigError, "checkpoint ", ck.path(), " has no tensor ", name,
                 ", which this model has");
  if (it->second != shape)
    COHORT_THROW(ConfigError, "checkpoint ", ck.path(), " holds ", name, " with shape ",
                 core::shape_str(it->second), " but this model's is ", core::shape_str(shape));
}

void read_shards(const core::io::CheckpointReader& ck,
                 const std::vector<collectives::FlatGroup>& groups, std::vector<Tensor>& shards,
                 const std::vector<Tensor>& params, const std::vector<std::string>& names, int rank,
                 int world) {
  using Part = core::io::CheckpointReader::Part;
  for (size_t u = 0; u < groups.size(); ++u)
    for (size_t j = 0; j < groups[u].params.size(); ++j) {
      const size_t k = groups[u].params[j];
      const Overlap o = overlap(groups[u], j, params[k].numel(), rank, world);
      if (o.end > o.begin)
        shards[u]
            .narrow(0, o.at, o.end - o.begin)
            .copy_(ck.read_range(Part::kModel, names[k], o.begin, o.end));
    }
}

core::optim::OptimizerState read_optimizer_shards(const core::io::CheckpointReader& ck,
                                                  const std::vector<collectives::FlatGroup>& groups,
                                                  const std::vector<Tensor>& shards,
                                                  const std::vector<Tensor>& params, int rank,
                                                  int world) {
  using Part = core::io::CheckpointReader::Part;
  const auto& saved = ck.shapes(Part::kOptimizer);
  std::set<std::string> buffers;
  for (auto& [key, shape] : saved)
    if (const size_t dot = key.find('.'); dot != std::string::npos)
      buffers.insert(key.substr(dot + 1));
  core::optim::OptimizerState inner;
  for (size_t u = 0; u < groups.size(); ++u)
    for (const std::string& b : buffers) {
      Tensor flat = core::zeros_like(shards[u]);
      for (size_t j = 0; j < groups[u].params.size(); ++j) {
        const size_t k = groups[u].params[j];
        const std::string key = std::to_string(k) + "." + b;
        const auto it = saved.find(key);
        if (it == saved.end()) continue;
        if (it->second != params[k].sizes())
          COHORT_THROW(ConfigError, "checkpoint ", ck.path(), ": optimizer state ", key,
                       " has shape ", core::shape_str(it->second), ", its parameter ",
                       core::shape_str(params[k].sizes()));
        const Overlap o = overlap(groups[u], j, params[k].numel(), rank, world);
        if (o.end > o.begin)
          flat.narrow(0, o.at, o.end - o.begin)
              .copy_(ck.read_range(Part::kOptimizer, key, o.begin, o.end));
      }
      inner[std::to_string(u) + "." + b] = flat;
    }
  if (saved.count("step")) inner["step"] = ck.read(Part::kOptimizer, "step");
  return inner;
}

}  // namespace cohort::trainer
