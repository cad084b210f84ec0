#include "launcher/checkpoint_command.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>

#include "core/io/checkpoint.h"
#include "core/util/error.h"

namespace cohort::launcher {

namespace fs = std::filesystem;
using Part = core::io::CheckpointReader::Part;

int checkpoint_consolidate(const CheckpointCommandOptions& o) {
  const core::io::CheckpointReader ck(o.dir);
  const std::string out =
      o.output.empty() ? (fs::path(o.dir) / "model.safetensors").string() : o.output;
  if (o.output.empty() && ck.world_size() == 1 && fs::exists(out)) {
    std::printf("%s: written by one process; its model.safetensors is whole already\n",
                o.dir.c_str());
    return 0;
  }
  // Under a temporary name, then renamed: a reader never sees half a file.
  const std::string tmp = out + ".tmp-" + std::to_string(::getpid());
  core::io::save_safetensors(tmp, ck.read_all(Part::kModel));
  core::io::fsync_path(tmp);
  std::error_code ec;
  fs::rename(tmp, out, ec);
  if (ec) {
    fs::remove(tmp, ec);
    COHORT_THROW(IoError, "cannot write ", out);
  }
  std::printf("%s: step %lld, written by %d rank%s: %zu tensors consolidated into %s\n",
              o.dir.c_str(), static_cast<long long>(ck.meta().step), ck.world_size(),
              ck.world_size() == 1 ? "" : "s", ck.shapes(Part::kModel).size(), out.c_str());
  return 0;
}

int checkpoint_info(const CheckpointCommandOptions& o) {
  const core::io::CheckpointReader ck(o.dir);
  const auto& m = ck.meta();
  std::printf("%s: step %lld, epoch %lld, %lld samples into it; written by %d rank%s; run %s\n",
              o.dir.c_str(), static_cast<long long>(m.step), static_cast<long long>(m.epoch),
              static_cast<long long>(m.samples_in_epoch), ck.world_size(),
              ck.world_size() == 1 ? "" : "s", m.run_id.empty() ? "(none)" : m.run_id.c_str());
  int64_t total = 0;
  for (auto& [name, shape] : ck.shapes(Part::kModel)) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    total += n;
    std::printf("  %-40s %s\n", name.c_str(), core::shape_str(shape).c_str());
  }
  std::printf("%zu model tensors, %lld elements; %zu optimizer tensors\n",
              ck.shapes(Part::kModel).size(), static_cast<long long>(total),
              ck.shapes(Part::kOptimizer).size());
  return 0;
}

}  // namespace cohort::launcher
