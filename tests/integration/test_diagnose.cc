// Hangs made on purpose, and what `cohort diagnose RUN_DIR` makes of the ranks' flight-recorder
// dumps: a rank slowed past the collective timeout on the cpu and mpi backends, and a running
// rank asked where it is with SIGUSR2.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <regex>
#include <thread>

#include "cohort/config.h"
#include "test_util.h"

namespace {

namespace fs = std::filesystem;
using cohort::test::kTinyGpt;
using cohort::test::read_text;
using cohort::test::run_command;
using namespace std::chrono_literals;

class Diagnose : public cohort::test::TempDirTest {
 protected:
  std::string train(const std::string& run) const {
    return std::string(COHORT_BINARY) + " train " COHORT_SOURCE_DIR "/configs/tiny_gpt.yaml " +
           kTinyGpt + " train.steps=6 distributed.timeout_s=2 logging.dir=" + (dir_ / run).string();
  }
  std::string diagnose(const std::string& run) const {
    const auto r = run_command(std::string(COHORT_BINARY) + " diagnose " + (dir_ / run).string());
    EXPECT_EQ(r.code, 0) << r.output;
    return r.output;
  }
};

TEST_F(Diagnose, ARankSlowedPastTheTimeoutIsNamedOnTheCpuBackend) {
  // Rank 1 sleeps 6 s in a step; rank 0 gives up on the next collective after 2 s.
  const auto r = run_command("env COHORT_TEST_STEP_DELAY_MS=1:6000 " + std::string(COHORT_BINARY) +
                             " launch --nproc-per-node 2 -- " + train("run"));
  ASSERT_NE(r.code, 0) << r.output;
  ASSERT_TRUE(fs::exists(dir_ / "run" / "flight_recorder" / "rank_0.json")) << r.output;
  const std::string d = diagnose("run");
  EXPECT_TRUE(std::regex_search(d, std::regex("rank 1 never entered allreduce #[0-9]+ of group 0")))
      << d;
  EXPECT_TRUE(std::regex_search(d, std::regex("rank 0 waited [0-9.]+ s in it"))) << d;
  // The launcher said the same in its failure summary.
  EXPECT_TRUE(std::regex_search(
      r.output, std::regex("cohort launch: diagnosis: rank 1 never entered allreduce #[0-9]+")))
      << r.output;
}

TEST_F(Diagnose, ARankStillStuckIsAskedForItsDumpBeforeTheLauncherStopsIt) {
  // Rank 1 is still in its 20 s step when rank 0 gives up, and is killed after a 1 s grace
  // period: only the launcher's SIGUSR2 gets its dump written.
  const auto r = run_command("env COHORT_TEST_STEP_DELAY_MS=1:20000 " + std::string(COHORT_BINARY) +
                             " launch --nproc-per-node 2 --grace-period 1 -- " + train("run"));
  ASSERT_EQ(r.code, 4) << r.output;
  EXPECT_NE(read_text(dir_ / "run" / "flight_recorder" / "rank_1.json").find("\"SIGUSR2\""),
            std::string::npos);
  EXPECT_TRUE(std::regex_search(
      r.output, std::regex("cohort launch: diagnosis: rank 1 never entered allreduce #[0-9]+ of "
                           "group 0 \\([^)]*\\); rank 0 waited [0-9.]+ s in it\\. Rank 1's last "
                           "completed collective before it was allreduce #[0-9]+\\.")))
      << r.output;
}

TEST_F(Diagnose, ARankSlowedPastTheTimeoutIsNamedOnTheMpiBackend) {
  if (!COHORT_USE_MPI) GTEST_SKIP() << "this build has no mpi backend";
  const auto r =
      run_command("env COHORT_TEST_STEP_DELAY_MS=1:6000 " +
                  cohort::test::mpirun_command(2, train("run") + " distributed.backend=mpi"));
  ASSERT_NE(r.code, 0) << r.output;
  ASSERT_TRUE(fs::exists(dir_ / "run" / "flight_recorder" / "rank_0.json")) << r.output;
  const std::string d = diagnose("run");
  // mpirun may kill rank 1 before it writes a dump: then the paragraph says so.
  EXPECT_TRUE(std::regex_search(
      d, std::regex("rank 1 never entered allreduce #[0-9]+ of group 0|Rank 1 wrote no dump")))
      << d;
  EXPECT_TRUE(std::regex_search(d, std::regex("rank 0 waited [0-9.]+ s in it"))) << d;
}

// Rank 1 skips the stop vote after step 3, so its next collective is a DDP bucket where rank 0's is
// the vote. The cpu backend's messages carry each operation's size; the mpi backend compares every
// rank's operation and size before each collective (MPI itself would corrupt memory). Both end
// at once with the two operations named, by the rank and by `cohort diagnose`.
TEST_F(Diagnose, ARankThatSkipsACollectiveIsNamedOnBothBackends) {
  const std::regex paragraph(
      "ranks disagree on collective #[0-9]+ of group 0: allreduce [0-9.]+ KB of float32 \\(ddp "
      "bucket 0\\) on rank 1, allreduce 4 bytes of int32 \\(stop vote\\) on rank 0");
  auto r = run_command("env COHORT_TEST_SKIP_COLLECTIVE=1:3 " + std::string(COHORT_BINARY) +
                       " launch --nproc-per-node 2 -- " + train("cpu"));
  ASSERT_EQ(r.code, 4) << r.output;
  EXPECT_TRUE(std::regex_search(r.output, std::regex("cohort launch: diagnosis: ranks disagree")))
      << r.output;
  EXPECT_TRUE(std::regex_search(diagnose("cpu"), paragraph)) << diagnose("cpu");
  if (!COHORT_USE_MPI) GTEST_SKIP() << "this build has no mpi backend";
  r = run_command("env COHORT_TEST_SKIP_COLLECTIVE=1:3 " +
                  cohort::test::mpirun_command(2, "-x COHORT_TEST_SKIP_COLLECTIVE " + train("mpi") +
                                                      " distributed.backend=mpi"));
  ASSERT_NE(r.code, 0) << r.output;
  EXPECT_TRUE(std::regex_search(
      r.output, std::regex("ranks disagree on collective #[0-9]+ of this mpi group: allreduce of "
                           "4 bytes of int32 on rank 0; allreduce of [0-9]+ bytes of float32 on "
                           "rank 1; every rank must issue the same collectives")))
      << r.output;
  // mpirun may stop rank 1 before it dumps; with both dumps the paragraph names both operations.
  if (fs::exists(dir_ / "mpi" / "flight_recorder" / "rank_1.json")) {
    EXPECT_TRUE(std::regex_search(diagnose("mpi"), paragraph)) << diagnose("mpi");
  }
}

// Ranks built with different models (dim 32 on rank 0, 48 on rank 1) disagree on the size of the
// first broadcast (the initial parameters).
TEST_F(Diagnose, MismatchedSizesAreNamedOnBothBackends) {
  const auto mixed = [&](const std::string& run) {
    return "sh -c 'if [ \"${RANK:-$OMPI_COMM_WORLD_RANK}\" = 1 ]; then d=48; else d=32; fi; exec " +
           train(run) + " model.dim=$d" + (run == "mpi" ? " distributed.backend=mpi" : "") + "'";
  };
  auto r =
      run_command(std::string(COHORT_BINARY) + " launch --nproc-per-node 2 -- " + mixed("cpu"));
  ASSERT_EQ(r.code, 4) << r.output;
  const std::regex paragraph(
      "ranks disagree on collective #0 of group 0: broadcast [0-9.]+ KB of float32 on rank 0, "
      "broadcast [0-9.]+ KB of float32 on rank 1");
  EXPECT_TRUE(std::regex_search(r.output, paragraph)) << r.output;
  if (!COHORT_USE_MPI) GTEST_SKIP() << "this build has no mpi backend";
  r = run_command(cohort::test::mpirun_command(2, mixed("mpi")));
  ASSERT_NE(r.code, 0) << r.output;
  EXPECT_TRUE(std::regex_search(
      r.output, std::regex("ranks disagree on collective #0 of this mpi group: broadcast of [0-9]+ "
                           "bytes of float32 on rank 0; broadcast of [0-9]+ bytes of float32 on "
                           "rank 1")))
      << r.output;
}

// Rank 1 stops itself (SIGSTOP) after step 3: rank 0 times out, the stopped rank can write no dump,
// and the diagnosis says it is the one the others waited for.
TEST_F(Diagnose, AStoppedRankIsNamedOnBothBackends) {
  const std::regex paragraph(
      "rank 1 wrote no dump \\(stopped, hung where it could not write one, or killed\\) while "
      "every rank that did waited in [a-z_]+ #[0-9]+ of group 0 \\([^)]*\\); rank 0 waited "
      "[0-9.]+ s in it");
  auto r = run_command("env COHORT_TEST_STOP_AT_STEP=1:3 " + std::string(COHORT_BINARY) +
                       " launch --nproc-per-node 2 --grace-period 1 -- " + train("cpu"));
  ASSERT_EQ(r.code, 4) << r.output;
  EXPECT_TRUE(std::regex_search(r.output, paragraph)) << r.output;
  if (!COHORT_USE_MPI) GTEST_SKIP() << "this build has no mpi backend";
  r = run_command("env COHORT_TEST_STOP_AT_STEP=1:3 " +
                  cohort::test::mpirun_command(2, "-x COHORT_TEST_STOP_AT_STEP " + train("mpi") +
                                                      " distributed.backend=mpi"));
  ASSERT_NE(r.code, 0) << r.output;
  EXPECT_TRUE(std::regex_search(diagnose("mpi"), paragraph)) << diagnose("mpi");
}

// MPI's start-up waits for every rank with no timeout of its own: a rank stopped before MPI_Init
// would leave the others there forever. They end after distributed.timeout_s (but not before a
// minute: a slow machine's MPI_Init alone takes seconds) with a sentence.
TEST_F(Diagnose, ARankStoppedBeforeMpiStartsEndsTheOthersAfterTheTimeout) {
  if (!COHORT_USE_MPI) GTEST_SKIP() << "this build has no mpi backend";
  const auto r = run_command(cohort::test::mpirun_command(
      2, "sh -c 'if [ \"$OMPI_COMM_WORLD_RANK\" = 1 ]; then kill -STOP $$; fi; exec " +
             train("mpi") + " distributed.backend=mpi'"));
  ASSERT_NE(r.code, 0) << r.output;
  EXPECT_TRUE(std::regex_search(
      r.output, std::regex("cohort: (MPI_Init|MPI rank 0's broadcast of the store's address) did "
                           "not complete within 60 s: a rank of this mpirun job never started, "
                           "stopped or died before it")))
      << r.output;
}

TEST_F(Diagnose, SigusrTwoAsksARunningRankWhereItIs) {
  const fs::path dump = dir_ / "run" / "flight_recorder" / "rank_0.json";
  const std::string cmd = "exec env COHORT_TEST_STEP_DELAY_MS=0:200 " + train("run") +
                          " train.steps=1000 >" + (dir_ / "out").string() + " 2>&1";
  const pid_t pid = fork();
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", cmd.c_str(), nullptr);
    _exit(127);
  }
  // Once it trains (its metrics appear), ask it.
  const auto deadline = std::chrono::steady_clock::now() + 120s;
  while (std::chrono::steady_clock::now() < deadline &&
         read_text(dir_ / "run" / "metrics.jsonl").empty())
    std::this_thread::sleep_for(50ms);
  bool asked = false;
  while (std::chrono::steady_clock::now() < deadline && !fs::exists(dump)) {
    asked = kill(pid, SIGUSR2) == 0 || asked;
    std::this_thread::sleep_for(200ms);
  }
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  ASSERT_TRUE(asked);
  ASSERT_TRUE(fs::exists(dump)) << read_text(dir_ / "out");
  EXPECT_NE(read_text(dump).find("\"reason\": \"SIGUSR2\""), std::string::npos) << read_text(dump);
}

