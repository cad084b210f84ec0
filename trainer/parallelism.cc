// The strategies behind trainer/parallelism.h: one process, DDP and ZeRO-1/2 (gradient buckets),
// FSDP (sharded parameters) and parameter-server workers.
#include "trainer/parallelism.h"

#include <unistd.h>

#include <set>

#include "collectives/ddp/ddp.h"
#include "collectives/ddp/fsdp.h"
#include "collectives/ddp/zero.h"
#include "collectives/flight_recorder.h"
#include "core/autograd/grad_mode.h"
#include "core/nn/attention.h"
#include "core/nn/models.h"
#include "core/ops/ops.h"
#include "core/tensor/cuda/cuda_device.h"
#include "core/util/env.h"
#include "parameter_server/client.h"
#include "trainer/checkpoint_pieces.h"
#include "trainer/trainer.h"

namespace cohort::trainer {

using core::Tensor;

namespace {

int64_t bytes_of(const Tensor& t) {
  return t.defined() ? t.numel() * static_cast<int64_t>(t.element_size()) : 0;
}

int64_t tensor_bytes(const std::vector<Tensor>& ts) {
  int64_t b = 0;
  for (const Tensor& t : ts) b += bytes_of(t);
  return b;
}

int64_t grad_bytes(const std::vector<Tensor>& ts) {
  int64_t b = 0;
  for (const Tensor& t : ts) b += bytes_of(t.grad());
  return b;
}

int64_t optimizer_bytes(const core::optim::Optimizer& o) {
  int64_t b = 0;
  for (auto& [key, t] : o.state_dict())
    if (key != "step") b += bytes_of(t);
  return b;
}

collectives::Millis timeout_of(const Config& c) {
  return collectives::Millis(static_cast<int64_t>(c.distributed.timeout_s * 1000));
}

// fp16's unscaling and the clipping every strategy does before its update; `over_ranks` sums a
// number over the ranks that hold parts of the gradient (empty: this rank holds it all).
bool unscale_and_clip(const std::vector<Tensor>& grads_of, LossScaler* scaler, double clip,
                      const std::function<double(double)>& over_ranks,
                      const std::function<void(double)>& clip_fn) {
  if (scaler && !scaler->unscale(grads_of, over_ranks)) return false;
  if (clip > 0) clip_fn(clip);
  return true;
}

std::function<double(double)> summing(collectives::ProcessGroup& g, core::Device device) {
  return [&g, device](double v) {
    Tensor t = core::full({1}, v, core::TensorOptions(core::DType::kFloat64).with_device(device));
    const collectives::FlightTag tag("gradient norm");
    g.allreduce(t)->wait();
    return t.to(core::Device::cpu()).item<double>();
  };
}

core::Device device_of(const core::nn::Module& m) {
  auto params = m.parameters();
  return params.empty() ? core::Device::cpu() : params[0].device();
}

// One process: the model and an optimiser.
class Local final : public Parallelism {
 public:
  Local(const Config& c, std::shared_ptr<core::nn::Module> model) : Parallelism(std::move(model)) {
    opt_ = core::optim::make_optimizer(c.optimizer, model_->parameters());
  }
  Strategy strategy() const override { return Strategy::kNone; }
  Tensor forward(const Tensor& x) override { return (*model_)(x); }
  void begin_step(int64_t, double lr, int64_t) override {
    opt_->set_lr(lr);
    opt_->zero_grad();
  }
  bool update(LossScaler* scaler, double clip) override {
    if (!unscale_and_clip(opt_->params(), scaler, clip, {},
                          [&](double max) { core::optim::clip_grad_norm(opt_->params(), max); }))
      return false;
    opt_->step();
    return true;
  }
  ModelStateBytes state_bytes() const override {
    return {tensor_bytes(model_->parameters()), grad_bytes(model_->parameters()),
            optimizer_bytes(*opt_)};
  }

