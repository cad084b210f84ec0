#include "trainer/reporter.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>

#include "trainer/trainer.h"

namespace cohort::trainer {

namespace {

std::string format_eta(double s) {
  char buf[32];
  const auto t = static_cast<int64_t>(s);
  std::snprintf(buf, sizeof buf, "%lld:%02lld", static_cast<long long>(t / 60),
                static_cast<long long>(t % 60));
  return buf;
}

}  // namespace

Reporter::Reporter(const Config& c, bool leader, bool resumed, int64_t tokens_per_sample)
    : leader_(leader), tty_(leader && isatty(STDOUT_FILENO)), tokens_(tokens_per_sample) {
  if (!leader_) return;
  metrics_ = std::make_unique<MetricsWriter>(c.logging.dir, resumed);
  if (c.logging.tensorboard) events_ = std::make_unique<EventWriter>(c.logging.dir);
}

void Reporter::write(const nlohmann::json& record) {
  if (metrics_) metrics_->write(record);
}

void Reporter::step(const StepLine& l) {
  if (!leader_) return;
  nlohmann::json line{{"step", l.step},
                      {"epoch", l.epoch},
                      {"loss", l.loss},
                      {"lr", l.lr},
                      {"samples_per_s", l.samples_per_s}};
  const double tps = l.samples_per_s * static_cast<double>(tokens_);
  if (tokens_ > 0) line["tokens_per_s"] = tps;
  // Per rank, for finding the one that holds the others back (stragglers.h).
  if (l.ranks.size() > 1) {
    std::vector<double> step_ms, data_ms, wait_ms;
    for (const RankTimes& t : l.ranks) {
      step_ms.push_back(t.step_ms);
      data_ms.push_back(t.data_ms);
      wait_ms.push_back(t.wait_ms);
    }
    line["rank_step_ms"] = step_ms;
    line["rank_data_ms"] = data_ms;
    line["rank_collective_wait_ms"] = wait_ms;
  }
  write(line);
  if (events_) {
    events_->add_scalar("train/loss", l.loss, l.step);
    events_->add_scalar("train/lr", l.lr, l.step);
    events_->add_scalar("train/samples_per_s", l.samples_per_s, l.step);
    for (size_t r = 0; r < l.ranks.size(); ++r) {
      const std::string rank = "/rank_" + std::to_string(r);
      events_->add_scalar("step_time_ms" + rank, l.ranks[r].step_ms, l.step);
      events_->add_scalar("data_wait_ms" + rank, l.ranks[r].data_ms, l.step);
      events_->add_scalar("collective_wait_ms" + rank, l.ranks[r].wait_ms, l.step);
    }
    events_->flush();
  }
  if (tty_) {
    std::printf("\rstep %lld/%lld  epoch %lld  loss %.4f  %.0f samples/s  ETA %s   ",
                static_cast<long long>(l.step), static_cast<long long>(l.total_steps),
                static_cast<long long>(l.epoch), l.loss, l.samples_per_s,
                format_eta(l.eta_s).c_str());
  } else {
    std::printf("step %lld/%lld epoch %lld loss %.4f lr %.6g samples_per_s %.0f",
                static_cast<long long>(l.step), static_cast<long long>(l.total_steps),
                static_cast<long long>(l.epoch), l.loss, l.lr, l.samples_per_s);
    if (tokens_ > 0) std::printf(" tokens_per_s %.0f", tps);
    std::printf("\n");
  }
  std::fflush(stdout);
}

void Reporter::eval(int64_t step, int64_t epoch, const EvalResult& e, double train_s,
                    const std::string& early_stop) {
  if (!leader_) return;
  if (events_) {
    events_->add_scalar("eval/test_acc", e.accuracy, step);
    events_->add_scalar("eval/test_loss", e.loss, step);
    events_->flush();
  }
  nlohmann::json record{{"event", "eval"},        {"step", step},        {"epoch", epoch},
                        {"test_acc", e.accuracy}, {"test_loss", e.loss}, {"train_s", train_s}};
  if (tokens_ > 0) record["perplexity"] = std::exp(e.loss);
  write(record);
  if (tty_) std::printf("\n");
  std::printf("eval step %lld epoch %lld: test_acc %.4f test_loss %.4f",
              static_cast<long long>(step), static_cast<long long>(epoch), e.accuracy, e.loss);
  if (tokens_ > 0) std::printf(" perplexity %.3f", std::exp(e.loss));
  std::printf("\n");
  if (!early_stop.empty()) std::printf("%s\n", early_stop.c_str());
  std::fflush(stdout);
}

void Reporter::ranks(const std::vector<nlohmann::json>& per_rank) {
  for (size_t r = 0; r < per_rank.size(); ++r) {
    nlohmann::json record{{"event", "rank"}, {"rank", r}};
    record.update(per_rank[r]);
    write(record);
    if (events_ && per_rank[r].contains("peak_mem_mb"))
      events_->add_scalar("memory/peak_mem_mb_rank_" + std::to_string(r),
                          per_rank[r]["peak_mem_mb"].get<double>(), 0);
  }
  if (events_) events_->flush();
}

void Reporter::summary(int64_t steps, double train_s, double samples_per_s, double test_acc,
                       double test_loss, int world) {
  nlohmann::json summary{{"event", "summary"},   {"steps", steps},
                         {"train_s", train_s},   {"samples_per_s", samples_per_s},
                         {"test_acc", test_acc}, {"test_loss", test_loss},
                         {"world_size", world}};
  const double tps = samples_per_s * static_cast<double>(tokens_);
  if (tokens_ > 0) {
    summary["tokens_per_s"] = tps;
    summary["perplexity"] = std::exp(test_loss);
  }
  write(summary);
  if (!leader_) return;
  std::printf("summary: steps %lld train_s %.2f samples_per_s %.0f test_acc %.4f world_size %d",
              static_cast<long long>(steps), train_s, samples_per_s, test_acc, world);
  if (tokens_ > 0) std::printf(" tokens_per_s %.0f perplexity %.3f", tps, std::exp(test_loss));
  std::printf("\n");
  std::fflush(stdout);
}

}  // namespace cohort::trainer
