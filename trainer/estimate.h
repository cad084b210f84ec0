// `cohort train CONFIG --estimate-memory [--world-size N]`: what each rank holds for the model
// (parameters, gradients, optimiser state) under every strategy at a world size, from the
// config's model and optimiser before any training state is allocated.
#pragma once

#include <string>

#include "trainer/trainer.h"

namespace cohort::trainer {

// The table `--estimate-memory` prints. world_size >= 1.
std::string estimate_memory(const Config& c, int world_size, const Extensions& ext = {});

}  // namespace cohort::trainer
