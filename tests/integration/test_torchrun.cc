// `cohort launch` as a drop-in for torchrun: its spellings (--nproc_per_node=2, --max_restarts,
// --rdzv_backend=c10d, --standalone, -m, a .py program), and an unchanged PyTorch DDP script over
// Gloo (tests/torch_ddp_script.py, Debian's python3-torch) that all-reduces correctly, trains with
// DistributedDataParallel, and is restarted when a rank dies, on one node and on two agents.
#include <gtest/gtest.h>

#include <filesystem>
#include <regex>

#include <unistd.h>

#include "test_util.h"

namespace {

namespace fs = std::filesystem;
using cohort::test::run_command;

class Torchrun : public ::testing::Test {
 protected:
  // The shell text of `cohort launch ARGS` in tests/, with Debian's python3 (which has
  // python3-torch) first on PATH, as the script's python3.
  static std::string launch_text(const std::string& args) {
    return std::string("cd ") + COHORT_SOURCE_DIR + "/tests && env PATH=/usr/bin:/bin:$PATH " +
           COHORT_BINARY + " launch " + args;
  }
  static std::string launch(const std::string& args) { return sh(launch_text(args)); }
  static std::string sh(const std::string& text) { return "sh -c '" + text + "'"; }
  static int count(const std::string& text, const std::string& what) {
    int n = 0;
    for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
    return n;
  }
};

TEST_F(Torchrun, APyTorchGlooDdpScriptRunsUnchanged) {
  auto r = run_command(launch("--nproc_per_node=2 torch_ddp_script.py --steps 3"), 300);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("rank 0: allreduce ok 3 local_rank 0"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("rank 1: allreduce ok 3 local_rank 1"), std::string::npos) << r.output;
  EXPECT_EQ(count(r.output, ": ddp ok"), 2) << r.output;
  EXPECT_EQ(count(r.output, ": done"), 2) << r.output;
  // Cohort's prefixes: output is routed per rank.
  EXPECT_NE(r.output.find("[0/1] rank 1: done"), std::string::npos) << r.output;
}

// torchrun's other spellings are accepted; a rank killed on the first attempt is named in the
// failure summary and the job restarts (TORCHELASTIC_RESTART_COUNT 1) and finishes.
TEST_F(Torchrun, TorchrunsSpellingsAndAKilledRankIsRestarted) {
  auto r = run_command(launch("--nnodes=1 --node_rank=0 --nproc_per_node=2 --max_restarts=1 "
                              "--standalone --rdzv_backend=c10d --rdzv_id=job7 "
                              "torch_ddp_script.py --die-once"),
                       300);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("rank 1 (node 0, pid"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("SIGKILL"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("restart 1"), std::string::npos) << r.output;
  EXPECT_EQ(count(r.output, ": done"), 2) << r.output;
  // Without restarts the same death fails the job with the rank's signal, named.
  auto f = run_command(launch("--nproc_per_node=2 torch_ddp_script.py --die-once"), 300);
  EXPECT_EQ(f.code, 128 + 9) << f.output;
  EXPECT_NE(f.output.find("rank 1 (node 0, pid"), std::string::npos) << f.output;
}

TEST_F(Torchrun, ModuleFormRunsPythonDashM) {
  auto r = run_command(launch("--nproc_per_node 2 -m torch_ddp_script --steps 1"), 300);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(count(r.output, ": done"), 2) << r.output;
}

// Two agents (one per "node", here both on this machine) meet at --rdzv_endpoint; node 0 picks
// the workers' MASTER_PORT and node 1's worker reaches PyTorch's store there.
TEST_F(Torchrun, TwoAgentsShareOneMasterPort) {
  const uint16_t port = [] {
    auto r =
        run_command(std::string("/usr/bin/python3 -c 'import socket; s=socket.socket(); "
                                "s.bind((\"127.0.0.1\", 0)); print(s.getsockname()[1])'"));
    return static_cast<uint16_t>(std::stoi(r.output));
  }();
  const std::string common =
      "--nnodes=2 --nproc_per_node=1 --rdzv_endpoint=127.0.0.1:" + std::to_string(port) +
      " --rdzv_timeout 120 torch_ddp_script.py";
  const std::string log =
      (fs::temp_directory_path() / ("cohort-torchrun-node1-" + std::to_string(::getpid()) + ".log"))
          .string();
  auto r = run_command(sh("(" + launch_text("--node_rank=1 " + common) + ") > " + log +
                          " 2>&1 & (" + launch_text("--node_rank=0 " + common) +
                          "); echo node0=$?; wait; cat " + log + "; rm -f " + log),
                       300);
  EXPECT_NE(r.output.find("node0=0"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("[1/1] rank 1: done"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("[0/0] rank 0: done"), std::string::npos) << r.output;
}

// Bad torchrun input is one sentence with exit code 2.
TEST_F(Torchrun, AnUnsupportedRendezvousBackendIsNamed) {
  auto r = run_command(launch("--rdzv_backend=etcd --nproc_per_node=1 torch_ddp_script.py"));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("--rdzv-backend etcd is not supported"), std::string::npos) << r.output;
}

}  // namespace