 private:
};

// A compression hook's state in a checkpoint's optimiser part: what every rank holds alike as
// "comm_hook.<key>", sliced over the writers like any replicated tensor; what is each rank's own
// (PowerSGD's error feedback) as "comm_hook.ranks.<key>", one row per rank.
constexpr std::string_view kHookShared = "comm_hook.", kHookRanks = "comm_hook.ranks.";

void hook_pieces(const collectives::CommHook& hook, int rank, int world,
                 std::vector<core::io::Piece>& out) {
  std::map<std::string, Tensor> shared, own, prefixed;
  hook.state(shared, own);
  for (auto& [key, t] : shared) prefixed[std::string(kHookShared) + key] = t;
  slice_into(prefixed, rank, world, out);
  for (auto& [key, t] : own) {
    Tensor flat = t.detach().contiguous().view({-1});
    out.push_back(
        {std::string(kHookRanks) + key, {world, flat.numel()}, rank * flat.numel(), flat});
  }
}

void load_hook_state(const core::io::CheckpointReader& ck, collectives::CommHook& hook, int rank,
                     int world) {
  using Part = core::io::CheckpointReader::Part;
  std::map<std::string, Tensor> shared, own;
  for (const auto& [name, shape] : ck.shapes(Part::kOptimizer)) {
    if (name.rfind(kHookRanks, 0) == 0) {
      if (shape.size() != 2 || shape[0] < 1)
        COHORT_THROW(ConfigError, "checkpoint ", ck.path(), ": ", name, " has shape ",
                     core::shape_str(shape), ", not one row per rank");
      const int64_t n = shape[1];
      // At another world size no rank's own error carries over; their mean keeps the average
      // update the job would have made.
      own[name.substr(kHookRanks.size())] =
          shape[0] == world ? ck.read_range(Part::kOptimizer, name, rank * n, (rank + 1) * n)
                            : core::mean(ck.read(Part::kOptimizer, name), {0});
    } else if (name.rfind(kHookShared, 0) == 0) {
      shared[name.substr(kHookShared.size())] = ck.read(Part::kOptimizer, name);
    }
  }
  try {
    hook.load_state(shared, own);
  } catch (const ConfigError& e) {
    COHORT_THROW(ConfigError, "checkpoint ", ck.path(), ": ", e.what());
  }
}

struct NoSyncScope final : AccumulationScope {
  explicit NoSyncScope(collectives::DistributedDataParallel* d) : guard(d) {}
  collectives::DistributedDataParallel::NoSync guard;
};

// ddp, zero1 and zero2: replicas kept equal by gradient buckets (collectives/ddp).
class Replicated final : public Parallelism {
 public:
  Replicated(const Config& c, const Distributed& dist, std::shared_ptr<core::nn::Module> model)
      : Parallelism(std::move(model)), strategy_(c.distributed.strategy) {
    collectives::DdpOptions o;
    o.bucket_cap_mb = c.distributed.bucket_cap_mb;
    o.allow_unused_parameters = c.distributed.find_unused_parameters;
    o.timeout = timeout_of(c);
    o.reduce_scatter = strategy_ != Strategy::kDdp;
    o.free_gradients = strategy_ == Strategy::kZero2;
    o.compression = c.distributed.compression;
    ddp_ = std::make_unique<collectives::DistributedDataParallel>(model_, dist.group, o);
    if (o.reduce_scatter) {
      const core::optim::OptimizerSpec spec = c.optimizer;
      auto sharded = std::make_unique<collectives::ShardedOptimizer>(
          *ddp_, [spec](std::vector<Tensor> shards) {
            return core::optim::make_optimizer(spec, std::move(shards));
          });
      sharded_ = sharded.get();
      opt_ = std::move(sharded);
    } else {
      opt_ = core::optim::make_optimizer(c.optimizer, model_->parameters());
    }
  }
  Strategy strategy() const override { return strategy_; }
  Tensor forward(const Tensor& x) override { return ddp_->forward(x); }
  void begin_step(int64_t, double lr, int64_t) override {
    opt_->set_lr(lr);
    opt_->zero_grad();
    ddp_->zero_shards();
  }
  std::unique_ptr<AccumulationScope> accumulate_locally() override {
    if (strategy_ == Strategy::kZero2) return nullptr;
    return std::make_unique<NoSyncScope>(ddp_.get());
  }
  bool update(LossScaler* scaler, double clip) override {
    // DDP's gradients are averaged already: every rank's norm is the global one. ZeRO's shards
    // are parts of it.
    const auto& grads_of = sharded_ ? sharded_->shards() : opt_->params();
    if (!unscale_and_clip(grads_of, scaler, clip, summing(ddp_->group(), device_of(*model_)),
                          [&](double max) {
                            if (sharded_) {
                              sharded_->clip_grad_norm(max);
                            } else {
                              core::optim::clip_grad_norm(opt_->params(), max);
                            }
                          }))
      return false;
    opt_->step();
    return true;
  }
  core::io::ShardedState checkpoint_state() override {
    core::io::ShardedState s = replica_state();
    const auto& g = ddp_->group();
    if (const auto* hook = ddp_->comm_hook()) hook_pieces(*hook, g.rank(), g.size(), s.optimizer);
    return s;
  }
  void load_checkpoint(const core::io::CheckpointReader& ck) override {
    load_replica(ck);
    const auto& g = ddp_->group();
    if (auto* hook = ddp_->comm_hook()) load_hook_state(ck, *hook, g.rank(), g.size());
  }
  std::string describe() const override {
    const auto* hook = ddp_->comm_hook();
    return hook ? hook->describe() : "";
  }
  void set_timeline(core::Timeline* t) override { ddp_->set_timeline(t); }
  const char* comm_lane() const override { return "gradient reduction"; }
  ModelStateBytes state_bytes() const override {
    ModelStateBytes b{tensor_bytes(model_->parameters()), ddp_->gradient_bytes(), 0};
    b.optimizer = sharded_ ? sharded_->state_bytes() : optimizer_bytes(*opt_);
    return b;
  }

