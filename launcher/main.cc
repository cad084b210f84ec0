// The `cohort` executable. Subcommands: train (one worker; alone, single-process training),
// bench collectives.
// Exit codes: 0 success, 1 training error, 2 usage or config error.
#include <cstdio>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "cohort/config.h"
#include "core/util/error.h"
#include "launcher/bench_collectives.h"
#include "trainer/config.h"
#include "trainer/trainer.h"

namespace {

constexpr int kExitTrainingError = 1;
constexpr int kExitUsage = 2;

int cmd_train(const std::string& config, const std::vector<std::string>& overrides) {
  cohort::trainer::Config c = cohort::trainer::load_config(config, overrides);
  cohort::trainer::Trainer t(c);
  t.run();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"cohort: distributed training without Python"};
  app.set_version_flag("--version", std::string("cohort ") + COHORT_VERSION);
  app.require_subcommand(1);
  std::string config;
  std::vector<std::string> overrides;
  auto* train =
      app.add_subcommand("train", "train a model described by a YAML config (one worker)");
  train->add_option("config", config, "the experiment's YAML file")->required();
  train->add_option("overrides", overrides, "key.path=value overrides of config keys");

  auto* bench = app.add_subcommand("bench", "benchmarks");
  bench->require_subcommand(1);
  auto* bench_coll = bench->add_subcommand(
      "collectives", "time one collective over a range of sizes (run by every rank of a job)");
  cohort::launcher::BenchCollectivesOptions bo;
  std::string min_b = "4K", max_b = "64M";
  bench_coll->add_option("--backend", bo.backend, "cpu, mpi or nccl")->capture_default_str();
  bench_coll
      ->add_option("--op", bo.op,
                   "allreduce, broadcast, allgather, reduce_scatter, alltoall or barrier")
      ->capture_default_str();
  bench_coll->add_option("--transport", bo.transport, "cpu backend: auto, shm or tcp")
      ->capture_default_str();
  bench_coll->add_option("-b,--min-bytes", min_b, "smallest size")->capture_default_str();
  bench_coll->add_option("-e,--max-bytes", max_b, "largest size")->capture_default_str();
  bench_coll->add_option("-f,--factor", bo.factor, "size multiplier")->capture_default_str();
  bench_coll->add_option("--iters", bo.iters, "timed iterations (0: 200 below 1 MiB, else 20)")
      ->capture_default_str();
  bench_coll->add_option("--warmup", bo.warmup, "untimed iterations")->capture_default_str();
  bench_coll->add_option("--timeout", bo.timeout_s, "seconds before a collective fails")
      ->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : kExitUsage;
  }
  try {
    if (*train) return cmd_train(config, overrides);
    if (*bench_coll) {
      bo.min_bytes = cohort::launcher::parse_bytes("-b", min_b);
      bo.max_bytes = cohort::launcher::parse_bytes("-e", max_b);
      return cohort::launcher::bench_collectives(bo);
    }
  } catch (const cohort::ConfigError& e) {
    std::fprintf(stderr, "cohort: %s\n", e.what());
    return kExitUsage;
  } catch (const cohort::Error& e) {
    std::fprintf(stderr, "cohort: %s\n", e.what());
    return kExitTrainingError;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cohort: unexpected error: %s\n", e.what());
    return kExitTrainingError;
  }
  return 0;
}
