// One worker of a training job, as `cohort train` runs it and as a user's own program runs it
// with its own model or data (trainer::Extensions): the config with overrides, the job this
// process belongs to (cohort launch, torchrun's variables, mpirun, srun; alone: single-process
// training), its process group or parameter servers, and the Trainer, with checkpoints, metrics
// and the run directory. Errors map to `cohort train`'s exit codes.
#pragma once

#include <exception>
#include <string>
#include <vector>

#include "trainer/trainer.h"

namespace cohort::launcher {

struct TrainFlags {
  bool print_model = false;      // print the model's layers, shapes and parameters; train nothing
  bool eval_only = false;        // evaluate model.init_from's weights; train nothing
  bool estimate_memory = false;  // print the model state per rank of each strategy
  int world_size = 0;            // for estimate_memory; 0: the job's
};

// Runs one worker. Returns 0; throws cohort::Error subclasses (and trainer::Stopped).
int train_command(const std::string& config, const std::vector<std::string>& overrides,
                  const TrainFlags& flags, const trainer::Extensions& ext = {});

// `cohort train`'s exit code for an exception, after printing it as "cohort: <what>" on stderr:
// 2 config, 3 file, 4 distributed, 5 token, 6 out of memory, 128 + signal for a stop, 1 anything
// else.
int report_and_exit_code(const std::exception& e);

// A main() for a user's program: PROGRAM CONFIG [key.path=value ...] [--print-model]
// [--eval-only], run under `cohort launch` (or mpirun, srun, alone) like `cohort train`.
int train_main(int argc, char** argv, const trainer::Extensions& ext);

}  // namespace cohort::launcher
