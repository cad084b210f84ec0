// Helpers shared by the test suites.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>
#include <string>
#include <utility>

#include <nlohmann/json.hpp>

#include "core/io/checkpoint.h"

namespace cohort::test {

// Overrides of configs/tiny_gpt.yaml for a model and data that train in well under a second:
// for tests of what runs a job, not of what it learns.
inline const std::string kTinyGpt =
    "data.dataset=synthetic model.vocab=256 model.dim=32 model.context=16 data.batch_size=8 "
    "eval.max_batches=1";

struct CommandResult {
  int code = -1;  // -1 when it did not exit normally
  std::string output;
};

// Runs a shell command with a time limit (`timeout` ends its whole process group), capturing
// stdout and stderr together.
inline CommandResult run_command(const std::string& cmd, int timeout_s = 600) {
  const std::string full = "timeout -k 5 " + std::to_string(timeout_s) + " " + cmd + " 2>&1";
  CommandResult r;
  FILE* p = ::popen(full.c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
  const int status = ::pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// The whole content of a file; empty when it cannot be read.
inline std::string read_text(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

// A run directory's TensorBoard scalars as TensorBoard itself reads them (tests/read_tfevents.py,
// run by .venv's Python, where `scripts/install-deps.sh --tests` installs the tensorboard package):
// (tag, step) -> value. A reader that cannot run fails the test.
struct TensorBoardScalars {
  double file_version = 0;
  std::map<std::pair<std::string, int64_t>, double> values;
  bool has(const std::string& tag, int64_t step) const { return values.count({tag, step}) > 0; }
};
inline TensorBoardScalars read_tensorboard(const std::filesystem::path& run_dir) {
  TensorBoardScalars tb;
  const std::filesystem::path python =
      std::filesystem::path(COHORT_SOURCE_DIR) / ".venv/bin/python3";
  if (!std::filesystem::exists(python)) {
    ADD_FAILURE() << python.string()
                  << " is missing: scripts/install-deps.sh --tests installs TensorBoard there";
    return tb;
  }
  // The reader's warnings (no TensorFlow: a reduced feature set) go to stderr, not into the JSON.
  const CommandResult r =
      run_command("sh -c '" + python.string() + " " + COHORT_SOURCE_DIR +
                      "/tests/read_tfevents.py " + run_dir.string() + " 2>/dev/null'",
                  300);
  if (r.code != 0) {
    ADD_FAILURE() << "TensorBoard could not read " << run_dir.string() << ": " << r.output;
    return tb;
  }
  const std::string& out = r.output;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("file_version")) tb.file_version = j["file_version"];
    if (j.contains("tag")) tb.values[{j["tag"], j["step"]}] = j["value"];
  }
  return tb;
}

// A fresh directory per test (named after the test and the process), removed afterwards.
class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ =
        std::filesystem::temp_directory_path() /
        ("cohort_" +
         std::string(::testing::UnitTest::GetInstance()->current_test_info()->test_suite_name()) +
         "_" + ::testing::UnitTest::GetInstance()->current_test_info()->name() + "_" +
         std::to_string(::getpid()));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::filesystem::path dir_;
};

// Nodes on one machine: network namespaces on a bridge, made by scripts/netns.sh. When this machine
// cannot have them, `unavailable` says why (tests skip with it); `error` says what else failed.
class NetnsCluster {
 public:
  NetnsCluster(const std::string& tag, int nodes) : nodes_(nodes) {
    if (::geteuid() != 0) {
      unavailable = "network namespaces need root";
      return;
    }
    prefix_ = tag + std::to_string(::getpid()) + "n";
    const std::string cmd = std::string(COHORT_SOURCE_DIR) + "/scripts/netns.sh up " + prefix_ +
                            " " + std::to_string(nodes) + " 2>&1";
    FILE* out = ::popen(cmd.c_str(), "r");
    std::string text;
    char line[256];
    while (out && std::fgets(line, sizeof line, out)) text += line;
    const int rc = out ? ::pclose(out) : -1;
    if (WIFEXITED(rc) && WEXITSTATUS(rc) == 3) {
      unavailable = "this machine cannot have network namespaces: " + text;
    } else if (rc != 0) {
      error = "netns.sh up failed: " + text;
    } else {
      up_ = true;
      subnet = text.substr(0, text.find('\n'));
    }
  }
  ~NetnsCluster() {
    if (up_)
      (void)!std::system(
          (std::string(COHORT_SOURCE_DIR) + "/scripts/netns.sh down " + prefix_).c_str());
  }
  NetnsCluster(const NetnsCluster&) = delete;
  NetnsCluster& operator=(const NetnsCluster&) = delete;
  // The namespace of node k, and its address.
  std::string node(int k) const { return prefix_ + std::to_string(k); }
  std::string address(int k) const { return subnet + "." + std::to_string(k + 1); }
  // A shell command that runs `cohort launch --nnodes N <launch_options> -- <program>` on every
  // node at once (rendezvous on node 0), node k's output in <log_prefix>k.log, and exits non-zero
  // when any node did.
  std::string launch_on_every_node(const std::string& launch_options, const std::string& program,
                                   const std::string& log_prefix) const {
    std::string all, wait;
    for (int k = 0; k < nodes_; ++k) {
      const std::string K = std::to_string(k);
      all += "ip netns exec " + node(k) + " " + COHORT_BINARY + " launch --nnodes " +
             std::to_string(nodes_) + " --node-rank " + K + " --rdzv-endpoint " + address(0) +
             ":29400 --rdzv-timeout 60 " + launch_options + " -- " + program + " > " + log_prefix +
             K + ".log 2>&1 & p" + K + "=$!; ";
      wait += "wait $p" + K + "; s=$((s | $?)); ";
    }
    return "sh -c 's=0; " + all + wait + "exit $s'";
  }