 private:
  core::io::ShardedState replica_state() {
    if (!sharded_) return Parallelism::checkpoint_state();
    // The parameters as ddp writes them; the optimiser state as the shards this rank holds (no
    // rank gathers the whole of it).
    core::io::ShardedState s;
    const auto& g = ddp_->group();
    std::map<std::string, Tensor> params;
    for (auto& [name, t] : model_->named_parameters()) params[name] = t;
    slice_into(params, g.rank(), g.size(), s.model);
    if (g.rank() == 0) {
      std::map<std::string, Tensor> buffers;
      for (auto& [name, t] : model_->named_buffers()) buffers[name] = t;
      slice_into(buffers, 0, 1, s.model);
    }
    optimizer_pieces(sharded_->groups(), sharded_->shard_state_dict(), ddp_->params(), g.rank(),
                     g.size(), s.optimizer);
    return s;
  }
  void load_replica(const core::io::CheckpointReader& ck) {
    if (!sharded_) return Parallelism::load_checkpoint(ck);
    using Part = core::io::CheckpointReader::Part;
    model_->load_state_dict(ck.read_all(Part::kModel));
    const auto& g = ddp_->group();
    sharded_->load_shard_state_dict(read_optimizer_shards(
        ck, sharded_->groups(), sharded_->shards(), ddp_->params(), g.rank(), g.size()));
  }

