// The single-process training loop. Distributed strategies (DDP, parameter server) plug in around
// the same loop: the sampler already shards by rank, and gradient hooks are where DDP attaches.
#include "trainer/trainer.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>

#include "core/autograd/grad_mode.h"
#include "core/io/checkpoint.h"
#include "core/nn/models.h"
#include "core/ops/ops.h"
#include "core/util/threads.h"
#include "core/util/timeline.h"
#include "trainer/metrics.h"
#include "trainer/tensorboard.h"

namespace cohort::trainer {

using core::Tensor;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::string format_eta(double s) {
  char buf[32];
  int64_t t = static_cast<int64_t>(s);
  std::snprintf(buf, sizeof buf, "%lld:%02lld", static_cast<long long>(t / 60),
                static_cast<long long>(t % 60));
  return buf;
}

}  // namespace

std::shared_ptr<core::nn::Module> build_model(const Config& c, core::Generator* gen) {
  using namespace core::nn;
  if (c.model.type == "mlp") return std::make_shared<MLP>(28 * 28, c.model.hidden, 10, gen);
  if (c.model.type == "cnn") return std::make_shared<CNN>(1, 10, gen);
  GPTConfig g;
  g.vocab_size = 256;
  g.context = c.model.context;
  g.layers = c.model.layers;
  g.heads = c.model.heads;
  g.dim = c.model.dim;
  g.dropout = c.model.dropout;
  return std::make_shared<GPT>(g, gen);
}

Trainer::Trainer(Config config) : c_(std::move(config)) {
  core::set_num_threads(static_cast<int>(c_.threads));
  if (c_.device == "auto" || c_.device == "cpu") {
    device_ = core::Device::cpu();
  } else {
    COHORT_THROW(
        ConfigError, "device ", c_.device,
        " was requested but this build of cohort has no CUDA support; use device: cpu or auto");
  }
  core::manual_seed(c_.seed);
  core::Generator init_gen(c_.seed);
  model_ = build_model(c_, &init_gen);
  model_->to(device_);

  if (c_.data.dataset == "fashion_mnist") {
    train_set_ = std::make_shared<core::data::FashionMNIST>(c_.data.path, "train");
    eval_set_ = std::make_shared<core::data::FashionMNIST>(c_.data.path, "t10k");
  } else {
    double split = 1.0 - c_.data.val_fraction;
    train_set_ =
        std::make_shared<core::data::ByteTextDataset>(c_.data.path, c_.model.context, 0.0, split);
    if (c_.data.val_fraction > 0)
      eval_set_ =
          std::make_shared<core::data::ByteTextDataset>(c_.data.path, c_.model.context, split, 1.0);
  }

  auto params = model_->parameters();
  if (c_.optimizer.type == "sgd") {
    optimizer_ = std::make_unique<core::optim::SGD>(
        params, core::optim::SGDOptions{c_.optimizer.lr, c_.optimizer.momentum, 0.0,
                                        c_.optimizer.weight_decay, c_.optimizer.nesterov});
  } else {
    optimizer_ = std::make_unique<core::optim::AdamW>(
        params, core::optim::AdamWOptions{c_.optimizer.lr, c_.optimizer.beta1, c_.optimizer.beta2,
                                          c_.optimizer.eps, c_.optimizer.weight_decay});
  }
}

Trainer::~Trainer() = default;

Tensor Trainer::compute_loss(const core::data::Batch& batch, Tensor* logits_out) {
  Tensor x = batch.input.to(device_), y = batch.target.to(device_);
  Tensor logits = model_->forward(x);
  if (logits_out) *logits_out = logits;
  if (logits.dim() == 3)
    return core::cross_entropy(logits.reshape({-1, logits.size(-1)}), y.reshape({-1}));
  return core::cross_entropy(logits, y);
}

EvalResult Trainer::evaluate() {
  EvalResult r;
  if (!eval_set_) return r;
  core::autograd::NoGradGuard guard;
  model_->eval();
  const int64_t n = eval_set_->size(), bs = c_.eval.batch_size;
  int64_t correct = 0, count = 0, batches = 0;
  double loss_sum = 0;
  for (int64_t start = 0; start < n; start += bs) {
    if (c_.eval.max_batches > 0 && batches >= c_.eval.max_batches) break;
    std::vector<int64_t> idx;
    for (int64_t i = start; i < std::min(n, start + bs); ++i) idx.push_back(i);
    core::data::Batch b = eval_set_->get_batch(idx);
    Tensor logits;
    Tensor loss = compute_loss(b, &logits);
    Tensor y = b.target.to(device_);
    int64_t items = y.numel();
    Tensor pred = core::argmax(logits, -1);
    correct += core::sum(core::eq(pred, y)).item<int64_t>();
    loss_sum += loss.item<double>() * static_cast<double>(items);
    count += items;
    ++batches;
  }
  model_->train();
  r.accuracy = count ? static_cast<double>(correct) / static_cast<double>(count) : 0;
  r.loss = count ? loss_sum / static_cast<double>(count) : 0;
  return r;
}

