// The `cohort` executable. Subcommands: train (one worker; alone, single-process training).
// Exit codes: 0 success, 1 training error, 2 usage or config error.
#include <cstdio>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "cohort/config.h"
#include "core/util/error.h"
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
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : kExitUsage;
  }
  try {
    if (*train) return cmd_train(config, overrides);
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
