// The seam between the training loop and whatever keeps a worker in step with the others:
// distributed.strategy none, ddp, zero1, zero2, fsdp or parameter_server, built by one factory
// from the config and the worker's place in its job. The loop calls the same five things for
// every strategy: forward, a scope for micro-batches that accumulate locally, update, and the
// model's and optimiser's state for checkpoints.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>

#include "collectives/store/store.h"
#include "core/io/checkpoint.h"
#include "core/nn/module.h"
#include "core/optim/optimizer.h"
#include "core/util/timeline.h"
#include "parameter_server/client.h"
#include "trainer/config.h"

namespace cohort::trainer {

struct Distributed;
class LossScaler;

// Where a rank's memory goes, for metrics.jsonl and --estimate-memory.
struct ModelStateBytes {
  int64_t params = 0, grads = 0, optimizer = 0;
  int64_t total() const { return params + grads + optimizer; }
};

class Parallelism {
 public:
  virtual ~Parallelism() = default;
  virtual Strategy strategy() const = 0;

  // The model's forward (DDP broadcasts buffers first; FSDP gathers each unit around its own).
  virtual core::Tensor forward(const core::Tensor& x) = 0;
  // Before a step's first forward: gradients cleared (parameter servers also pull here).
  virtual void begin_step(int64_t step, double lr, int64_t batch_samples) = 0;
  // While the returned scope lives, backward passes only accumulate locally (all micro-batches
  // of a step but the last). Null where the strategy reduces every backward (zero2, fsdp, whose
  // point is to keep no full-size gradient).
  virtual std::unique_ptr<struct AccumulationScope> accumulate_locally() { return nullptr; }
  // After the step's last backward: fp16 unscaling (scaler may be null), clipping to
  // `grad_clip` (0: none) and the update. False when fp16 overflowed and the step was skipped.
  virtual bool update(LossScaler* scaler, double grad_clip) = 0;
  // The job's samples so far where the strategy counts them (parameter servers: every
  // worker's pushes); nullopt: the loop counts.
  virtual std::optional<int64_t> job_samples() const { return std::nullopt; }
  // Before evaluating or saving: brings this worker's parameters up to date (parameter
  // servers' chief pulls).
  virtual void refresh(int64_t /*step*/) {}
  // The worker is done (parameter-server workers leave, so that sync steps stop waiting).
  virtual void finish() {}

  // The whole model's parameters and buffers, and the optimiser state keyed by parameter as an
  // unsharded optimiser keys it. Collectives under zero1, zero2 and fsdp: every rank calls them.
  virtual core::nn::StateDict model_state();
  virtual core::optim::OptimizerState optimizer_state();
  // Loads what model_state()/optimizer_state() returned (from any strategy and world size).
  virtual void load(const core::nn::StateDict& model, const core::optim::OptimizerState& optim);

  // This rank's part of a sharded checkpoint (core/io/checkpoint.h): sharded strategies write
  // the shards they hold, replicated ones an equal slice of every tensor, so that every rank
  // writes in parallel. Keys as in model_state() and optimizer_state(). May be a collective.
  virtual core::io::ShardedState checkpoint_state();
  // Loads a checkpoint of any format, strategy and world size, reading only what this rank
  // keeps. Errors naming the tensor when the checkpoint does not fit the model.
  virtual void load_checkpoint(const core::io::CheckpointReader& ck);
  // The ranks that write checkpoint pieces, and this rank's place among them.
  int writer_rank() const { return writer_rank_; }
  int writers() const { return writers_; }

  core::optim::Optimizer& optimizer() { return *opt_; }
  virtual void set_timeline(core::Timeline* /*t*/) {}
  // The timeline lane its communication is drawn on, named; empty: none.
  virtual const char* comm_lane() const { return nullptr; }
  // A line for the run's banner (how the model is split); empty: nothing to say.
  virtual std::string describe() const { return ""; }
  // This rank's model state now, measured from the tensors it holds.
  virtual ModelStateBytes state_bytes() const = 0;

 protected:
  explicit Parallelism(std::shared_ptr<core::nn::Module> model) : model_(std::move(model)) {}
  std::shared_ptr<core::nn::Module> model_;
  std::unique_ptr<core::optim::Optimizer> opt_;  // set by each strategy's constructor
  int writer_rank_ = 0, writers_ = 1;
  friend std::unique_ptr<Parallelism> make_parallelism(const Config&, const Distributed&,
                                                       std::shared_ptr<core::nn::Module>);
};

// Ends local accumulation when destroyed.
struct AccumulationScope {
  virtual ~AccumulationScope() = default;
};

// The worker's place in its job, as the launcher found it (launcher/worker_env.h).
struct JobPlace {
  int rank = 0, world = 1, local_rank = 0, local_world = 1;
};

// Joins the job: parameter-server workers keep to themselves (each talks to the servers only, so
// that one that dies stops nobody); the others form a process group over `store` on the
// configured backend (auto: nccl when the worker trains on a GPU, else cpu). `store` may be null
// for a single process; `ps` is how parameter-server workers reach their servers.
Distributed join_job(const Config& c, const JobPlace& place,
                     std::shared_ptr<collectives::Store> store,
                     std::optional<ps::ClientOptions> ps);

// distributed.fsdp.unit, or by default the model's transformer blocks (none: FSDP's own default,
// its top-level layers).
std::vector<std::string> fsdp_unit_patterns(const Config& c, core::nn::Module& model);

// Builds the strategy's object around a model already on its device and dtype. ConfigError for
// settings that do not fit the model (an fsdp unit that names no module, say), naming the key.
std::unique_ptr<Parallelism> make_parallelism(const Config& c, const Distributed& dist,
                                              std::shared_ptr<core::nn::Module> model);

}  // namespace cohort::trainer