  std::string unavailable, error;
  std::string subnet;  // e.g. "10.57.0"; the bridge is <subnet>.254

 private:
  std::string prefix_;
  int nodes_;
  bool up_ = false;
};

// The model of the newest checkpoint under RUN_DIR/checkpoints (a failure when there is none).
// `cohort launch` of `args` on n ranks of this node, and the same under mpirun (as root, and with
// more ranks than cores).
inline std::string launch_command(int n, const std::string& args, const std::string& flags = "") {
  return std::string(COHORT_BINARY) + " launch " + flags + " --nproc-per-node " +
         std::to_string(n) + " -- " + args;
}
inline std::string mpirun_command(int n, const std::string& args) {
  return "env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun --oversubscribe "
         "--bind-to none -np " +
         std::to_string(n) + " " + args;
}

inline core::io::TensorMap final_model(const std::filesystem::path& run_dir) {
  auto latest = core::io::latest_checkpoint((run_dir / "checkpoints").string());
  if (!latest) {
    ADD_FAILURE() << run_dir << " wrote no checkpoint";
    return {};
  }
  return core::io::load_checkpoint(*latest).model;
}

// Relative error ||a - b|| / ||b|| of each tensor at most 1e-5. Float32 sums over a split batch
// round differently (1e-7), and twenty steps of momentum carry that along; where a ReLU input lies
// that close to 0 the kink changes a few elements by more (seen: 2e-5 in 3 of c2.weight's 18k), so
// an element-wise bound would flag correct runs.
// Relative L2 distance per tensor at most `tolerance`. float32 runs that sum in another order
// differ by ~1e-6 (more on another CPU's BLAS, after momentum); float64 runs by ~1e-13.
inline void expect_same_model(const cohort::core::io::TensorMap& a,
                              const cohort::core::io::TensorMap& b, const std::string& what,
                              double tolerance = 1e-5) {
  ASSERT_EQ(a.size(), b.size()) << what;
  ASSERT_FALSE(a.empty()) << what;
  for (auto& [name, t] : b) {
    ASSERT_TRUE(a.count(name)) << what << ": " << name;
    auto x = a.at(name).contiguous().to(cohort::core::DType::kFloat64);
    auto y = t.contiguous().to(cohort::core::DType::kFloat64);
    ASSERT_EQ(x.numel(), y.numel()) << what << ": " << name;
    const double* p = x.data_ptr<double>();
    const double* q = y.data_ptr<double>();
    double diff = 0, norm = 0;
    for (int64_t i = 0; i < y.numel(); ++i) {
      diff += (p[i] - q[i]) * (p[i] - q[i]);
      norm += q[i] * q[i];
    }
    EXPECT_LE(std::sqrt(diff), tolerance * std::sqrt(norm)) << what << ": " << name;
  }
}

}  // namespace cohort::test
