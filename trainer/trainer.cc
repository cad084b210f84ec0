// The training loop, for one process or data-parallel ranks: the sampler shards each epoch by rank,
// DDP (or ZeRO-1) averages gradients from autograd hooks, and rank 0 writes the run directory.
#include "trainer/trainer.h"

#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numeric>
#include <optional>
#include <thread>

#include <nlohmann/json.hpp>

#include "collectives/ddp/zero.h"
#include "collectives/flight_recorder.h"
#include "core/autograd/grad_mode.h"
#include "core/data/files.h"
#include "core/io/checkpoint.h"
#include "core/io/safetensors.h"
#include "core/nn/models.h"
#include "core/nn/normalization.h"
#include "core/ops/cpu/bf16_gemm.h"
#include "core/ops/ops.h"
#include "core/tensor/cuda/cuda_device.h"
#include "core/util/env.h"
#include "core/util/threads.h"
#include "core/util/timeline.h"
#include "trainer/heal.h"
#include "trainer/metrics.h"
#include "trainer/model_builder.h"
#include "trainer/reporter.h"
#include "trainer/run_dir.h"
#include "trainer/stop.h"
#include "trainer/stragglers.h"
#include "trainer/tensorboard.h"

namespace cohort::trainer {

using core::Tensor;
using Clock = std::chrono::steady_clock;

namespace {

// In-place healing: how long the first survivor waits for the others to arrive (at least), and
// how often rank 0 looks for a replacement waiting to join.
constexpr double kHealSettleS = 1.0;
constexpr int64_t kHealJoinCheckSteps = 10;
constexpr int kMaxHealsInARow = 3;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::unique_ptr<core::optim::LRSchedule> make_schedule(const Config& c, int64_t total_steps) {
  if (c.schedule.type == "step")
    return std::make_unique<core::optim::StepLR>(c.optimizer.lr, c.schedule.step_size,
                                                 c.schedule.gamma);
  if (c.schedule.type == "cosine")
    return std::make_unique<core::optim::CosineLR>(c.optimizer.lr, c.schedule.warmup_steps,
                                                   total_steps, c.schedule.min_lr);
  return std::make_unique<core::optim::ConstantLR>(c.optimizer.lr);
}

}  // namespace

Trainer::Trainer(Config config, Distributed dist, Extensions ext)
    : c_(std::move(config)), dist_(std::move(dist)) {
  check_extensions(c_, ext);
  if (dist_.group) {
    rank_ = dist_.group->rank();
    world_ = dist_.group->size();
  } else {
    rank_ = dist_.rank;
    world_ = dist_.world;
  }
  // An elastic job at another world size than it started with keeps its global batch (the
  // checkpoint's position in the epoch counts samples of the whole job, so it resumes alike).
  global_batch_ = c_.data.batch_size * std::max(world_, 1);
  if (env::get(env::kBatchWorld) && world_ > 0) {
    const int64_t base = env::integer(env::kBatchWorld, world_, 1, 1 << 24);
    global_batch_ = c_.data.batch_size * base;
    if (base != world_) {
      const int64_t global = c_.data.batch_size * base;
      const int64_t per_rank = (global + world_ - 1) / world_;
      if (rank_ == 0)
        std::printf(
            "cohort: elastic: world size %d, data.batch_size %lld was given for %lld ranks: %lld "
            "per rank %s the global batch of %lld%s\n",
            world_, static_cast<long long>(c_.data.batch_size), static_cast<long long>(base),
            static_cast<long long>(per_rank), per_rank * world_ == global ? "keeps" : "rounds up",
            static_cast<long long>(global),
            per_rank * world_ == global ? ""
                                        : (" to " + std::to_string(per_rank * world_) +
                                           " (choose node counts that divide it)")
                                              .c_str());
      c_.data.batch_size = per_rank;
    }
  }
  // A rank whose operation times out or fails writes its recent operations here, for
  // `cohort diagnose RUN_DIR`.
  collectives::FlightRecorder::get().set_dump_dir(c_.logging.dir + "/flight_recorder", rank_,
                                                  world_);
  // Tells `cohort launch` where to look when the job fails (one rank per node writes it).
  if (const char* note = env::get(env::kFlightRecorderNote); note && dist_.local_rank == 0) {
    std::error_code ec;
    const auto dir = std::filesystem::absolute(collectives::FlightRecorder::get().dump_dir(), ec);
    std::ofstream(note) << dir.string() << "\n";
  }
  const bool ps_mode = c_.distributed.strategy == Strategy::kParameterServer;
  // cohort launch --heal: data-parallel ranks on the cpu backend heal in place (heal.h); other
  // strategies and backends take the restart path (the shards or the communicator of a dead rank
  // cannot be rebuilt from the others).
  heal_join_ = env::flag(env::kHealJoin, false);
  if (env::flag(env::kHeal, false) && dist_.store && world_ > 1 &&
      c_.distributed.strategy == Strategy::kDdp &&
      (heal_join_ || (dist_.group && dist_.group->backend_name() == "cpu"))) {
    collectives::ProcessGroupOptions po;
    po.timeout = collectives::Millis(static_cast<int64_t>(c_.distributed.timeout_s * 1000));
    healer_ = std::make_unique<Healer>(dist_.store, "cpu", po, world_);
  } else if (heal_join_) {
    COHORT_THROW(ConfigError,
                 "this rank was started to replace a dead one (COHORT_HEAL_JOIN), but only "
                 "distributed.strategy ddp on the cpu backend heals in place");
  }
  if (ps_mode != dist_.ps.has_value())
    COHORT_THROW(ConfigError,
                 ps_mode
                     ? std::string("distributed.strategy is parameter_server but this worker "
                                   "was not started with parameter servers; use cohort "
                                   "launch --ps-servers S")
                     : std::string("this worker was started with parameter servers but "
                                   "distributed.strategy is ") +
                           strategy_name(c_.distributed.strategy) + "; set it to parameter_server");
  if (world_ > 1 && c_.distributed.strategy == Strategy::kNone)
    COHORT_THROW(ConfigError, "distributed.strategy is none but this job has ", world_,
                 " ranks; use ddp, zero1, zero2 or fsdp, or start a single process");
  // Ranks sharing a node share its cores: torchrun's one-thread default wastes them, N threads
  // per rank oversubscribes them. A rank bound to its share (cohort launch --cpu-bind, mpirun,
  // srun) uses all of it; an unbound one an equal part of what it may use.
  int threads = static_cast<int>(c_.threads);
  if (threads == 0) {
    const int mine = core::available_cores();
    threads =
        core::bound_to_own_cpus() ? mine : std::max(1, mine / std::max(1, dist_.local_world_size));
  }
  core::set_num_threads(threads);
  device_ = resolve_device(c_.device, dist_.local_rank, dist_.local_world_size);
  if (ps_mode && device_.is_cuda()) {
    // The parameter-server client moves parameters and gradients through host memory.
    if (c_.device.kind != DeviceSpec::Kind::kAuto)
      COHORT_THROW(ConfigError, "device ", c_.device.str(),
                   ": parameter-server workers train on the CPU in this version (their client "
                   "exchanges tensors from host memory); use device: cpu or auto");
    device_ = core::Device::cpu();
  }
  if (c_.precision == Precision::kFp64) {
    if (!device_.is_cpu())
      COHORT_THROW(ConfigError, "precision fp64 runs on the CPU, but this worker trains on ",
                   device_.str(), "; use device: cpu");
    if (ps_mode)
      COHORT_THROW(ConfigError,
                   "precision fp64 is not available with parameter servers, which hold float32 "
                   "values; use precision: fp32 there");
    param_dtype_ = core::DType::kFloat64;
  } else if (c_.precision == Precision::kBf16 && device_.is_cpu()) {
    // The CPU's bfloat16: every GEMM rounds its operands to bfloat16 and accumulates in float32
    // (AVX512-BF16); the rest of the step stays float32.
    if (!core::cpu::bf16_gemm_supported())
      COHORT_THROW(ConfigError,
                   "precision bf16 on the CPU needs AVX512-BF16 (Intel Cooper Lake or later, AMD "
                   "Zen 4 or later), which this CPU lacks; use precision: fp32 or device: cuda");
    core::cpu::set_bf16_gemm(true);
    cpu_bf16_ = true;
  } else if (c_.precision != Precision::kFp32) {
    if (!device_.is_cuda())
      COHORT_THROW(ConfigError, "precision ", precision_name(c_.precision),
                   " runs on a GPU, but this worker trains on ", device_.str(),
                   "; use precision: fp32, bf16 (on a CPU with AVX512-BF16) or device: cuda");
    autocast_ = c_.precision == Precision::kBf16 ? core::DType::kBFloat16 : core::DType::kFloat16;
    if (c_.precision == Precision::kFp16) {
      if (ps_mode)
        COHORT_THROW(ConfigError,
                     "precision fp16 needs its loss scale on the workers' gradients, which "
                     "parameter servers apply as they arrive; use precision: bf16 or fp32 there");
      scaler_ = std::make_unique<LossScaler>();
    }
  }
  core::manual_seed(c_.seed);
  core::Generator init_gen(c_.seed);
  {
    data_ = c_.data.dataset == "custom" ? ext.data(c_) : make_datasets(c_);
    if (!data_.train)
      COHORT_THROW(ConfigError, "data.dataset custom: the program's data has no training set");
    train_set_ = data_.train;
    eval_set_ = data_.eval;
  }
  // Config models read their input sizes off one sample.
  {
    const Tensor sample = train_set_->get_batch({0}).input;
    const int64_t classes = train_set_->num_classes();
    model_ = c_.model.type == "custom" ? ext.model(c_, sample, &init_gen)
                                       : build_model(c_, &init_gen, sample, classes);
    if (!model_) COHORT_THROW(ConfigError, "model.type custom: the program built no model");
    // A label the output has no logit for would fail deep inside the loss, mid-epoch.
    if (classes > 0 && c_.model.type != "gpt") {
      core::autograd::NoGradGuard guard;
      model_->eval();
      const Tensor out = (*model_)(sample);
      model_->train();
      if (out.dim() == 2 && out.size(1) < classes)
        COHORT_THROW(ConfigError, "the data has ", classes, " classes (labels 0 to ", classes - 1,
                     ") but the model outputs ", out.size(1),
                     " logits; give its last layer out_features: ", classes);
    }
  }
  if (!c_.model.init_from.empty()) {
    try {
      model_->load_state_dict(core::io::load_safetensors(c_.model.init_from));
    } catch (const IoError& e) {
      COHORT_THROW(IoError, "model.init_from: ", e.what());
    } catch (const Error& e) {
      COHORT_THROW(ConfigError, "model.init_from ", c_.model.init_from,
                   " does not fit this model: ", e.what());
    }
  }
  model_->to(device_);
  model_->to(param_dtype_);

  parallel_ = make_parallelism(c_, dist_, model_);
  // Setting up freed what the model was built in (ZeRO's flat buffers, FSDP's shards replace it):
  // the allocator's cache would keep it, and a rank's memory would not show what it holds.
  core::release_cpu_cache();

  // SyncBatchNorm: batch_norm layers with sync: true take the whole job's batch statistics.
  model_->for_each_module([&](const std::string& name, core::nn::Module& m) {
    auto* bn = dynamic_cast<core::nn::BatchNorm*>(&m);
    if (!bn || !bn->spec().sync) return;
    if (ps_mode)
      COHORT_THROW(ConfigError, "layer ", name,
                   ": batch_norm sync needs ranks that train in step (distributed.strategy ddp, "
                   "zero1, zero2 or fsdp); parameter-server workers do not");
    if (!collective() && !heal_join_) return;
    collectives::AllreduceOptions ao;
    ao.timeout = collectives::Millis(static_cast<int64_t>(c_.distributed.timeout_s * 1000));
    // The group of the moment: healing (heal.h) replaces it.
    bn->set_stat_sum([this, ao](Tensor& t) { dist_.group->allreduce(t, ao)->wait(); });
  });
}

void Trainer::adopt(const Generation& g, core::optim::OptimizerState state) {
  dist_.group = g.group;
  dist_.rank = rank_ = g.rank;
  dist_.world = world_ = g.world;
  collectives::FlightRecorder::get().set_dump_dir(c_.logging.dir + "/flight_recorder", rank_,
                                                  world_);
  c_.data.batch_size = (global_batch_ + world_ - 1) / world_;
  // DDP's constructor broadcasts rank 0's parameters and buffers.
  parallel_ = make_parallelism(c_, dist_, model_);
  // The optimiser state: rank 0's names, dtypes and shapes through the store, its values by
  // broadcast (a replacement has none yet; survivors may have taken different last steps).
  auto store = std::make_shared<collectives::PrefixStore>(
      "heal/" + std::to_string(g.number) + "/optimizer", dist_.store);
  if (rank_ == 0) {
    nlohmann::json layout = nlohmann::json::array();
    for (const auto& [name, t] : state)
      layout.push_back({name, static_cast<int>(t.dtype()), t.sizes()});
    // The run whose checkpoints the ranks write together (a replacement does not know it yet).
    store->set("run_id", run_id_);
    store->set("layout", layout.dump());
  } else {
    const auto timeout = collectives::Millis(static_cast<int64_t>(c_.distributed.timeout_s * 1000));
    store->wait({"layout"}, timeout);
    run_id_ = store->get("run_id").substr(0, 256);
    state.clear();
    try {
      const auto layout = nlohmann::json::parse(store->get("layout"));
      if (!layout.is_array() || layout.size() > (1u << 20)) throw std::runtime_error("not a list");
      // An optimiser keeps per-parameter buffers (a few per parameter) and scalars: no tensor is
      // larger than the model, and all of them together no more than a few times it. Checked
      // before anything is allocated, without overflow.
      int64_t params = 1, total = 0;
      for (const Tensor& p : model_->parameters()) params += p.numel();
      for (const auto& e : layout) {
        const auto name = e.at(0).get<std::string>();
        const int dtype = e.at(1).get<int>();
        const auto shape = e.at(2).get<std::vector<int64_t>>();
        int64_t numel = 1;
        for (int64_t d : shape) {
          if (d < 0 || (d > 0 && numel > params / d))
            throw std::runtime_error("a tensor too large");
          numel *= d;
        }
        total += numel;
        if (dtype < 0 || dtype > static_cast<int>(core::DType::kFloat16) || shape.size() > 8 ||
            total > 8 * params + static_cast<int64_t>(layout.size()))
          throw std::runtime_error("a bad tensor, or more state than the model could have");
        state[name] = core::zeros(
            shape, core::TensorOptions(static_cast<core::DType>(dtype)).with_device(device_));
      }
    } catch (const std::exception& e) {
      COHORT_THROW(DistributedError, "healing: rank 0's optimiser layout is malformed: ", e.what());
    }
  }
  for (auto& [name, t] : state) {
    const collectives::FlightTag tag("healing: optimiser state");
    dist_.group->broadcast(t, {0})->wait();
  }
  if (!state.empty()) parallel_->optimizer().load_state_dict(state);
}

Trainer::~Trainer() {
  if (cpu_bf16_) core::cpu::set_bf16_gemm(false);
}

Tensor Trainer::train_step(core::data::DataLoader& loader, core::data::Batch& batch, int64_t step,
                           double lr, core::Timeline* tl) {
  const int64_t accum = c_.train.grad_accum_steps;
  parallel_->begin_step(step, lr, batch.input.size(0));
  // Gradient accumulation: each batch's loss is divided by the count, so that the summed
  // gradients are the mean over all of them; replicas reduce only after the last.
  Tensor loss;
  for (int64_t micro = 0; micro < accum; ++micro) {
    if (micro > 0) {
      core::Timeline::Span span(tl, "data", "data");
      const auto td = Clock::now();
      if (!loader.next(batch))
        COHORT_THROW(Error, "the data loader ran out inside an accumulation step");
      data_s_ += seconds_since(td);
    }
    std::unique_ptr<AccumulationScope> local;
    if (micro + 1 < accum) local = parallel_->accumulate_locally();
    Tensor part;
    {
      core::Timeline::Span span(tl, "forward", "compute");
      part = compute_loss(batch, nullptr);
      if (accum > 1) part = core::div(part, static_cast<double>(accum));
    }
    {
      core::Timeline::Span span(tl, "backward", "compute");
      if (scaler_) {
        scaler_->scaled(part).backward();
      } else {
        part.backward();
      }
    }
    loss = micro == 0 ? part.detach() : core::add(loss, part.detach());
  }
  core::Timeline::Span span(tl, "optimizer", "compute");
  // An fp16 overflow skips the step on every rank alike.
  parallel_->update(scaler_.get(), c_.optimizer.grad_clip);
  return loss;
}

RunSummary Trainer::run() {
  StopSignals stop_signals;
  // Held (with its lock) until the run ends.
  std::unique_ptr<RunDirectory> run_dir;
  core::io::CheckpointMeta start;
  const std::optional<std::string> resume_from = claim_and_resume(run_dir, start);
  print_banner(resume_from, start);
  // Token datasets: throughput in tokens too, and the loss as perplexity.
  const bool language =
      c_.data.dataset == "text" || c_.data.dataset == "tokens" || c_.data.dataset == "synthetic";
  Reporter report(c_, leader(), resume_from.has_value(), language ? c_.model.context : 0);
  // checkpoint.async's writer lives as long as the loop: leaving run() by an error abandons its
  // write (never renamed into place), leaving it normally waits for it.
  struct RunScope {
    Trainer& t;
    ~RunScope() {
      t.writer_.reset();
      t.reporter_ = nullptr;
    }
  } run_scope{*this};
  reporter_ = &report;
  if (c_.checkpoint.async) writer_ = std::make_unique<CheckpointWriter>();
  auto finish_writes = [&] {
    if (writer_) written(writer_->wait());
  };
  std::string timeline_path;
  std::unique_ptr<core::Timeline> timeline = open_timeline(timeline_path);
  core::Timeline* tl = timeline.get();
  parallel_->set_timeline(tl);

  // The data of this rank's shard; made again when healing changes the ranks (heal.h).
  int64_t batch = 0;
  std::shared_ptr<core::data::DistributedSampler> sampler;
  std::unique_ptr<core::data::DataLoader> loader;
  const int64_t accum = c_.train.grad_accum_steps;
  int64_t per_epoch = 0;
  auto make_loader = [&] {
    loader.reset();
    batch = c_.data.batch_size;
    sampler = std::make_shared<core::data::DistributedSampler>(
        train_set_->size(),
        core::data::DistributedSamplerOptions{rank_, world_, c_.data.shuffle, c_.seed, false});
    loader = std::make_unique<core::data::DataLoader>(
        train_set_, sampler,
        core::data::LoaderOptions{batch, true, static_cast<int>(c_.data.prefetch)});
    // A step is train.grad_accum_steps batches; an epoch ends with its last whole step (the
    // loader drops a partial batch, the loop a partial accumulation).
    per_epoch = per_epoch_ = sampler->num_samples() / batch / accum * accum;
  };
  make_loader();
  if (per_epoch == 0)
    COHORT_THROW(ConfigError, "data.batch_size ", batch, " x train.grad_accum_steps ", accum,
                 " is larger than the ", sampler->num_samples(), " training samples of each rank");
  // A checkpoint from another world size gives the job's samples consumed in its epoch: continue
  // from the same place in the same permutation (rounded down to a whole global batch).
  if (resume_from && start.samples_in_epoch > train_set_->size())
    COHORT_THROW(IoError, "checkpoint ", *resume_from, " is corrupt: it has consumed ",
                 start.samples_in_epoch, " samples of an epoch of ", train_set_->size());
  int64_t first_batch = start.batch_in_epoch;
  if (start.samples_in_epoch >= 0) first_batch = start.samples_in_epoch / (batch * world_);
  first_batch = first_batch / accum * accum;  // a checkpoint from another accumulation
  if (first_batch >= per_epoch) {
    ++start.epoch;
    first_batch = 0;
  }
  loader->start_epoch(start.epoch, first_batch);
  // train.steps > 0 wins over train.epochs: as many epochs as those steps take.
  const int64_t epochs = c_.train.steps > 0 ? std::numeric_limits<int64_t>::max() : c_.train.epochs;
  const int64_t total_steps = c_.train.steps > 0
                                  ? c_.train.steps
                                  : start.step + (per_epoch - first_batch) / accum +
                                        per_epoch / accum * (epochs - start.epoch - 1);
  if (resume_from && start.step >= total_steps && leader())
    std::fprintf(stderr,
                 "cohort: checkpoint %s is at step %lld, which is already past the %lld steps "
                 "this run trains; nothing left to train\n",
                 resume_from->c_str(), static_cast<long long>(start.step),
                 static_cast<long long>(total_steps));
  schedule_ = make_schedule(c_, total_steps);

  RunSummary s;
  s.world_size = world_;
  int64_t step = start.step, samples = 0;
  CheckpointPolicy checkpoints(c_.checkpoint);
  auto save_now = [&](int64_t epoch, int64_t batch_in_epoch) {
    const auto tc = Clock::now();
    parallel_->refresh(step);
    core::Timeline::Span span(tl, "checkpoint", "io");
    save(step, epoch, batch_in_epoch);
    checkpoints.wrote(step, seconds_since(tc));
    // With checkpoint.async, `seconds` is the stall (the copy to host memory); the write's own
    // time follows as a checkpoint_written record.
    report.write({{"event", "checkpoint"},
                  {"step", step},
                  {"seconds", checkpoints.last_seconds()},
                  {"async", writer_ != nullptr}});
  };
  double eval_s = 0;
  int64_t last_eval_step = -1, epoch = start.epoch;
  double best_metric = 0;
  int64_t best_step = -1, evals_without_gain = 0;
  bool early_stop = false, out_of_time = false;
  auto t0 = Clock::now();
  int64_t eval_wait_ns = 0;  // collective waits inside evaluations, left out of the step times
  auto run_eval = [&](int64_t epoch) {
    last_eval_step = step;
    auto te = Clock::now();
    const double train_s = seconds_since(t0) - eval_s;
    const int64_t waited0 = collectives::thread_collective_ns();
    EvalResult e;
    parallel_->refresh(step);
    {
      core::Timeline::Span span(tl, "eval", "eval");
      e = evaluate();
    }
    eval_s += seconds_since(te);
    eval_wait_ns += collectives::thread_collective_ns() - waited0;
    if (tl) tl->flush();
    s.test_acc = e.accuracy;
    s.test_loss = e.loss;
    // Early stopping: every rank sees the same reduced numbers, so every rank decides alike.
    std::string stop_note;
    if (!c_.eval.early_stopping.metric.empty()) {
      const bool acc = c_.eval.early_stopping.metric == "test_acc";
      const double value = acc ? e.accuracy : e.loss;
      const double gain = acc ? value - best_metric : best_metric - value;
      if (best_step < 0 || gain > c_.eval.early_stopping.min_delta) {
        best_metric = value;
        best_step = step;
        evals_without_gain = 0;
      } else if (++evals_without_gain >= c_.eval.early_stopping.patience) {
        early_stop = true;
        char buf[256];
        std::snprintf(buf, sizeof buf,
                      "early stopping: %s has not improved by more than %g for %lld evaluations "
                      "(best %.4f at step %lld)",
                      c_.eval.early_stopping.metric.c_str(), c_.eval.early_stopping.min_delta,
                      static_cast<long long>(evals_without_gain), best_metric,
                      static_cast<long long>(best_step));
        stop_note = buf;
      }
    }
    report.eval(step, epoch, e, train_s, stop_note);
  };

  auto stop_vote = std::make_unique<StopVote>(collective() ? dist_.group.get() : nullptr, device_);
  const std::optional<int64_t> kill_at = kill_at_step(rank_);
  const int64_t delay_ms = step_delay_ms(rank_);
  const std::optional<int64_t> skip_vote = skip_collective_at_step(rank_);
  const std::optional<int64_t> stop_at = stop_at_step(rank_);
  const bool elastic = env::get(env::kBatchWorld) != nullptr;
  auto log_t0 = Clock::now();
  double log_eval_s = 0;
  int64_t log_step0 = step;
  // Per log interval: this rank's time waiting for data and for the other ranks, to find the rank
  // that holds the others back (stragglers.h).
  int64_t log_waited_ns = collectives::thread_collective_ns(), log_eval_wait_ns = 0;
  data_s_ = 0;
  StragglerDetector stragglers(c_.diagnostics.straggler_factor, c_.diagnostics.straggler_steps,
                               collective() ? world_ : 1);
  if (stragglers.enabled()) publish_host();
  int64_t last_epoch = std::min(start.epoch, epochs - 1);  // the one the final eval reports
  // train.max_time: the moving average of a step's duration, to stop while a step and a
  // checkpoint still fit the budget.
  double step_s = 0;
  // Where the run stands after its last completed step (samples of the epoch: the whole job's),
  // which healing takes from rank 0.
  struct Committed {
    int64_t step, epoch, epoch_samples, samples;
  } committed{step, epoch, first_batch * batch * world_, 0};
  // Heals since the last completed step: a failure that comes back every time is not a dead
  // peer, and takes the restart path.
  int heals_in_a_row = 0;
  // In-place healing (heal.h), after a peer's failure or when rank 0 saw a replacement waiting:
  // meet the others in the next generation, take rank 0's parameters, optimiser state and place
  // in the run, and make again what depends on the ranks.
  auto heal = [&](int old_rank, const std::string& why) {
    const auto t0 = Clock::now();
    core::optim::OptimizerState kept;
    if (old_rank >= 0) kept = parallel_->optimizer_state();
    stop_vote.reset();
    parallel_.reset();  // its hooks off the parameters, its hold on the broken group gone
    dist_.group.reset();
    // A checkpoint still being written waits for ranks that are gone: abandoned (never renamed
    // into place), and a writer for the new ranks.
    if (writer_) {
      writer_.reset();
      writer_ = std::make_unique<CheckpointWriter>();
    }
    const auto settle =
        std::chrono::milliseconds(static_cast<int64_t>(1000 * std::max(kHealSettleS, 2 * step_s)));
    const Generation g = healer_->regroup(old_rank, settle);
    adopt(g, std::move(kept));
    Tensor place = core::from_vector(
        std::vector<double>{
            static_cast<double>(committed.step), static_cast<double>(committed.epoch),
            static_cast<double>(committed.epoch_samples), static_cast<double>(committed.samples)},
        {4});
    {
      const collectives::FlightTag tag("healing: rank 0's place in the run");
      dist_.group->broadcast(place, {0})->wait();
    }
    const double* v = place.data_ptr<double>();
    step = static_cast<int64_t>(v[0]);
    epoch = static_cast<int64_t>(v[1]);
    samples = static_cast<int64_t>(v[3]);
    committed = {step, epoch, static_cast<int64_t>(v[2]), samples};
    make_loader();
    loader->start_epoch(
        epoch, std::min(per_epoch, committed.epoch_samples / (batch * world_) / accum * accum));
    stop_vote = std::make_unique<StopVote>(dist_.group.get(), device_);
    stragglers =
        StragglerDetector(c_.diagnostics.straggler_factor, c_.diagnostics.straggler_steps, world_);
    parallel_->set_timeline(tl);
    log_t0 = Clock::now();
    log_eval_s = eval_s;
    log_step0 = step;
    log_waited_ns = collectives::thread_collective_ns();
    log_eval_wait_ns = eval_wait_ns;
    data_s_ = 0;
    const double took = seconds_since(t0);
    if (leader()) {
      std::string was;
      for (int r : g.old_ranks) was += (was.empty() ? "" : ",") + std::to_string(r);
      std::printf(
          "cohort: healed in %.2f s: %d ranks (formerly %s; -1: a replacement) go on from step "
          "%lld, %lld per rank (generation %d) after: %s\n",
          took, world_, was.c_str(), static_cast<long long>(step), static_cast<long long>(batch),
          g.number, why.substr(0, 300).c_str());
      std::fflush(stdout);
      report.write({{"event", "heal"},
                    {"step", step},
                    {"seconds", took},
                    {"world_size", world_},
                    {"generation", g.number},
                    {"former_ranks", g.old_ranks},
                    {"reason", why.substr(0, 300)}});
    }
  };
  // A replacement rank (its launcher started it in a dead rank's place) joins before its first
  // step: it takes everything from rank 0.
  if (heal_join_) heal(-1, "a replacement joined");
  for (; epoch < epochs && step < total_steps && !early_stop && !out_of_time; ++epoch) {
    last_epoch = epoch;
    if (epoch != start.epoch) loader->start_epoch(epoch);
    core::data::Batch batch_data;
    while (step < total_steps && loader->position() + accum <= per_epoch && !early_stop &&
           !out_of_time) {
      try {
        const auto step_t0 = Clock::now();
        {
          core::Timeline::Span span(tl, "data", "data");
          const auto td = Clock::now();
          if (!loader->next(batch_data)) break;
          data_s_ += seconds_since(td);
        }
        const double lr = schedule_->lr(step);
        Tensor loss;
        try {
          loss = train_step(*loader, batch_data, step, lr, tl);
        } catch (const collectives::UnusedParametersError& e) {
          COHORT_THROW(ConfigError, e.what(), " (distributed.find_unused_parameters: true)");
        }
        ++step;
        if (kill_at && step == *kill_at) ::raise(SIGKILL);
        if (stop_at && step == *stop_at) ::raise(SIGSTOP);
        if (delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
        samples += batch_data.input.size(0) * world_ * accum;
        if (auto job = parallel_->job_samples()) samples = *job;
        committed = {step, epoch, loader->position() * batch * world_, samples};
        heals_in_a_row = 0;
        if (step % c_.train.log_every == 0 || step == total_steps) {
          // Every rank's loss and mean step, data and collective-wait times since the last log
          // line (evaluations left out).
          const int64_t window_steps = std::max<int64_t>(step - log_step0, 1);
          const double window = seconds_since(log_t0) - (eval_s - log_eval_s);
          const double per_step = 1000.0 / static_cast<double>(window_steps);
          const int64_t waited = collectives::thread_collective_ns();
          const double wait_ms =
              per_step * 1e-9 *
              static_cast<double>(waited - log_waited_ns - (eval_wait_ns - log_eval_wait_ns));
          const std::vector<double> mine{loss.item<double>(), per_step * window, per_step * data_s_,
                                         wait_ms};
          log_t0 = Clock::now();
          log_eval_s = eval_s;
          log_step0 = step;
          log_waited_ns = waited;
          log_eval_wait_ns = eval_wait_ns;
          data_s_ = 0;
          const std::vector<double> per_rank = gather_from_ranks(mine);
          double l = 0;
          const size_t k = mine.size();
          const int ranks = static_cast<int>(per_rank.size() / k);
          std::vector<RankTimes> times;
          for (int r = 0; r < ranks; ++r) {
            const double* v = per_rank.data() + k * static_cast<size_t>(r);
            l += v[0] / ranks;
            times.push_back({v[1], v[2], v[3]});
          }
          if (!std::isfinite(l))
            COHORT_THROW(Error, "training diverged: loss is ", l, " at step ", step,
                         "; lower optimizer.lr or set optimizer.grad_clip");
          const double el = seconds_since(t0) - eval_s;
          s.final_loss = l;
          report.step({step, total_steps, epoch, l, lr,
                       static_cast<double>(samples) / std::max(el, 1e-9),
                       static_cast<double>(total_steps - step) * el /
                           static_cast<double>(std::max<int64_t>(step - start.step, 1)),
                       times});
          for (const Straggler& st : stragglers.add(window_steps, times))
            report_straggler(report, st, step);
        }
        if (c_.eval.every_steps > 0 && step % c_.eval.every_steps == 0) run_eval(epoch);
        if (checkpoints.after_step(step)) save_now(epoch, loader->position());
        if (writer_) written(writer_->poll());
        // Only the training step counts toward the average, not evaluations or checkpoints.
        {
          const double d = seconds_since(step_t0);
          step_s = step_s == 0 ? d : 0.9 * step_s + 0.1 * d;
        }
        int time_request = 0;
        if (c_.train.max_time_s > 0) {
          // The vote lands a step later: leave room for two steps and a checkpoint.
          const double left = c_.train.max_time_s - seconds_since(started_);
          if (left < 2 * step_s + std::max({checkpoints.last_seconds(), last_write_s_, 1.0}))
            time_request = kStopForTime;
        }
        if (early_stop && !checkpoints.saved(step)) save_now(epoch, loader->position());
        // An elastic job whose launcher has nodes waiting to join stops at a checkpoint: asked in
        // the vote before the step that writes one, it lands with that checkpoint.
        if (elastic && leader() && dist_.store && time_request == 0) {
          const int64_t every = c_.checkpoint.every_steps;
          if ((every > 0 && (step + 1) % every == 0) || (every == 0 && checkpoints.saved(step))) {
            try {
              if (dist_.store->check({"membership/join"})) time_request = kStopForMembership;
            } catch (const std::exception&) {
              // The launcher's store is gone: the launcher ends this round itself.
            }
          }
        }
        // A replacement waits to join: rank 0 asks every rank to meet it after the same step.
        if (healer_ && leader() && time_request == 0 && step % kHealJoinCheckSteps == 0 &&
            healer_->joiner_waiting())
          time_request = kRegroup;
        const bool skip = skip_vote && step == *skip_vote;
        const int sig = skip ? 0 : stop_vote->after_step(time_request);
        if (sig == kRegroup) {
          heal(rank_, "a replacement rank is waiting to join");
          continue;
        }
        if (sig) {
          if (!checkpoints.saved(step)) save_now(epoch, loader->position());
          finish_writes();
          if (sig == kStopForTime) {
            out_of_time = true;
            if (leader())
              std::printf(
                  "train.max_time %gs: stopped after step %lld with a checkpoint in %s "
                  "(checkpoint.resume=auto continues)\n",
                  c_.train.max_time_s, static_cast<long long>(step), c_.checkpoint.dir.c_str());
            break;
          }
          std::fflush(stdout);
          if (sig == kStopForMembership)
            throw Stopped(sig, "stopped after step " + std::to_string(step) +
                                   " with a checkpoint in " + c_.checkpoint.dir +
                                   " to let waiting nodes join; the job goes on from it");
          throw Stopped(sig, std::string(sig == SIGTERM  ? "SIGTERM"
                                         : sig == SIGINT ? "SIGINT"
                                                         : "SIGUSR1") +
                                 " stopped training after step " + std::to_string(step) +
                                 "; checkpoint written to " + c_.checkpoint.dir +
                                 " (checkpoint.resume=auto continues from it)");
        }
      } catch (const Error& e) {
        // A peer gone (its connection lost, an operation abandoned or timed out): heal when the
        // job may, else the launcher's restart path takes over.
        if (!healer_ ||
            (!dynamic_cast<const DistributedError*>(&e) &&
             !dynamic_cast<const TimeoutError*>(&e)) ||
            ++heals_in_a_row > kMaxHealsInARow)
          throw;
        heal(rank_, e.what());
      }
    }
    if (out_of_time || early_stop) break;
    const bool epoch_done = loader->position() >= per_epoch;
    if (c_.eval.every_steps == 0 && epoch_done) run_eval(epoch);
    if (early_stop && !checkpoints.saved(step)) save_now(epoch, loader->position());
    if (checkpoints.after_epoch(step, epoch_done)) save_now(epoch, loader->position());
    if (step >= total_steps && !checkpoints.saved(step)) save_now(epoch, loader->position());
  }
  finish_writes();
  // The chief's final evaluation and checkpoint hold the servers' final parameters; the others
  // leave at once, so that sync steps stop waiting for them.
  if (dist_.ps) {
    if (last_eval_step != step) parallel_->refresh(step);
    parallel_->finish();
  }
  // Runs that stop mid-epoch (train.steps) still end with an evaluation of the final parameters;
  // a run out of time leaves that to its continuation.
  if (eval_set_ && last_eval_step != step && !out_of_time) run_eval(last_epoch);
  s.steps = step;
  s.train_s = seconds_since(t0) - eval_s;
  s.samples_per_s = static_cast<double>(samples) / std::max(s.train_s, 1e-9);
  report_ranks(report, s.samples_per_s / world_);
  report.summary(step, s.train_s, s.samples_per_s, s.test_acc, s.test_loss, world_);
  if (timeline && collective()) {
    parallel_->set_timeline(nullptr);
    timeline.reset();
    merge_timelines(timeline_path);
  }
  return s;
}

}  // namespace cohort::trainer
