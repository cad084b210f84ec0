#include "collectives/group_monitor.h"

#include <cstdlib>

#include "core/util/error.h"

namespace cohort::collectives {
namespace {

constexpr const char* kAbandoned = "was abandoned because another rank failed";
constexpr auto kReportPeriod = std::chrono::milliseconds(250);

std::string progress_key(int rank) { return "progress/" + std::to_string(rank); }

}  // namespace

GroupMonitor::GroupMonitor(std::shared_ptr<Store> store, int rank, int size)
    : store_(store->clone()), rank_(rank), size_(size) {
  reporter_ = std::thread([this] { report_loop(); });
}

GroupMonitor::~GroupMonitor() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  reporter_.join();
}

void GroupMonitor::entered(uint64_t seq, const char* op) {
  entered_op_.store(op);
  entered_seq_.store(seq + 1);
}

void GroupMonitor::report_loop() {
  uint64_t published = 0;
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    const bool stop = stopping_;
    const uint64_t e = entered_seq_.load();
    if (e != published) {
      try {
        store_->set(progress_key(rank_), std::to_string(e) + " " + entered_op_.load());
        published = e;
      } catch (const std::exception&) {
        // The store may be gone at shutdown; the next collective's own errors say more.
      }
    }
    if (stop) return;
    cv_.wait_for(lock, kReportPeriod);
  }
}

std::string GroupMonitor::who_never_entered(uint64_t seq) const {
  std::this_thread::sleep_for(kReportPeriod * 2 + std::chrono::milliseconds(100));
  std::string missing, detail;
  for (int r = 0; r < size_; ++r) {
    if (r == rank_) continue;
    std::string report;
    try {
      if (store_->check({progress_key(r)})) report = store_->get(progress_key(r));
    } catch (const std::exception&) {
      report.clear();
    }
    uint64_t entered = 0;
    std::string last_op;
    if (!report.empty()) {
      const size_t sp = report.find(' ');
      // A report we cannot parse counts as none rather than replacing the timeout message.
      entered = std::strtoull(report.substr(0, sp).c_str(), nullptr, 10);
      last_op = sp == std::string::npos ? "" : report.substr(sp + 1);
    }
    if (entered < seq + 1) {
      missing += (missing.empty() ? "" : ", ") + std::to_string(r);
      detail += "; rank " + std::to_string(r) +
                (entered == 0 ? " entered no collective"
                              : " last entered " + last_op + " #" + std::to_string(entered - 1));
    }
  }
  return missing.empty() ? "" : "; ranks that never entered it: " + missing + detail;
}

std::exception_ptr GroupMonitor::fail(std::exception_ptr error) {
  std::string what;
  try {
    std::rethrow_exception(error);
  } catch (const std::exception& e) {
    what = e.what();
  } catch (...) {
    what = "unknown error";
  }
  if (what.find(kAbandoned) != std::string::npos) return error;
  try {
    const std::string mine = "rank " + std::to_string(rank_) + ": " + what;
    const std::string first = store_->compare_set("abort", "", mine);
    // A peer that exits after its own failure looks like the culprit from here; name the failure
    // that started it.
    if (first != mine)
      return std::make_exception_ptr(
          DistributedError(what + "; the first failure in the group was " + first));
  } catch (const std::exception&) {
    // The store may be what failed; the peers' own timeouts still end their wait.
  }
  return error;
}

std::exception_ptr GroupMonitor::failed_earlier(const std::string& op, std::exception_ptr broken) {
  std::string what = "unknown error";
  try {
    std::rethrow_exception(broken);
  } catch (const std::exception& e) {
    what = e.what();
  } catch (...) {
  }
  return std::make_exception_ptr(
      DistributedError(op + " cannot run: this process group failed earlier: " + what));
}

void GroupMonitor::throw_abandoned(const std::string& op, uint64_t seq,
                                   const std::string& failure) const {
  COHORT_THROW(DistributedError, op, " #", seq, " on rank ", rank_, " ", kAbandoned, ": ", failure);
}

std::optional<std::string> GroupMonitor::posted_failure() const {
  try {
    if (store_->check({"abort"})) return store_->get("abort");
  } catch (const std::exception&) {
  }
  return std::nullopt;
}

}  // namespace cohort::collectives