// A rank slowed by 100 ms a step holds the other back: it is named while the job runs (stderr and
// metrics.jsonl), the other is not, and every rank's step, data and collective-wait times reach
// metrics.jsonl and TensorBoard.
TEST_F(Diagnose, AStragglerIsNamedWhileTheJobRuns) {
  const auto r = run_command(
      "env COHORT_TEST_STEP_DELAY_MS=1:100 " + std::string(COHORT_BINARY) +
      " launch --nproc-per-node 2 -- " + std::string(COHORT_BINARY) +
      " train " COHORT_SOURCE_DIR "/configs/tiny_gpt.yaml " + kTinyGpt +
      " train.steps=20 train.log_every=5 diagnostics.straggler_steps=10 distributed.timeout_s=60 "
      "logging.dir=" +
      (dir_ / "run").string());
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(std::regex_search(
      r.output, std::regex("cohort: straggler at step 10: rank 1 on node 0 \\([^)]+\\): "
                           "[0-9.]+x the median step time of the other ranks over the last 10 "
                           "steps \\(its own time per step, without waiting for them: [0-9.]+ ms "
                           "against [0-9.]+ ms\\); its data wait is [0-9]+%")))
      << r.output;
  EXPECT_EQ(r.output.find("straggler at step 10: rank 0"), std::string::npos) << r.output;
  const std::string metrics = read_text(dir_ / "run" / "metrics.jsonl");
  EXPECT_NE(metrics.find("\"event\":\"straggler\""), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("\"rank_collective_wait_ms\":["), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("\"rank_data_ms\":["), std::string::npos) << metrics;
  std::string events;
  for (const auto& f : fs::directory_iterator(dir_ / "run"))
    if (f.path().filename().string().rfind("events.out.tfevents", 0) == 0)
      events += read_text(f.path());
  for (const char* tag :
       {"collective_wait_ms/rank_0", "data_wait_ms/rank_1", "step_time_ms/rank_1"})
    EXPECT_NE(events.find(tag), std::string::npos) << tag;
}

}  // namespace