namespace {

// Set by SIGTERM or SIGUSR1 while run() trains; the loop checks it after each step.
std::atomic<int> g_stop_signal{0};
void on_stop_signal(int sig) { g_stop_signal.store(sig); }

// Installs the stop handlers for the duration of a run and restores the previous ones.
class StopSignals {
 public:
  StopSignals() {
    g_stop_signal.store(0);
    struct sigaction sa {};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    ::sigaction(SIGTERM, &sa, &old_term_);
    ::sigaction(SIGUSR1, &sa, &old_usr1_);
  }
  ~StopSignals() {
    ::sigaction(SIGTERM, &old_term_, nullptr);
    ::sigaction(SIGUSR1, &old_usr1_, nullptr);
  }

 private:
  struct sigaction old_term_ {
  }, old_usr1_{};
};

}  // namespace

RunSummary Trainer::run() {
  StopSignals stop_signals;
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(c_.logging.dir, ec);
  if (ec) COHORT_THROW(IoError, "cannot create logging.dir ", c_.logging.dir, ": ", ec.message());
  {
    std::ofstream f(c_.logging.dir + "/config.resolved.yaml");
    f << c_.resolved << "\n";
  }
  // Resume before anything else so that the metrics file is appended to, not truncated.
  std::optional<std::string> resume_from;
  if (c_.checkpoint.resume == "auto") {
    resume_from = core::io::latest_checkpoint(c_.checkpoint.dir);
  } else if (c_.checkpoint.resume != "never") {
    resume_from = c_.checkpoint.resume;
  }
  core::io::CheckpointMeta start;
  if (resume_from) {
    core::io::Checkpoint ck = core::io::load_checkpoint(*resume_from);
    model_->load_state_dict(ck.model);
    optimizer_->load_state_dict(ck.optimizer);
    start = ck.meta;
    core::default_generator().set_state(ck.meta.rng);
    std::printf("resumed from %s (step %lld, epoch %lld)\n", resume_from->c_str(),
                static_cast<long long>(start.step), static_cast<long long>(start.epoch));
  }
  MetricsWriter metrics(c_.logging.dir, resume_from.has_value());
  std::unique_ptr<EventWriter> events;
  if (c_.logging.tensorboard) events = std::make_unique<EventWriter>(c_.logging.dir);
  std::unique_ptr<core::Timeline> timeline;
  if (c_.logging.timeline)
    timeline = std::make_unique<core::Timeline>(c_.logging.dir + "/timeline.json", 0, "rank 0");
  core::Timeline* tl = timeline.get();

  auto sampler = std::make_shared<core::data::DistributedSampler>(
      train_set_->size(),
      core::data::DistributedSamplerOptions{0, 1, c_.data.shuffle, c_.seed, false});
  core::data::DataLoader loader(train_set_, sampler,
                                {c_.data.batch_size, true, static_cast<int>(c_.data.prefetch)});
  loader.start_epoch(start.epoch, start.batch_in_epoch);
  const int64_t per_epoch = loader.batches_per_epoch();
  if (per_epoch == 0)
    COHORT_THROW(ConfigError, "data.batch_size ", c_.data.batch_size, " is larger than the ",
                 train_set_->size(), " training samples");
  const int64_t total_steps = c_.train.steps > 0 ? c_.train.steps : per_epoch * c_.train.epochs;
  const int64_t epochs = (total_steps + per_epoch - 1) / per_epoch;

  if (c_.schedule.type == "constant") {
    schedule_ = std::make_unique<core::optim::ConstantLR>(c_.optimizer.lr);
  } else if (c_.schedule.type == "step") {
    schedule_ = std::make_unique<core::optim::StepLR>(c_.optimizer.lr, c_.schedule.step_size,
                                                      c_.schedule.gamma);
  } else {
    schedule_ = std::make_unique<core::optim::CosineLR>(c_.optimizer.lr, c_.schedule.warmup_steps,
                                                        total_steps, c_.schedule.min_lr);
  }

  const bool tty = isatty(STDOUT_FILENO);
  RunSummary s;
  int64_t step = start.step, samples = 0;
  int64_t last_saved = -1;
  auto save = [&](int64_t epoch, int64_t batch_in_epoch) {
    if (batch_in_epoch >= per_epoch) {
      ++epoch;
      batch_in_epoch = 0;
    }
    core::Timeline::Span span(tl, "checkpoint", "io");
    core::io::CheckpointMeta meta{step, epoch, batch_in_epoch, core::default_generator().state()};
    core::io::save_checkpoint(c_.checkpoint.dir, model_->state_dict(), optimizer_->state_dict(),
                              meta, c_.checkpoint.keep);
    last_saved = step;
  };
  double eval_s = 0;
  int64_t last_eval_step = -1, epoch = start.epoch;
  auto t0 = Clock::now();
  auto run_eval = [&](int64_t epoch) {
    last_eval_step = step;
    auto te = Clock::now();
    EvalResult e;
    {
      core::Timeline::Span span(tl, "eval", "eval");
      e = evaluate();
    }
    eval_s += seconds_since(te);
    if (events) {
      events->add_scalar("eval/test_acc", e.accuracy, step);
      events->add_scalar("eval/test_loss", e.loss, step);
      events->flush();
    }
    if (tl) tl->flush();
    s.test_acc = e.accuracy;
    s.test_loss = e.loss;
    metrics.write({{"event", "eval"},
                   {"step", step},
                   {"epoch", epoch},
                   {"test_acc", e.accuracy},
                   {"test_loss", e.loss}});
    if (tty) std::printf("\n");
    std::printf("eval step %lld epoch %lld: test_acc %.4f test_loss %.4f\n",
                static_cast<long long>(step), static_cast<long long>(epoch), e.accuracy, e.loss);
    std::fflush(stdout);
  };

  for (; epoch < epochs && step < total_steps; ++epoch) {
    if (epoch != start.epoch) loader.start_epoch(epoch);
    core::data::Batch batch;
    while (step < total_steps) {
      {
        core::Timeline::Span span(tl, "data", "data");
        if (!loader.next(batch)) break;
      }
      const double lr = schedule_->lr(step);
      optimizer_->set_lr(lr);
      optimizer_->zero_grad();
      Tensor loss;
      {
        core::Timeline::Span span(tl, "forward", "compute");
        loss = compute_loss(batch, nullptr);
      }
      {
        core::Timeline::Span span(tl, "backward", "compute");
        loss.backward();
      }
      {
        core::Timeline::Span span(tl, "optimizer", "compute");
        if (c_.optimizer.grad_clip > 0)
          core::optim::clip_grad_norm(optimizer_->params(), c_.optimizer.grad_clip);
        optimizer_->step();
      }
      ++step;
      samples += batch.input.size(0);
      if (step % c_.train.log_every == 0 || step == total_steps) {
        const double l = loss.item<double>();
        if (!std::isfinite(l))
          COHORT_THROW(Error, "training diverged: loss is ", l, " at step ", step,
                       "; lower optimizer.lr or set optimizer.grad_clip");
        const double el = seconds_since(t0) - eval_s;
        const double sps = static_cast<double>(samples) / std::max(el, 1e-9);
        const double eta = static_cast<double>(total_steps - step) * el / static_cast<double>(step);
        s.final_loss = l;
        metrics.write(
            {{"step", step}, {"epoch", epoch}, {"loss", l}, {"lr", lr}, {"samples_per_s", sps}});
        if (events) {
          events->add_scalar("train/loss", l, step);
          events->add_scalar("train/lr", lr, step);
          events->add_scalar("train/samples_per_s", sps, step);
          events->flush();
        }
        if (tty) {
          std::printf("\rstep %lld/%lld  epoch %lld  loss %.4f  %.0f samples/s  ETA %s   ",
                      static_cast<long long>(step), static_cast<long long>(total_steps),
                      static_cast<long long>(epoch), l, sps, format_eta(eta).c_str());
        } else {
          std::printf("step %lld/%lld epoch %lld loss %.4f lr %.6g samples_per_s %.0f\n",
                      static_cast<long long>(step), static_cast<long long>(total_steps),
                      static_cast<long long>(epoch), l, lr, sps);
        }
        std::fflush(stdout);
      }
      if (c_.eval.every_steps > 0 && step % c_.eval.every_steps == 0) run_eval(epoch);
      if (c_.checkpoint.every_steps > 0 && step % c_.checkpoint.every_steps == 0)
        save(epoch, loader.position());
      if (const int sig = g_stop_signal.load()) {
        if (last_saved != step) save(epoch, loader.position());
        std::fflush(stdout);
        throw Stopped(sig, std::string(sig == SIGTERM ? "SIGTERM" : "SIGUSR1") +
                               " stopped training after step " + std::to_string(step) +
                               "; checkpoint written to " + c_.checkpoint.dir +
                               " (checkpoint.resume=auto continues from it)");
      }
    }
    const bool epoch_done = loader.position() >= per_epoch;
    if (c_.eval.every_steps == 0 && epoch_done) run_eval(epoch);
    if (c_.checkpoint.every_steps == 0 && epoch_done && last_saved != step)
      save(epoch, loader.position());
    if (step >= total_steps && last_saved != step) save(epoch, loader.position());
  }
  // Runs that stop mid-epoch (train.steps) still end with an evaluation of the final parameters.
  if (eval_set_ && last_eval_step != step) run_eval(std::min(epoch, epochs - 1));
  s.steps = step;
  s.train_s = seconds_since(t0) - eval_s;
  s.samples_per_s = static_cast<double>(samples) / std::max(s.train_s, 1e-9);
  metrics.write({{"event", "summary"},
                 {"steps", step},
                 {"train_s", s.train_s},
                 {"samples_per_s", s.samples_per_s},
                 {"test_acc", s.test_acc},
                 {"test_loss", s.test_loss},
                 {"world_size", 1}});
  std::printf("summary: steps %lld train_s %.2f samples_per_s %.0f test_acc %.4f world_size 1\n",
              static_cast<long long>(step), s.train_s, s.samples_per_s, s.test_acc);
  return s;
}

}  // namespace cohort::trainer
