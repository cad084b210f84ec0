// The training loop behind `cohort train`: builds model, data, optimiser and schedule from a
// Config, trains, evaluates, and writes the run directory (config.resolved.yaml, metrics.jsonl).
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <optional>

#include "collectives/process_group.h"
#include "core/data/dataset.h"
#include "core/io/checkpoint.h"
#include "core/nn/module.h"
#include "core/optim/optimizer.h"
#include "core/tensor/generator.h"
#include "core/util/timeline.h"
#include "parameter_server/client.h"
#include "trainer/checkpoint_writer.h"
#include "trainer/config.h"
#include "trainer/parallelism.h"

namespace cohort::trainer {

// The job this worker belongs to. An empty group means a single process.
struct Distributed {
  std::shared_ptr<collectives::ProcessGroup> group;
  // The job's store (for what is not a tensor: merging timelines).
  std::shared_ptr<collectives::Store> store;
  int local_rank = 0, local_world_size = 1;
  std::string host;  // names this rank in timelines
  // Without a group (parameter-server workers train independently): this worker's place in the
  // job, for sharding the data.
  int rank = 0, world = 1;
  // distributed.strategy parameter_server: how this worker reaches the servers.
  std::optional<ps::ClientOptions> ps;
  // Where this process runs, for the banner ("cpus 0-1 (bound by cohort launch --cpu-bind cores)").
  std::string placement;
};

struct RunSummary {
  int64_t steps = 0;
  int world_size = 1;
  double train_s = 0, samples_per_s = 0;  // samples/s of the whole job
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

// With a group of several ranks the trainer is data-parallel (distributed.strategy ddp, zero1,
// zero2 or fsdp; parallelism.h): every rank trains on its shard of each epoch, gradients are
// averaged, evaluation is sharded and reduced, and rank 0 alone writes the run directory and
// checkpoints.
// With parameter servers (Distributed::ps) the workers never wait for each other: each pulls the
// parameters, pushes its gradients (the servers apply the optimiser), and worker 0, the chief,
// evaluates and writes the run directory; a worker that dies does not stop the others.
// fp16 training's dynamic loss scale (PyTorch's GradScaler): the loss is multiplied by the scale
// before backward so that small gradients survive float16; unscale() divides them again before
// the optimiser and reports an overflow (inf or NaN anywhere), after which the step is skipped
// and the scale halves. After `growth_interval` clean steps in a row it doubles.
class LossScaler {
 public:
  explicit LossScaler(double initial = 65536.0, int64_t growth_interval = 2000)
      : scale_(initial), interval_(growth_interval) {}
  double scale() const { return scale_; }
  core::Tensor scaled(const core::Tensor& loss) const;
  // One synchronisation with the device. False: gradients overflowed; skip this step.
  // `over_ranks` sums a number over the ranks, so that all of them agree (ZeRO-1's gradients
  // are still per rank here).
  bool unscale(const std::vector<core::Tensor>& params,
               const std::function<double(double)>& over_ranks = {});

 private:
  double scale_;
  int64_t interval_, clean_ = 0;
};

// The data a config names: the training set, and the evaluation set (null where there is none).
struct Datasets {
  std::shared_ptr<core::data::Dataset> train, eval;
  // File datasets: the input normalisation used (given or computed), for the run directory.
  std::vector<double> mean, std;
  std::string normalization_source;  // "config", "computed from N training samples", "none"
};
// A program's own model or data, for the Trainer (and launcher::train_main): a config with
// `model.type: custom` takes its model from `model`, one with `data.dataset: custom` its data
// from `data`. Both read their own settings from model.args / data.args, free-form mappings.
struct Extensions {
  // The model for one sample input of the data ([1, ...]); initialise from `gen` (seeded by the
  // config's seed) so that every rank starts alike.
  std::function<std::shared_ptr<core::nn::Module>(const Config&, const core::Tensor& sample,
                                                  core::Generator* gen)>
      model;
  // The training and evaluation data (eval may be null).
  std::function<Datasets(const Config&)> data;
};

// ConfigError when the config asks for a custom model or data that `ext` does not provide.
void check_extensions(const Config& c, const Extensions& ext);

class Trainer {
 public:
  explicit Trainer(Config config, Distributed dist = {}, Extensions ext = {});
  ~Trainer();
  // Runs to train.steps or train.epochs. Throws ConfigError for bad settings found late, Stopped
  // after SIGTERM or SIGUSR1, other cohort::Error subclasses for failures while training.
  RunSummary run();
  EvalResult evaluate();
  core::nn::Module& model() { return *model_; }

