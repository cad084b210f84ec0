// The training loop behind `cohort train`: builds model, data, optimiser and schedule from a
// Config, trains, evaluates, and writes the run directory (config.resolved.yaml, metrics.jsonl).
#pragma once

#include <memory>

#include "core/data/dataset.h"
#include "core/nn/module.h"
#include "core/optim/optimizer.h"
#include "core/tensor/generator.h"
#include "trainer/config.h"

namespace cohort::trainer {

struct RunSummary {
  int64_t steps = 0;
  double train_s = 0, samples_per_s = 0;
  double test_acc = 0, test_loss = 0;
  double final_loss = 0;
};

struct EvalResult {
  double accuracy = 0, loss = 0;
};

// Thrown by Trainer::run when SIGTERM or SIGUSR1 (a launcher stopping its workers, Slurm before a
// time limit or preemption) asked it to stop: the step that was running finished and a checkpoint
// of it was written, so `checkpoint.resume: auto` continues from there.
class Stopped : public Error {
 public:
  Stopped(int signal, const std::string& what) : Error(what), signal_(signal) {}
  int signal() const { return signal_; }

 private:
  int signal_;
};

class Trainer {
 public:
  explicit Trainer(Config config);
  ~Trainer();
  // Runs to train.steps or train.epochs. Throws ConfigError for bad settings found late, Stopped
  // after SIGTERM or SIGUSR1, other cohort::Error subclasses for failures while training.
  RunSummary run();
  EvalResult evaluate();
  core::nn::Module& model() { return *model_; }

 private:
  core::Tensor compute_loss(const core::data::Batch& batch, core::Tensor* logits_out);
  Config c_;
  core::Device device_;
  std::shared_ptr<core::nn::Module> model_;
  std::shared_ptr<core::data::Dataset> train_set_, eval_set_;
  std::unique_ptr<core::optim::Optimizer> optimizer_;
  std::unique_ptr<core::optim::LRSchedule> schedule_;
};

// Builds the model a config names (exposed for tests and examples).
std::shared_ptr<core::nn::Module> build_model(const Config& c, core::Generator* gen);

}  // namespace cohort::trainer