  Strategy strategy_;
  std::unique_ptr<collectives::DistributedDataParallel> ddp_;
  collectives::ShardedOptimizer* sharded_ = nullptr;  // opt_, under zero1 and zero2
};

// fsdp: parameters, gradients and optimiser state sharded (collectives/ddp/fsdp.h).
class FullySharded final : public Parallelism {
 public:
  FullySharded(const Config& c, const Distributed& dist, std::shared_ptr<core::nn::Module> model)
      : Parallelism(std::move(model)) {
    collectives::FsdpOptions o;
    o.units = fsdp_unit_patterns(c, *model_);
    o.reshard_after_forward = c.distributed.fsdp.reshard_after_forward;
    o.prefetch = static_cast<int>(c.distributed.fsdp.prefetch);
    o.allow_unused_parameters = c.distributed.find_unused_parameters;
    o.timeout = timeout_of(c);
    try {
      fsdp_ = std::make_unique<collectives::FullyShardedDataParallel>(model_, dist.group, o);
    } catch (const ConfigError& e) {
      COHORT_THROW(ConfigError, "distributed.fsdp.unit: ", e.what());
    }
    opt_ = core::optim::make_optimizer(c.optimizer, fsdp_->shards());
  }
  Strategy strategy() const override { return Strategy::kFsdp; }
  Tensor forward(const Tensor& x) override {
    try {
      return fsdp_->forward(x);
    } catch (const core::ReleasedMemoryError& e) {
      COHORT_THROW(ConfigError, "distributed.fsdp.unit: ", e.what(),
                   "; choose units that keep such modules together, or leave them to the root");
    }
  }
  void begin_step(int64_t, double lr, int64_t) override {
    opt_->set_lr(lr);
    opt_->zero_grad();
  }
  bool update(LossScaler* scaler, double clip) override {
    const auto& shards = fsdp_->shards();
    if (!unscale_and_clip(
            shards, scaler, clip, summing(fsdp_->group(), device_of_shards()),
            [&](double max) { collectives::clip_sharded_grad_norm(shards, max, fsdp_->group()); }))
      return false;
    opt_->step();
    return true;
  }
  core::nn::StateDict model_state() override {
    auto full = fsdp_->full_params();
    core::nn::StateDict out;
    for (auto& [name, t] : model_->state_dict()) out[name] = t.clone();
    return out;
  }
  core::optim::OptimizerState optimizer_state() override {
    return collectives::consolidate_state(opt_->state_dict(), fsdp_->layouts(), fsdp_->params(),
                                          fsdp_->group());
  }
  void load(const core::nn::StateDict& m, const core::optim::OptimizerState& o) override {
    // The parameters' memory is the shards': they load through them, the buffers directly.
    std::set<std::string> expected;
    std::vector<Tensor> values;
    for (const std::string& name : fsdp_->param_names()) {
      auto it = m.find(name);
      if (it == m.end()) COHORT_THROW(Error, "state_dict: missing key '", name, "'");
      values.push_back(it->second);
      expected.insert(name);
    }
    core::autograd::NoGradGuard guard;
    for (auto& [name, t] : model_->named_buffers()) {
      auto it = m.find(name);
      if (it == m.end()) COHORT_THROW(Error, "state_dict: missing key '", name, "'");
      COHORT_CHECK(it->second.sizes() == t.sizes(), "state_dict: '", name, "' has shape ",
                   core::shape_str(it->second.sizes()), ", the model ", core::shape_str(t.sizes()));
      Tensor buf = t;
      buf.copy_(it->second);
      expected.insert(name);
    }
    for (auto& [name, t] : m)
      if (!expected.count(name)) COHORT_THROW(Error, "state_dict: unexpected key '", name, "'");
    fsdp_->load_full(values);
    const auto& g = fsdp_->group();
    opt_->load_state_dict(
        collectives::shard_state(o, fsdp_->layouts(), fsdp_->params(), g.rank(), g.size()));
  }
  core::io::ShardedState checkpoint_state() override;
  void load_checkpoint(const core::io::CheckpointReader& ck) override;
  std::string describe() const override {
    // Each unit is cut into world equal shards: a unit whose size the world does not divide is
    // padded with zeros (which train as zeros and are never saved).
    int64_t numel = 0, padded = 0;
    for (const auto& l : fsdp_->layouts()) {
      numel += l.numel;
      padded += l.padded;
    }
    std::string names;
    for (const std::string& n : fsdp_->unit_names())
      names += (names.empty() ? "" : ", ") + (n.empty() ? std::string("(root)") : n);
    return "fsdp: " + std::to_string(fsdp_->layouts().size()) + " units (" + names + ") over " +
           std::to_string(fsdp_->group().size()) + " ranks; " + std::to_string(numel) +
           " parameters padded with " + std::to_string(padded - numel) +
           " zeros to shards of equal size";
  }
  void set_timeline(core::Timeline* t) override { fsdp_->set_timeline(t); }
  const char* comm_lane() const override { return "gathers and reductions"; }
  ModelStateBytes state_bytes() const override {
    ModelStateBytes b;
    for (const Tensor& s : fsdp_->shards()) {
      b.params += bytes_of(s);
      b.grads += bytes_of(s.grad());
    }
    b.optimizer = optimizer_bytes(*opt_);
    return b;
  }

