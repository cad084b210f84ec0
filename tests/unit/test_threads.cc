// parallel_for: every item once, exceptions back to the caller, nested and concurrent calls inline,
// a forked child with a pool of its own; and kernels that use it give what one thread gives.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <stdexcept>
#include <thread>
#include <vector>

#include "core/ops/ops.h"
#include "core/util/threads.h"

namespace cohort::core {
namespace {

// Restores the thread count a test changed.
struct Threads {
  explicit Threads(int n) : before(get_num_threads()) { set_num_threads(n); }
  ~Threads() { set_num_threads(before); }
  int before;
};

// More threads than this machine's cores still covers every item exactly once, in ranges of at
// least the grain.
TEST(ParallelFor, CoversEveryItemOnceInRangesOfAtLeastTheGrain) {
  Threads t(4);
  for (int64_t n : {1, 7, 64, 1000, 4097}) {
    std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
    std::atomic<int64_t> short_ranges{0};
    parallel_for(n, 8, [&](int64_t b, int64_t e) {
      if (e - b < 8 && e != n) ++short_ranges;  // only the last range may be short
      for (int64_t i = b; i < e; ++i) ++hits[static_cast<size_t>(i)];
    });
    for (int64_t i = 0; i < n; ++i)
      ASSERT_EQ(hits[static_cast<size_t>(i)].load(), 1) << n << ":" << i;
    EXPECT_EQ(short_ranges.load(), 0) << n;
  }
}

TEST(ParallelFor, AnExceptionReachesTheCallerAndThePoolKeepsWorking) {
  Threads t(3);
  EXPECT_THROW(parallel_for(100, 1,
                            [](int64_t b, int64_t) {
                              if (b >= 50) throw std::runtime_error("item 50");
                            }),
               std::runtime_error);
  std::atomic<int64_t> sum{0};
  parallel_for(100, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) sum += i;
  });
  EXPECT_EQ(sum.load(), 4950);
}

TEST(ParallelFor, NestedAndConcurrentCallsFinish) {
  Threads t(3);
  std::atomic<int64_t> total{0};
  auto job = [&] {
    parallel_for(40, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i)
        parallel_for(10, 1, [&](int64_t b2, int64_t e2) { total += e2 - b2; });
    });
  };
  std::thread other(job);
  job();
  other.join();
  EXPECT_EQ(total.load(), 2 * 40 * 10);
}

// The child of a fork has none of the pool's threads: a job there must not wait for them.
TEST(ParallelFor, AForkedChildRunsItsOwn) {
  Threads t(3);
  std::atomic<int64_t> warm{0};
  parallel_for(100, 1, [&](int64_t b, int64_t e) { warm += e - b; });
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::alarm(60);  // a hang kills the child, and the parent sees a signal instead of hanging
    std::atomic<int64_t> n{0};
    parallel_for(1000, 1, [&](int64_t b, int64_t e) { n += e - b; });
    ::_exit(n.load() == 1000 ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "the child was killed by signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

// The Winograd transforms split planes over threads: with 3 threads the convolution and its
// gradients equal those of one thread (the GEMMs may split differently, hence the tolerance).
TEST(ParallelFor, WinogradConvolutionIsTheSameOnSeveralThreads) {
  Generator gen(8);
  Tensor x0 = randn({6, 16, 11, 9}, {}, &gen), w0 = randn({16, 16, 3, 3}, {}, &gen);
  Tensor gy = randn({6, 16, 11, 9}, {}, &gen);
  auto run = [&](int threads) {
    Threads t(threads);
    Tensor x = x0.clone(), w = w0.clone();
    x.set_requires_grad(true);
    w.set_requires_grad(true);
    Tensor y = conv2d(x, w, Tensor(), {{1, 1}, {1, 1}, {1, 1}, 1, Conv2dAlgorithm::kWinograd});
    y.backward(gy);
    return std::vector<Tensor>{y.detach(), x.grad(), w.grad()};
  };
  auto one = run(1), three = run(3);
  for (int i = 0; i < 3; ++i) {
    const double err = max(abs(sub(one[i], three[i]))).item_double();
    EXPECT_LE(err, 1e-5 * max(abs(one[i])).item_double()) << i;
  }
}

}  // namespace
}  // namespace cohort::core