 private:
  core::Tensor compute_loss(const core::data::Batch& batch, core::Tensor* logits_out);
  // One optimiser step: train.grad_accum_steps batches (the first in `batch`, the rest from the
  // loader), forward and backward each, then the update. Returns the mean loss (detached).
  core::Tensor train_step(core::data::DataLoader& loader, core::data::Batch& batch, int64_t step,
                          double lr, core::Timeline* tl);
  // Writes a checkpoint after `step`, at batch `batch_in_epoch` of `epoch` (every rank takes
  // part; rank 0 writes).
  // With checkpoint.async the writing goes on in the background (writer_).
  void save(int64_t step, int64_t epoch, int64_t batch_in_epoch);
  // diagnostics.straggler_*: each rank's host name in the store, and rank 0's report of a
  // straggler (stderr, metrics.jsonl) while the job runs.
  void publish_host();
  void report_straggler(class Reporter& report, const struct Straggler& s, int64_t step);
  // In-place healing: takes the ranks of a new generation, with rank 0's parameters (DDP's
  // broadcast) and optimiser state (`state`: this rank's, replaced by rank 0's).
  void adopt(const struct Generation& g, core::optim::OptimizerState state);
  // Reports a background write that finished (rank 0).
  void written(std::optional<CheckpointWriter::Written> w);
  // Writes config.resolved.yaml and data.json (rank 0).
  void write_run_files() const;
  // Rank 0 claims the run directory and decides what the run resumes from; the others follow its
  // decision. Every rank loads what it keeps of that checkpoint (so checkpoint.dir must be on
  // storage every node sees). Returns the checkpoint, with its meta in `start`.
  std::optional<std::string> claim_and_resume(std::unique_ptr<class RunDirectory>& run_dir,
                                              core::io::CheckpointMeta& start);
  void print_banner(const std::optional<std::string>& resume_from,
                    const core::io::CheckpointMeta& start) const;
  // logging.timeline: this rank's timeline (null when off), recorded at `path`.
  std::unique_ptr<core::Timeline> open_timeline(std::string& path);
  // Every rank's throughput, memory and model state, to metrics.jsonl.
  void report_ranks(class Reporter& report, double my_samples_per_s);
  // Sums `values` over the ranks (identity for a single process).
  std::vector<double> sum_over_ranks(std::vector<double> values);
  // Every rank's `values`, concatenated in rank order.
  std::vector<double> gather_from_ranks(const std::vector<double>& values);
  void merge_timelines(const std::string& local_path);
  bool leader() const { return rank_ == 0; }
  // True when the ranks take part in collectives (not for parameter-server workers).
  bool collective() const { return dist_.group && world_ > 1; }

  Config c_;
  Distributed dist_;
  int rank_ = 0, world_ = 1;
  std::unique_ptr<Parallelism> parallel_;
  core::Device device_;
  std::shared_ptr<core::nn::Module> model_;
  std::shared_ptr<core::data::Dataset> train_set_, eval_set_;
  std::unique_ptr<core::optim::LRSchedule> schedule_;
  // precision: the dtype matmuls run in under autocast (kFloat32: off), and fp16's loss scale.
  core::DType autocast_ = core::DType::kFloat32;
  // The parameters' dtype: float32, or float64 under precision fp64.
  core::DType param_dtype_ = core::DType::kFloat32;
  std::unique_ptr<LossScaler> scaler_;
  bool cpu_bf16_ = false;  // precision bf16 on the CPU: this trainer switched bfloat16 GEMMs on
  std::string run_id_;     // the run whose checkpoints this one writes (run_dir.h)
  int64_t per_epoch_ = 0;  // batches in an epoch of this rank's shard
  Datasets data_;
  // checkpoint.async: the background writer (null otherwise) and its own store connection.
  std::unique_ptr<CheckpointWriter> writer_;
  std::shared_ptr<collectives::Store> checkpoint_store_;
  class Reporter* reporter_ = nullptr;  // run()'s, while it runs
  double last_write_s_ = 0;             // the last background write's duration
  double data_s_ = 0;                   // waiting for the data loader since the last log line
  // cohort launch --heal (heal.h): the healer (null: a failure ends the run), whether this rank is
  // a replacement joining a running job, and the global batch every world size keeps.
  std::unique_ptr<class Healer> healer_;
  bool heal_join_ = false;
  int64_t global_batch_ = 0;
  // train.max_time counts from here (the worker's start, data and model included).
  std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
};

// Builds the model a config names (exposed for tests and examples). Config models (model.type
// sequential or graph) read their input sizes off `sample`, one input of the data ([1, ...]);
// mlp and cnn take theirs from it too, and their classes from `data_classes` (0: 10).
std::shared_ptr<core::nn::Module> build_model(const Config& c, core::Generator* gen,
                                              const core::Tensor& sample = {},
                                              int64_t data_classes = 0);

Datasets make_datasets(const Config& c);

// What `cohort train CONFIG --print-model` prints: each layer, its output shape for one sample,
// its parameter count, and the total.
std::string describe_model(const Config& c, const Extensions& ext = {});

// The device a worker trains on for the config's `device`: cpu; cuda:N; cuda (the node's GPU
// number local_rank; a ConfigError when the node's ranks outnumber its GPUs); auto (cuda where
// this build and machine have a GPU for every rank of the node, else cpu). Asking for a GPU that
// is not there is a ConfigError saying why.
core::Device resolve_device(const DeviceSpec& spec, int local_rank, int local_world_size = 1);

}  // namespace cohort::trainer