 private:
  core::Device device_of_shards() const {
    return fsdp_->shards().empty() ? core::Device::cpu() : fsdp_->shards()[0].device();
  }
  std::unique_ptr<collectives::FullyShardedDataParallel> fsdp_;
};

core::io::ShardedState FullySharded::checkpoint_state() {
  core::autograd::NoGradGuard guard;
  core::io::ShardedState s;
  const auto& g = fsdp_->group();
  std::vector<Tensor> shards;
  for (const Tensor& t : fsdp_->shards()) shards.push_back(t.detach());
  shard_pieces(fsdp_->layouts(), shards, fsdp_->params(), fsdp_->param_names(), g.rank(), g.size(),
               s.model);
  const core::optim::OptimizerState inner = opt_->state_dict();
  optimizer_pieces(fsdp_->layouts(), inner, fsdp_->params(), g.rank(), g.size(), s.optimizer);
  // What is not sharded, rank 0 writes whole.
  if (g.rank() == 0) {
    for (auto& [name, t] : model_->named_buffers())
      s.model.push_back({name, t.sizes(), 0, t.detach().contiguous().view({-1})});
  }
  return s;
}

void FullySharded::load_checkpoint(const core::io::CheckpointReader& ck) {
  using Part = core::io::CheckpointReader::Part;
  core::autograd::NoGradGuard guard;
  const auto& g = fsdp_->group();
  const auto& params = fsdp_->params();
  const auto& names = fsdp_->param_names();
  std::set<std::string> known;
  for (size_t k = 0; k < params.size(); ++k) {
    expect_shape(ck, names[k], params[k].sizes());
    known.insert(names[k]);
  }
  for (auto& [name, t] : model_->named_buffers()) {
    expect_shape(ck, name, t.sizes());
    known.insert(name);
    Tensor buf = t;
    buf.copy_(ck.read(Part::kModel, name));
  }
  for (auto& [name, shape] : ck.shapes(Part::kModel))
    if (!known.count(name))
      COHORT_THROW(ConfigError, "checkpoint ", ck.path(), " holds ", name,
                   ", which this model does not have");
  std::vector<Tensor> shards;
  for (const Tensor& t : fsdp_->shards()) shards.push_back(t.detach());
  read_shards(ck, fsdp_->layouts(), shards, params, names, g.rank(), g.size());
  for (const Tensor& t : fsdp_->shards()) t.bump_version();
  opt_->load_state_dict(
      read_optimizer_shards(ck, fsdp_->layouts(), shards, params, g.rank(), g.size()));
}

// parameter_server: the servers hold the parameters and apply the optimiser; this worker pulls
// them and pushes its gradients (during backward from autograd hooks, or after clipping).
class ParameterServerWorker final : public Parallelism {
 public:
  ParameterServerWorker(const Config& c, const Distributed& dist,
                        std::shared_ptr<core::nn::Module> model)
      : Parallelism(std::move(model)), clip_(c.optimizer.grad_clip > 0), chief_(dist.rank == 0) {
    // It only clears gradients: the servers apply the updates.
    opt_ = core::optim::make_optimizer(c.optimizer, model_->parameters());
    std::vector<std::string> names;
    std::vector<Tensor> params;
    for (auto& [name, p] : model_->named_parameters()) {
      names.push_back(name);
      params.push_back(p);
    }
    ps_ = std::make_unique<ps::PsWorker>(params, names, *dist.ps);
  }
  Strategy strategy() const override { return Strategy::kParameterServer; }
  Tensor forward(const Tensor& x) override { return (*model_)(x); }
  void begin_step(int64_t step, double lr, int64_t batch) override {
    opt_->set_lr(lr);
    opt_->zero_grad();
    {
      core::Timeline::Span span(tl_, "pull", "comm");
      ps_->pull(step);
    }
    batch_ = batch;
    ps_->begin_step(step, lr, batch, !clip_);
  }
  bool update(LossScaler*, double clip) override {
    core::Timeline::Span span(tl_, "push", "comm");
    // Each worker clips its own gradient: the global norm would need the others'.
    if (clip > 0) {
      core::optim::clip_grad_norm(opt_->params(), clip);
      ps_->push_all();
    }
    const int64_t total = ps_->finish_step().samples;
    // The job's samples since this worker began: every worker's pushes, whoever died.
    if (samples0_ < 0) samples0_ = total - batch_;
    samples_ = total - samples0_;
    return true;
  }
  std::optional<int64_t> job_samples() const override { return samples_; }
  void refresh(int64_t step) override {
    if (!chief_) return;
    core::Timeline::Span span(tl_, "pull", "comm", 1);
    ps_->pull(step);
  }
  void finish() override { ps_->leave(); }
  void set_timeline(core::Timeline* t) override { tl_ = t; }
  const char* comm_lane() const override { return "parameter servers"; }
  ModelStateBytes state_bytes() const override {
    return {tensor_bytes(model_->parameters()), grad_bytes(model_->parameters()), 0};
  }

