#include "core/util/threads.h"

#include <pthread.h>
#include <sched.h>
#include <sys/sysinfo.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <string_view>
#include <thread>
#include <vector>

#include "core/ops/cpu/blas.h"
#include "core/util/env.h"

namespace cohort::core {
namespace {

int g_threads = 0;

// Threads that sleep on a condition variable between jobs (so they take nothing from the BLAS's
// threads while a GEMM runs) and share one job at a time by taking ranges from an atomic counter.
class Pool {
 public:
  void run(int64_t n, int64_t grain, int threads, const std::function<void(int64_t, int64_t)>& fn) {
    std::unique_lock<std::mutex> one_job(job_mu_, std::try_to_lock);
    if (!one_job.owns_lock()) {
      fn(0, n);  // another thread's job holds the pool
      return;
    }
    // A parallel_for inside fn, on this thread too, runs inline (and never re-locks job_mu_).
    struct InJob {
      InJob() { inside_job = true; }
      ~InJob() { inside_job = false; }
    } in_job;
    grow(threads - 1);
    // About four ranges per thread, so that a slow thread does not hold up the rest.
    const int64_t chunk = std::max(grain, (n + 4 * threads - 1) / (4 * threads));
    {
      std::lock_guard<std::mutex> lock(mu_);
      fn_ = &fn;
      n_ = n;
      chunk_ = chunk;
      next_.store(0);
      error_ = nullptr;
      ++generation_;
    }
    wake_.notify_all();
    work();
    std::unique_lock<std::mutex> lock(mu_);
    done_.wait(lock, [&] { return running_ == 0; });
    fn_ = nullptr;  // late risers find no job
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void grow(int want) {
    while (static_cast<int>(threads_.size()) < want) {
      threads_.emplace_back([this] { loop(); });
      threads_.back().detach();  // the pool lives as long as the process
    }
  }

  void loop() {
    inside_job = true;
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      wake_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      if (fn_ == nullptr) continue;
      ++running_;
      lock.unlock();
      work();
      lock.lock();
      if (--running_ == 0) done_.notify_all();
    }
  }

  void work() {
    for (;;) {
      const int64_t begin = next_.fetch_add(chunk_);
      if (begin >= n_) return;
      try {
        (*fn_)(begin, std::min(n_, begin + chunk_));
      } catch (...) {
        std::lock_guard<std::mutex> lock(err_mu_);
        if (!error_) error_ = std::current_exception();
      }
    }
  }

 public:
  // This thread runs part of a job (a pool thread, or a caller inside run).
  static thread_local bool inside_job;

 private:
  std::mutex job_mu_, mu_, err_mu_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> threads_;
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0, chunk_ = 1;
  std::atomic<int64_t> next_{0};
  uint64_t generation_ = 0;
  int running_ = 0;
  std::exception_ptr error_;
};

thread_local bool Pool::inside_job = false;

// A forked child has none of the parent's threads (and maybe a mutex locked by one of them): it
// starts a pool of its own. The old one is left behind, as its state may be mid-job.
Pool* g_pool = nullptr;
std::once_flag g_pool_once;

Pool& pool() {
  std::call_once(g_pool_once, [] {
    g_pool = new Pool;
    ::pthread_atfork(nullptr, nullptr, [] { g_pool = new Pool; });
  });
  return *g_pool;
}

}  // namespace

int available_cores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

bool bound_to_own_cpus() {
  if (const char* b = env::get(env::kCpuBind)) return std::string_view(b) != "none";
  return available_cores() < get_nprocs();
}

void set_num_threads(int n) {
  g_threads = n > 0 ? n : available_cores();
  cpu::set_blas_threads(g_threads);
}

int get_num_threads() { return g_threads > 0 ? g_threads : available_cores(); }

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int threads =
      static_cast<int>(std::min<int64_t>(get_num_threads(), (n + grain - 1) / grain));
  if (threads <= 1 || Pool::inside_job) {
    fn(0, n);
    return;
  }
  pool().run(n, grain, threads, fn);
}

}  // namespace cohort::core
