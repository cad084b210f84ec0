// `cohort bench collectives`: an nccl-tests style table (bytes, time_us, algbw_GBs, busbw_GBs,
// errors, and for all-reduces the algorithm that ran) for one collective over a range of sizes,
// run by every rank of a job.
#pragma once

#include <cstdint>
#include <string>

namespace cohort::launcher {

struct BenchCollectivesOptions {
  std::string backend = "cpu";
  std::string op = "allreduce";
  std::string transport = "auto";
  std::string algorithm;  // cpu all-reduces; empty: COHORT_ALLREDUCE_ALGORITHM, else auto
  int64_t min_bytes = 4096, max_bytes = 64 << 20, factor = 4;
  int iters = 0;  // 0: 200 below 1 MiB, 20 from there (as the reference programs)
  int warmup = 3;
  double timeout_s = 300;
};

// Parses 4096, 4K, 64M, 1G; throws ConfigError naming the flag otherwise.
int64_t parse_bytes(const std::string& flag, const std::string& text);
// Returns the exit code: 0, or 1 when a result was wrong.
int bench_collectives(const BenchCollectivesOptions& o);

}  // namespace cohort::launcher
