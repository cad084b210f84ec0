// The trainer's parts around its loop: fp16's loss scale, one batch's loss, numbers summed or
// gathered over the ranks, the sharded evaluation, and the merge of the ranks' timelines.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "collectives/flight_recorder.h"
#include "core/autograd/grad_mode.h"
#include "core/ops/ops.h"
#include "trainer/trainer.h"

namespace cohort::trainer {

using core::Tensor;

Tensor LossScaler::scaled(const Tensor& loss) const { return core::mul(loss, scale_); }

bool LossScaler::unscale(const std::vector<Tensor>& params,
                         const std::function<double(double)>& over_ranks) {
  core::autograd::NoGradGuard guard;
  // Any inf or NaN makes the sum of all gradients non-finite: one number crosses to the host.
  Tensor total;
  for (const Tensor& p : params) {
    const Tensor& g = p.grad();
    if (!g.defined()) continue;
    Tensor s = core::sum(g.to(core::DType::kFloat64));
    total = total.defined() ? core::add(total, s) : s;
  }
  double sum = total.defined() ? total.item<double>() : 0.0;
  if (over_ranks) sum = over_ranks(sum);
  if (!std::isfinite(sum)) {
    scale_ /= 2;
    clean_ = 0;
    return false;
  }
  for (const Tensor& p : params) {
    Tensor g = p.grad();
    if (g.defined()) core::mul_(g, 1.0 / scale_);
  }
  if (++clean_ == interval_) {
    scale_ *= 2;
    clean_ = 0;
  }
  return true;
}

Tensor Trainer::compute_loss(const core::data::Batch& batch, Tensor* logits_out) {
  std::optional<core::AutocastGuard> autocast;
  if (autocast_ != core::DType::kFloat32) autocast.emplace(autocast_);
  Tensor x = batch.input.to(device_), y = batch.target.to(device_);
  if (core::is_floating(x.dtype()) && x.dtype() != param_dtype_) x = x.to(param_dtype_);
  Tensor logits = parallel_ ? parallel_->forward(x) : (*model_)(x);
  if (logits_out) *logits_out = logits;
  if (logits.dim() == 3)
    return core::cross_entropy(logits.reshape({-1, logits.size(-1)}), y.reshape({-1}));
  return core::cross_entropy(logits, y);
}

std::vector<double> Trainer::sum_over_ranks(std::vector<double> values) {
  if (!collective()) return values;
  Tensor t = core::from_vector(values, {static_cast<int64_t>(values.size())}).to(device_);
  const collectives::FlightTag tag("metrics sum");
  dist_.group->allreduce(t)->wait();
  t = t.to(core::Device::cpu());
  for (size_t i = 0; i < values.size(); ++i) values[i] = t.data_ptr<double>()[i];
  return values;
}

std::vector<double> Trainer::gather_from_ranks(const std::vector<double>& values) {
  if (!collective()) return values;
  const auto k = static_cast<int64_t>(values.size());
  Tensor mine = core::from_vector(values, {k}).to(device_);
  Tensor all =
      core::zeros({world_ * k}, core::TensorOptions(core::DType::kFloat64).with_device(device_));
  const collectives::FlightTag tag("metrics gather");
  dist_.group->allgather(all, mine)->wait();
  all = all.to(core::Device::cpu());
  return std::vector<double>(all.data_ptr<double>(), all.data_ptr<double>() + world_ * k);
}

EvalResult Trainer::evaluate() {
  EvalResult r;
  if (!eval_set_) return r;
  // Parameter-server workers do not wait for each other: the chief evaluates the whole set.
  const bool ps = dist_.ps.has_value();
  if (ps && !leader()) return r;
  const int eval_rank = ps ? 0 : rank_, eval_world = ps ? 1 : world_;
  core::autograd::NoGradGuard guard;
  model_->eval();
  // Rank r evaluates samples r, r + world, ...: disjoint shards whose union is the whole set, so
  // the reduced accuracy is the single-process one and every rank reports it.
  const int64_t n = eval_set_->size(), bs = c_.eval.batch_size;
  std::vector<int64_t> mine;
  for (int64_t i = eval_rank; i < n; i += eval_world) mine.push_back(i);
  int64_t correct = 0, count = 0, batches = 0;
  double loss_sum = 0;
  for (size_t start = 0; start < mine.size(); start += static_cast<size_t>(bs)) {
    if (c_.eval.max_batches > 0 && batches >= c_.eval.max_batches) break;
    std::vector<int64_t> idx(mine.begin() + static_cast<std::ptrdiff_t>(start),
                             mine.begin() + static_cast<std::ptrdiff_t>(std::min(
                                                mine.size(), start + static_cast<size_t>(bs))));
    core::data::Batch b = eval_set_->get_batch(idx);
    Tensor logits;  // through DDP, which broadcasts buffers only while training
    Tensor loss = compute_loss(b, &logits);
    Tensor y = b.target.to(device_);
    int64_t items = y.numel();
    correct += core::sum(core::eq(core::argmax(logits, -1), y)).item<int64_t>();
    loss_sum += loss.item<double>() * static_cast<double>(items);
    count += items;
    ++batches;
  }
  model_->train();
  auto totals =
      sum_over_ranks({static_cast<double>(correct), static_cast<double>(count), loss_sum});
  r.accuracy = totals[1] > 0 ? totals[0] / totals[1] : 0;
  r.loss = totals[1] > 0 ? totals[2] / totals[1] : 0;
  return r;
}

void Trainer::merge_timelines(const std::string& local_path) {
  namespace fs = std::filesystem;
  std::string mine;
  {
    std::ifstream f(local_path, std::ios::binary);
    mine.assign(std::istreambuf_iterator<char>(f), {});
  }
  std::error_code ec;
  fs::remove(local_path, ec);
  auto store = std::make_shared<collectives::PrefixStore>("timeline", dist_.store);
  const auto timeout = collectives::Millis(static_cast<int64_t>(c_.distributed.timeout_s * 1000));
  if (!leader()) {
    store->set(std::to_string(rank_), mine);
    return;
  }
  nlohmann::json all = nlohmann::json::array();
  for (int r = 0; r < world_; ++r) {
    std::string text = mine;
    if (r != 0) {
      store->wait({std::to_string(r)}, timeout);
      text = store->get(std::to_string(r));
      store->delete_key(std::to_string(r));
    }
    auto events = nlohmann::json::parse(text, nullptr, false);
    if (events.is_discarded()) {
      std::fprintf(stderr, "warning: rank %d's timeline is unreadable; left out of timeline.json\n",
                   r);
      continue;
    }
    for (auto& e : events) all.push_back(std::move(e));
  }
  const std::string path = c_.logging.dir + "/timeline.json";
  {
    std::ofstream f(path + ".tmp");
    f << all.dump() << "\n";
  }
  fs::rename(path + ".tmp", path, ec);
  if (ec) COHORT_THROW(IoError, "cannot write ", path, ": ", ec.message());
}

}  // namespace cohort::trainer
