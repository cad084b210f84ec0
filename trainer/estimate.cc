#include "trainer/estimate.h"

#include <algorithm>
#include <cstdio>

#include "collectives/ddp/fsdp.h"

namespace cohort::trainer {

namespace {

std::string mb(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f MB", bytes / (1 << 20));
  return buf;
}

int64_t padded(int64_t n, int world) { return (n + world - 1) / world * world; }

}  // namespace

std::string estimate_memory(const Config& c, int world, const Extensions& ext) {
  COHORT_CHECK(world >= 1, "estimate_memory: world size ", world);
  // The model is built once (its parameters only) to count them and to cut it into units as
  // fsdp would; nothing else is allocated.
  check_extensions(c, ext);
  Datasets data = c.data.dataset == "custom" ? ext.data(c) : make_datasets(c);
  const core::Tensor sample = data.train->get_batch({0}).input;
  core::Generator gen(c.seed);
  auto model = c.model.type == "custom" ? ext.model(c, sample, &gen)
                                        : build_model(c, &gen, sample, data.train->num_classes());
  std::vector<std::string> names;
  std::vector<int64_t> sizes;
  int64_t p = 0;
  for (auto& [name, t] : model->named_parameters()) {
    if (!t.requires_grad()) continue;
    names.push_back(name);
    sizes.push_back(t.numel());
    p += t.numel();
  }
  const double b = c.precision == Precision::kFp64 ? 8 : 4;  // master weights stay float32
  const bool adam = c.optimizer.kind == core::optim::OptimizerKind::kAdamW;
  const double k = adam ? 2 : (c.optimizer.momentum > 0 ? 1 : 0);
  // fsdp's units: each rank keeps 1/world of each (padded); while computing it holds a unit
  // gathered, the next `prefetch` ones arriving, and up to two units' full gradients.
  std::vector<int64_t> units;
  std::vector<std::string> unit_names;
  try {
    for (const auto& u : collectives::plan_units(*model, fsdp_unit_patterns(c, *model), names)) {
      int64_t n = 0;
      for (size_t i : u.params) n += sizes[i];
      units.push_back(n);
      unit_names.push_back(u.name.empty() ? "(root)" : u.name);
    }
  } catch (const ConfigError& e) {
    COHORT_THROW(ConfigError, "distributed.fsdp.unit: ", e.what());
  }
  int64_t sharded = 0;
  for (int64_t n : units) sharded += padded(n, world) / world;
  std::vector<int64_t> largest = units;
  std::sort(largest.rbegin(), largest.rend());
  const int64_t root = units.empty() ? 0 : units.back();  // gathered for the whole step
  int64_t gathered = root;
  for (size_t i = 0; i < largest.size() && i < static_cast<size_t>(c.distributed.fsdp.prefetch) + 1;
       ++i)
    gathered += largest[i];
  const int64_t grads_in_flight =
      largest.empty() ? 0 : largest[0] * std::min<int64_t>(2, largest.size());
  // zero2 keeps a bucket's full gradient only while it is reduced (at most a few buckets).
  const double bucket = c.distributed.bucket_cap_mb * (1 << 20);

  struct Row {
    const char* name;
    double params, grads, optim, transient;
  };
  const double P = static_cast<double>(p) * b, W = world;
  const std::vector<Row> rows = {
      {"ddp", P, P, k * P, 0},
      {"zero1", P, P, k * P / W, 0},
      {"zero2", P, P / W, k * P / W, std::min(P, 2 * bucket)},
      {"fsdp", static_cast<double>(sharded) * b, static_cast<double>(sharded) * b,
       k * static_cast<double>(sharded) * b, static_cast<double>(gathered + grads_in_flight) * b},
      {"parameter_server", P, P, 0, 0},
  };
  std::string out;
  char line[256];
  std::snprintf(line, sizeof line,
                "model %s: %lld parameters (%s in %s); optimizer %s keeps %g value%s per "
                "parameter\n",
                c.model.type.c_str(), static_cast<long long>(p), mb(P).c_str(),
                b == 8 ? "float64" : "float32", core::optim::optimizer_kind_name(c.optimizer.kind),
                k, k == 1 ? "" : "s");
  out += line;
  std::string list;
  for (size_t i = 0; i < unit_names.size() && i < 8; ++i) list += (i ? ", " : "") + unit_names[i];
  if (unit_names.size() > 8) list += " and " + std::to_string(unit_names.size() - 8) + " more";
  std::snprintf(line, sizeof line, "fsdp units (%zu): %s\n", unit_names.size(), list.c_str());
  out += line;
  std::snprintf(line, sizeof line,
                "model state per rank at world size %d (activations, data and the CPU's caches "
                "not included):\n",
                world);
  out += line;
  std::snprintf(line, sizeof line, "  %-17s %12s %12s %12s %12s %8s %16s\n", "strategy",
                "parameters", "gradients", "optimizer", "total", "vs ddp", "+ while running");
  out += line;
  const double ddp = rows[0].params + rows[0].grads + rows[0].optim;
  for (const Row& r : rows) {
    const double total = r.params + r.grads + r.optim;
    std::snprintf(line, sizeof line, "  %-17s %12s %12s %12s %12s %8.2f %16s\n", r.name,
                  mb(r.params).c_str(), mb(r.grads).c_str(), mb(r.optim).c_str(), mb(total).c_str(),
                  total / ddp, r.transient > 0 ? ("+" + mb(r.transient)).c_str() : "");
    out += line;
  }
  out +=
      "(parameter_server: the servers hold the optimizer state; fsdp's last column is the units "
      "gathered and reduced at once, zero2's the buckets in flight)\n";
  return out;
}

}  // namespace cohort::trainer