 private:
  std::unique_ptr<ps::PsWorker> ps_;
  bool clip_, chief_;
  core::Timeline* tl_ = nullptr;
  int64_t batch_ = 0, samples0_ = -1, samples_ = 0;
};

}  // namespace

std::vector<std::string> fsdp_unit_patterns(const Config& c, core::nn::Module& model) {
  if (!c.distributed.fsdp.units.empty()) return c.distributed.fsdp.units;
  // By default each transformer block is a unit (what they share, such as a GPT's tied
  // embedding, stays with the root); models without blocks split at their top level.
  std::vector<std::string> units;
  model.for_each_module([&](const std::string& name, core::nn::Module& m) {
    if (dynamic_cast<core::nn::Block*>(&m) || dynamic_cast<core::nn::TransformerEncoderLayer*>(&m))
      units.push_back(name);
  });
  return units;
}

core::nn::StateDict Parallelism::model_state() { return model_->state_dict(); }

core::optim::OptimizerState Parallelism::optimizer_state() { return opt_->state_dict(); }

void Parallelism::load(const core::nn::StateDict& m, const core::optim::OptimizerState& o) {
  model_->load_state_dict(m);
  opt_->load_state_dict(o);
}

core::io::ShardedState Parallelism::checkpoint_state() {
  core::io::ShardedState s;
  // Buffers (batch-norm statistics) are rank 0's, as DDP broadcasts them from there: it writes
  // them whole. The parameters are equal everywhere.
  std::map<std::string, Tensor> params, buffers;
  std::set<std::string> buffer_names;
  for (auto& [name, t] : model_->named_buffers()) buffer_names.insert(name);
  for (auto& [name, t] : model_state()) (buffer_names.count(name) ? buffers : params)[name] = t;
  slice_into(params, writer_rank_, writers_, s.model);
  if (writer_rank_ == 0) slice_into(buffers, 0, 1, s.model);
  slice_into(optimizer_state(), writer_rank_, writers_, s.optimizer);
  return s;
}

void Parallelism::load_checkpoint(const core::io::CheckpointReader& ck) {
  using Part = core::io::CheckpointReader::Part;
  // A compression hook's state is not the optimiser's (Replicated reads it itself).
  core::io::TensorMap optimizer = ck.read_all(Part::kOptimizer);
  std::erase_if(optimizer, [](const auto& kv) { return kv.first.rfind(kHookShared, 0) == 0; });
  load(ck.read_all(Part::kModel), optimizer);
}

Distributed join_job(const Config& c, const JobPlace& place,
                     std::shared_ptr<collectives::Store> store,
                     std::optional<ps::ClientOptions> ps) {
  Distributed dist;
  dist.rank = place.rank;
  dist.world = place.world;
  dist.local_rank = place.local_rank;
  dist.local_world_size = place.local_world;
  if (c.distributed.strategy == Strategy::kParameterServer) {
    dist.store = std::move(store);
    dist.ps = std::move(ps);
    return dist;
  }
  if (place.world <= 1) return dist;
  COHORT_CHECK(store, "join_job: a job of ", place.world, " ranks needs a store");
  dist.store = std::make_shared<collectives::PrefixStore>("train", std::move(store));
  // A replacement rank (cohort launch --heal) joins the running job's next generation of ranks
  // instead (heal.h): the job's first group has long formed.
  if (env::flag(env::kHealJoin, false)) return dist;
  Backend backend = c.distributed.backend;
  const bool on_gpu = resolve_device(c.device, place.local_rank, place.local_world).is_cuda();
  if (backend == Backend::kAuto) backend = on_gpu ? Backend::kNccl : Backend::kCpu;
  // NCCL moves GPU memory only: say so before any collective, naming what the node lacks.
  if (backend == Backend::kNccl && !on_gpu) {
    const std::string why = core::cuda::device_count() == 0
                                ? core::cuda::unavailable_reason()
                                : "this rank trains on the CPU (device " + c.device.str() + ")";
    COHORT_THROW(ConfigError, "distributed.backend nccl needs each rank on a GPU, but ", why,
                 "; use distributed.backend cpu or auto, or device: cuda");
  }
  collectives::ProcessGroupOptions po;
  po.timeout = timeout_of(c);
  try {
    dist.group = collectives::create_process_group(
        backend_name(backend), std::make_shared<collectives::PrefixStore>("group", dist.store),
        place.rank, place.world, po);
  } catch (const ConfigError& e) {
    COHORT_THROW(ConfigError, "distributed.backend ", backend_name(backend), ": ", e.what());
  }
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  dist.host = host;
  return dist;
}

std::unique_ptr<Parallelism> make_parallelism(const Config& c, const Distributed& dist,
                                              std::shared_ptr<core::nn::Module> model) {
  // Parameter-server workers do not step together: the chief writes checkpoints alone.
  if (c.distributed.strategy == Strategy::kParameterServer)
    return std::make_unique<ParameterServerWorker>(c, dist, std::move(model));
  if (!dist.group || dist.group->size() == 1) return std::make_unique<Local>(c, std::move(model));
  std::unique_ptr<Parallelism> p;
  switch (c.distributed.strategy) {
    case Strategy::kFsdp:
      p = std::make_unique<FullySharded>(c, dist, std::move(model));
      break;
    case Strategy::kDdp:
    case Strategy::kZero1:
    case Strategy::kZero2:
      p = std::make_unique<Replicated>(c, dist, std::move(model));
      break;
    default:
      COHORT_THROW(ConfigError, "distributed.strategy ", strategy_name(c.distributed.strategy),
                   " cannot run ", dist.group->size(),
                   " ranks; use ddp, zero1, zero2 or fsdp, or start a single process");
  }
  p->writer_rank_ = dist.group->rank();
  p->writers_ = dist.group->size();
  return p;
}

}  // namespace cohort::trainer
