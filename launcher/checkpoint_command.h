// `cohort checkpoint consolidate DIR [--output FILE]`: one model.safetensors (the whole model,
// PyTorch's state_dict names) from a checkpoint of any format and world size, and `cohort
// checkpoint info DIR`: what a checkpoint holds.
#pragma once

#include <string>

namespace cohort::launcher {

struct CheckpointCommandOptions {
  std::string dir;
  std::string output;  // empty: DIR/model.safetensors
};

int checkpoint_consolidate(const CheckpointCommandOptions& o);
int checkpoint_info(const CheckpointCommandOptions& o);

}  // namespace cohort::launcher
