// `cohort launch` on one node, as users drive it: exit codes and the failure summary, signals,
// restarts, two jobs at once, per-rank logs, whole output lines, the workers' environment, and bad
// input. After every run, no process of the job may be left (checked in /proc by the job's run id).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>
#include <thread>

#include "cohort/config.h"
#include "collectives/store/tcp_store.h"
#include "core/util/error.h"
#include "launcher/cpu_binding.h"
#include "launcher/launch.h"
#include "test_util.h"

namespace {

namespace fs = std::filesystem;
using cohort::test::kTinyGpt;
using cohort::test::read_text;
using namespace std::chrono_literals;

// Processes whose environment carries COHORT_RUN_ID=id.
std::vector<std::string> processes_of(const std::string& id) {
  std::vector<std::string> found;
  const std::string needle = "COHORT_RUN_ID=" + id;
  for (const auto& e : fs::directory_iterator("/proc")) {
    const std::string name = e.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream f(e.path() / "environ", std::ios::binary);
    std::string env((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    if (env.find(needle + '\0') != std::string::npos)
      found.push_back(name + " " + read_text(e.path() / "cmdline"));
  }
  return found;
}

struct Outcome {
  int code = -1;  // -1: still running when the limit passed (then killed)
  std::string out, err;
};

class Launch : public cohort::test::TempDirTest {
 protected:
  // Starts `cohort launch ARGS` (a shell fragment) with its own run id, inside network namespace
  // `netns` when one is given; returns the pid.
  pid_t start(const std::string& args, const std::string& tag = "a",
              const std::string& netns = "") {
    const std::string cmd = "exec " + (netns.empty() ? "" : "ip netns exec " + netns + " ") +
                            std::string(COHORT_BINARY) + " launch --run-id " + id(tag) + " " +
                            args + " >" + (dir_ / (tag + ".out")).string() + " 2>" +
                            (dir_ / (tag + ".err")).string();
    const pid_t pid = fork();
    if (pid == 0) {
      execl("/bin/sh", "sh", "-c", cmd.c_str(), nullptr);
      _exit(127);
    }
    pids_.push_back(pid);
    return pid;
  }
  // Waits for the launcher; with `check`, also that nothing of its job is left (other agents of
  // the same job must have finished by then).
  Outcome finish(pid_t pid, const std::string& tag = "a", std::chrono::seconds limit = 120s,
                 bool check = true) {
    Outcome r;
    const auto end = std::chrono::steady_clock::now() + limit;
    int status = 0;
    while (std::chrono::steady_clock::now() < end) {
      if (waitpid(pid, &status, WNOHANG) == pid) {
        r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        break;
      }
      std::this_thread::sleep_for(10ms);
    }
    if (r.code == -1) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
    std::erase(pids_, pid);
    r.out = read_text(dir_ / (tag + ".out"));
    r.err = read_text(dir_ / (tag + ".err"));
    // Nothing of the job may outlive the launcher.
    if (check) {
      EXPECT_EQ(processes_of(id(tag)), std::vector<std::string>{}) << "left behind by " << tag;
    }
    return r;
  }
  Outcome run(const std::string& args, const std::string& tag = "a") {
    return finish(start(args, tag), tag);
  }
  std::string id(const std::string& tag) const {
    return "launchtest" + std::to_string(getpid()) + tag.substr(0, tag.find('_'));
  }
  void TearDown() override {
    for (pid_t p : pids_) {
      kill(p, SIGKILL);
      waitpid(p, nullptr, 0);
    }
    TempDirTest::TearDown();
  }
  std::vector<pid_t> pids_;
};

TEST_F(Launch, SuccessRunsEveryRankWithTheContractEnvironment) {
  Outcome r =
      run("--nproc-per-node 3 -- sh -c 'echo rank=$COHORT_RANK local=$COHORT_LOCAL_RANK "
          "world=$COHORT_WORLD_SIZE lw=$COHORT_LOCAL_WORLD_SIZE restart=$COHORT_RESTART_COUNT "
          "torch=$RANK/$WORLD_SIZE/$MASTER_ADDR store=$COHORT_STORE'");
  EXPECT_EQ(r.code, 0) << r.err;
  for (int k = 0; k < 3; ++k) {
    const std::string rank = std::to_string(k);
    EXPECT_NE(r.out.find("[0/" + rank + "] rank=" + rank + " local=" + rank +
                         " world=3 lw=3 restart=0 torch=" + rank + "/3/127.0.0.1 store=127.0.0.1:"),
              std::string::npos)
        << r.out;
  }
}

// --cpu-bind cores (the default) gives each local rank its own share of the launcher's CPUs;
// none leaves every rank all of them. The trainer's banner says where rank 0 runs, and its
// thread pool is as large as its share.
TEST_F(Launch, EachLocalRankRunsOnItsOwnShareOfTheCores) {
  const std::vector<int> allowed = cohort::launcher::allowed_cpus();
  if (allowed.size() < 2) GTEST_SKIP() << "needs 2 CPUs to share out, this process may use 1";
  const std::string show =
      "-- sh -c 'echo rank=$COHORT_RANK bind=$COHORT_CPU_BIND cpus=$(grep Cpus_allowed_list "
      "/proc/self/status | cut -f2)'";
  auto cpus_of = [](const std::string& out, int rank) {
    std::smatch m;
    const std::regex re("rank=" + std::to_string(rank) + " bind=(\\w*) cpus=([0-9,-]+)");
    EXPECT_TRUE(std::regex_search(out, m, re)) << out;
    return m.size() > 2 ? cohort::launcher::parse_cpulist(m[2].str(), "output")
                        : std::vector<int>{};
  };
  Outcome r = run("--nproc-per-node 2 " + show);
  ASSERT_EQ(r.code, 0) << r.err;
  const std::vector<int> a = cpus_of(r.out, 0), b = cpus_of(r.out, 1);
  ASSERT_FALSE(a.empty());
  ASSERT_FALSE(b.empty());
  EXPECT_NE(r.out.find("bind=cores"), std::string::npos) << r.out;
  for (int c : a) {
    EXPECT_NE(std::find(allowed.begin(), allowed.end(), c), allowed.end()) << c;
    EXPECT_EQ(std::find(b.begin(), b.end(), c), b.end()) << "ranks 0 and 1 share CPU " << c;
  }
  r = run("--nproc-per-node 2 --cpu-bind none " + show, "none");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(cpus_of(r.out, 0), allowed);
  EXPECT_EQ(cpus_of(r.out, 1), allowed);
  r = run("--nproc-per-node 2 --cpu-bind socket " + show, "bad");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("--cpu-bind socket is not one of cores, numa or none"), std::string::npos)
      << r.err;

  r = run("--nproc-per-node 2 -- " + std::string(COHORT_BINARY) +
              " train " COHORT_SOURCE_DIR "/configs/tiny_gpt.yaml " + kTinyGpt +
              " train.steps=2 logging.dir=" + (dir_ / "run").string(),
          "train");
  ASSERT_EQ(r.code, 0) << r.err << r.out;
  const std::string banner = "cohort: rank 0 on cpus " + cohort::launcher::cpulist_text(a) +
                             " (bound by cohort launch --cpu-bind cores), " +
                             std::to_string(a.size()) + (a.size() == 1 ? " thread" : " threads");
  EXPECT_NE(r.out.find(banner), std::string::npos) << banner << "\n" << r.out;
}

// Under mpirun, its binding is kept: the trainer reports it and sizes its pool to it.
TEST_F(Launch, MpirunsBindingIsKeptAndReported) {
  if (cohort::launcher::allowed_cpus().size() < 2) GTEST_SKIP() << "needs 2 CPUs to bind 2 ranks";
  if (!COHORT_USE_MPI) GTEST_SKIP() << "this build has no mpi backend";
  const auto r = cohort::test::run_command(
      "env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun --bind-to core -np 2 " +
      std::string(COHORT_BINARY) + " train " COHORT_SOURCE_DIR "/configs/tiny_gpt.yaml " +
      kTinyGpt + " train.steps=2 logging.dir=" + (dir_ / "run").string());
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(std::regex_search(
      r.output, std::regex("cohort: rank 0 on cpus [0-9]+ \\(bound by mpirun\\), 1 thread")))
      << r.output;
}

// A worker inherits its three streams and nothing else of the launcher (no store socket, no
// pipe), holds the worker part of the job's token, and a one-node job's store listens on loopback
// only (its listener in /proc/net/tcp: 0100007F is 127.0.0.1).
TEST_F(Launch, WorkersInheritOnlyTheirStreamsAndAWorkersTokenAndTheStoreIsLocal) {
  Outcome r =
      run("--nproc-per-node 1 -- sh -c 'echo fds=$(ls /proc/self/fd | tr \"\\n\" \" \"); "
          "echo token=${COHORT_TOKEN%%:*}; port=$(printf %04X ${COHORT_STORE##*:}); "
          "echo listen=$(grep \":$port 00000000:0000 0A\" /proc/net/tcp | cut -c7-19)'");
  EXPECT_EQ(r.code, 0) << r.err;
  // ls itself holds 3, the directory it lists.
  EXPECT_NE(r.out.find("fds=0 1 2 3\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("token=worker\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("listen=0100007F:"), std::string::npos) << r.out;
}

// The launcher's control keys answer to its agents only: a worker that posts a failure (a bug, or
// an attacker holding a worker's token) is refused and the job goes on; a process without the
// token, or with another job's, gets nothing at all (exit 5).
TEST_F(Launch, NeitherAWorkerNorAStrangerCanStopTheJobThroughTheStore) {
  const std::string cohort = COHORT_BINARY;
  Outcome r = run("--nproc-per-node 2 -- sh -c '" + cohort +
                  " store set launch/attempt0/failed pwned; echo set=$?; " + cohort +
                  " store set attempt0/k$COHORT_RANK v$COHORT_RANK && " + cohort +
                  " store get attempt0/k$COHORT_RANK; env -u COHORT_TOKEN " + cohort +
                  " store get attempt0/k0; echo none=$?; COHORT_TOKEN=$(printf %064d 0) " + cohort +
                  " store get attempt0/k0; echo wrong=$?'");
  EXPECT_EQ(r.code, 0) << r.err;
  for (const char* rank : {"0", "1"}) {
    const std::string p = std::string("[0/") + rank + "] ";
    EXPECT_NE(r.out.find(p + "set=4\n"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find(p + "v" + rank + "\n"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find(p + "none=5\n"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find(p + "wrong=5\n"), std::string::npos) << r.out;
  }
  EXPECT_NE(r.err.find("belongs to the launcher's agents"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("refused this process's worker token"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("pwned"), std::string::npos) << r.err;
}

// A worker killed between creating a shared-memory segment and unlinking it (as the cpu
// backend's rings are, while a group forms) cannot clean up; its launcher does. The worker here
// names a segment as Cohort does (its pid and start time) and dies by SIGKILL.
TEST_F(Launch, AKilledWorkersSharedMemoryIsRemoved) {
  const std::string tag = "t" + std::to_string(getpid());
  Outcome r =
      run("--nproc-per-node 2 -- sh -c 'start=$(cut -d\" \" -f22 /proc/$$/stat); "
          "touch /dev/shm/cohort-$$_${start}-" +
          tag + "-$COHORT_RANK; echo made; kill -KILL $$'");
  EXPECT_EQ(r.code, 128 + SIGKILL) << r.err;
  EXPECT_NE(r.out.find("made"), std::string::npos) << r.out;
  for (const auto& e : fs::directory_iterator("/dev/shm"))
    EXPECT_EQ(e.path().filename().string().find(tag), std::string::npos) << e.path();
}

// A thousand waits abandoned by their clients (a worker's token: a buggy worker) leave the
// launcher's descriptors where they were, and the job can still restart through its store.
TEST_F(Launch, AThousandAbandonedWaitsLeaveTheLauncherFlatAndARestartStillWorks) {
  const fs::path flag = dir_ / "go";
  const pid_t pid = start(
      "--max-restarts 1 --nproc-per-node 2 -- sh -c 'if [ $COHORT_RESTART_COUNT = 1 ]; then "
      "echo back; exit 0; fi; [ $COHORT_RANK = 0 ] && echo store=$COHORT_STORE "
      "token=$COHORT_TOKEN; while [ ! -e " +
      flag.string() + " ]; do sleep 0.05; done; exit 1'");
  std::smatch m;
  std::string out;
  const auto end = std::chrono::steady_clock::now() + 60s;
  const std::regex line("store=127\\.0\\.0\\.1:([0-9]+) token=(worker:[0-9a-f]+)");
  while (!std::regex_search(out = read_text(dir_ / "a.out"), m, line) &&
         std::chrono::steady_clock::now() < end)
    std::this_thread::sleep_for(20ms);
  ASSERT_EQ(m.size(), 3u) << out;
  const auto fds = [&] {
    int n = 0;
    for ([[maybe_unused]] const auto& e :
         fs::directory_iterator("/proc/" + std::to_string(pid) + "/fd"))
      ++n;
    return n;
  };
  const int before = fds();
  cohort::collectives::TcpStoreOptions o;
  o.port = static_cast<uint16_t>(std::stoi(m[1].str()));
  o.token = cohort::collectives::JobToken::parse(m[2].str(), "the worker's COHORT_TOKEN");
  for (int i = 0; i < 1000; ++i) {
    cohort::collectives::TcpStore client(o);
    // The client gives up after 1 ms and closes its connection with the wait still parked.
    EXPECT_THROW(client.wait({"attempt0/never/" + std::to_string(i)}, 1ms), cohort::TimeoutError);
  }
  int after = fds();
  for (int i = 0; i < 3000 && after > before; ++i) {
    std::this_thread::sleep_for(20ms);
    after = fds();
  }
  EXPECT_LE(after, before) << "the launcher holds " << after << " descriptors, " << before
                           << " before the abandoned waits";
  std::ofstream(flag) << "1";
  Outcome r = finish(pid);
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("[0/0] back"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("[0/1] back"), std::string::npos) << r.out;
}

TEST_F(Launch, AFailedWorkerIsNamedWithItsLastLinesAndItsCodeIsReturned) {
  Outcome r =
      run("--nproc-per-node 3 -- sh -c 'echo started $COHORT_RANK; "
          "if [ $COHORT_RANK = 1 ]; then echo about to fail >&2; exit 3; fi; sleep 300'");
  EXPECT_EQ(r.code, 3) << r.err;
  EXPECT_NE(r.err.find("cohort launch: rank 1 (node 0, pid "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(") exited with code 3"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("  [0/1] about to fail"), std::string::npos) << r.err;
}

TEST_F(Launch, SegfaultsAndKillsAreNamedBySignal) {
  Outcome seg =
      run("--nproc-per-node 2 -- sh -c '[ $COHORT_RANK = 0 ] && kill -SEGV $$; sleep 300'", "seg");
  EXPECT_EQ(seg.code, 128 + SIGSEGV);
  EXPECT_NE(seg.err.find("rank 0 (node 0, pid "), std::string::npos) << seg.err;
  EXPECT_NE(seg.err.find("was killed by SIGSEGV (11)"), std::string::npos) << seg.err;
  Outcome killed =
      run("--nproc-per-node 2 -- sh -c '[ $COHORT_RANK = 1 ] && kill -KILL $$; sleep 300'", "kill");
  EXPECT_EQ(killed.code, 128 + SIGKILL);
  EXPECT_NE(killed.err.find("rank 1 (node 0, pid "), std::string::npos) << killed.err;
  EXPECT_NE(killed.err.find("was killed by SIGKILL (9)"), std::string::npos) << killed.err;
}

TEST_F(Launch, SigintStopsWorkersThatIgnoreItAfterTheGracePeriod) {
  // The workers ignore SIGINT, so only SIGKILL at the end of the grace period stops them.
  const pid_t pid = start(
      "--nproc-per-node 2 --grace-period 1 -- sh -c "
      "'trap \"\" INT; echo ready $COHORT_RANK; while true; do sleep 1; done'");
  const auto end = std::chrono::steady_clock::now() + 60s;
  while (read_text(dir_ / "a.out").find("ready 1") == std::string::npos ||
         read_text(dir_ / "a.out").find("ready 0") == std::string::npos) {
    ASSERT_LT(std::chrono::steady_clock::now(), end) << "workers never started";
    std::this_thread::sleep_for(20ms);
  }
  kill(pid, SIGINT);
  Outcome r = finish(pid);
  EXPECT_EQ(r.code, 128 + SIGINT) << r.err;
  EXPECT_NE(r.err.find("stopped by SIGINT"), std::string::npos) << r.err;
}

TEST_F(Launch, RestartsRunAgainWithTheRestartCountUntilTheyRunOut) {
  Outcome ok =
      run("--nproc-per-node 2 --max-restarts 2 -- sh -c "
          "'echo attempt $COHORT_RESTART_COUNT; [ $COHORT_RESTART_COUNT -ge 1 ]'",
          "ok");
  EXPECT_EQ(ok.code, 0) << ok.err;
  EXPECT_NE(ok.err.find("restarting all 2 workers (restart 1 of 2)"), std::string::npos) << ok.err;
  EXPECT_NE(ok.out.find("[0/1] attempt 1"), std::string::npos) << ok.out;

  Outcome bad =
      run("--nproc-per-node 1 --max-restarts 2 -- sh -c 'echo attempt $COHORT_RESTART_COUNT; "
          "exit 5'",
          "bad");
  EXPECT_EQ(bad.code, 5) << bad.err;
  EXPECT_NE(bad.out.find("[0/0] attempt 2"), std::string::npos) << bad.out;
  EXPECT_EQ(bad.out.find("attempt 3"), std::string::npos) << bad.out;
  EXPECT_NE(bad.err.find("exited with code 5; no restarts left"), std::string::npos) << bad.err;
}

// Each job hosts its store on a port the OS picks, so jobs on one machine never meet.
TEST_F(Launch, TwoJobsAtOnceOnOneMachine) {
  const std::string job = "--nproc-per-node 2 -- " + std::string(COHORT_BINARY) +
                          " bench collectives -b 4K -e 1M -f 16 --iters 20";
  const pid_t a = start(job, "a"), b = start(job, "b");
  Outcome ra = finish(a, "a"), rb = finish(b, "b");
  EXPECT_EQ(ra.code, 0) << ra.err;
  EXPECT_EQ(rb.code, 0) << rb.err;
  EXPECT_NE(ra.out.find("[0/0] # cohort bench collectives: allreduce, backend cpu, transport auto, "
                        "2 ranks"),
            std::string::npos)
      << ra.out;
}

TEST_F(Launch, OutputLinesAreNeverMixedAndLogDirKeepsEachRank) {
  // Three ranks each write 300 long lines as fast as they can.
  const std::string writer =
      "-- sh -c 'for i in $(seq 300); do printf \"%s\\n\" "
      "$(printf \"%0800d\" $COHORT_RANK); done'";
  Outcome r = run("--nproc-per-node 3 " + writer);
  EXPECT_EQ(r.code, 0) << r.err;
  std::istringstream lines(r.out);
  std::string line;
  int n = 0;
  const std::regex whole(R"(\[0/([0-2])\] 0{799}([0-2]))");
  while (std::getline(lines, line)) {
    std::smatch m;
    ASSERT_TRUE(std::regex_match(line, m, whole)) << "mixed line: " << line.substr(0, 120);
    EXPECT_EQ(m[1], m[2]);
    ++n;
  }
  EXPECT_EQ(n, 900);

  const fs::path logs = dir_ / "logs";
  Outcome quiet = run("--nproc-per-node 2 --log-dir " + logs.string() + " " + writer, "quiet");
  EXPECT_EQ(quiet.code, 0) << quiet.err;
  EXPECT_EQ(quiet.out, "");
  const std::string rank1 = read_text(logs / "rank_1.log");
  EXPECT_EQ(std::count(rank1.begin(), rank1.end(), '\n'), 300);
  EXPECT_EQ(rank1.substr(0, 801), std::string(799, '0') + "1\n");
}

TEST_F(Launch, RanksFilterKeepsOtherRanksOffTheConsoleButInTheLogs) {
  const fs::path logs = dir_ / "logs";
  Outcome r = run("--nproc-per-node 3 --ranks-filter 0,2 --log-dir " + logs.string() +
                  " --tee -- sh -c 'echo hello from $COHORT_RANK'");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("[0/0] hello from 0"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("[0/2] hello from 2"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("hello from 1"), std::string::npos) << r.out;
  EXPECT_EQ(read_text(logs / "rank_1.log"), "hello from 1\n");
  Outcome bad = run("--ranks-filter x -- true", "bad");
  EXPECT_EQ(bad.code, 2);
  EXPECT_NE(bad.err.find("--ranks-filter 'x'"), std::string::npos) << bad.err;
}

TEST_F(Launch, RedirectsAndTeeRouteEachStreamOfEachLocalRank) {
  const std::string both = " -- sh -c 'echo out $COHORT_RANK; echo err $COHORT_RANK >&2'";
  // Rank 0's stdout only to its file, rank 1's stderr to its file and the console; the rest as
  // without options.
  const fs::path logs = dir_ / "logs";
  Outcome r =
      run("--nproc-per-node 3 --log-dir " + logs.string() + " --redirects 0:1 --tee=1:2" + both,
          "routes");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out.find("out 0"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("[0/0] err 0"), std::string::npos) << r.err;
  EXPECT_NE(r.out.find("[0/1] out 1"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("[0/1] err 1"), std::string::npos) << r.err;
  EXPECT_NE(r.out.find("[0/2] out 2"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("[0/2] err 2"), std::string::npos) << r.err;
  EXPECT_EQ(read_text(logs / "rank_0.log"), "out 0\n");
  EXPECT_EQ(read_text(logs / "rank_1.log"), "err 1\n");
  EXPECT_FALSE(fs::exists(logs / "rank_2.log"));

  // Without --log-dir the files go to a new directory that the launcher names.
  Outcome tmp = run("--nproc-per-node 2 --redirects 3" + both, "tmpdir");
  EXPECT_EQ(tmp.code, 0) << tmp.err;
  EXPECT_EQ(tmp.out, "");
  std::smatch m;
  ASSERT_TRUE(std::regex_search(tmp.err, m, std::regex("worker logs in (\\S+)"))) << tmp.err;
  const fs::path made = m[1].str();
  const std::string rank1 = read_text(made / "rank_1.log");
  fs::remove_all(made);
  EXPECT_NE(rank1.find("out 1\n"), std::string::npos) << rank1;
  EXPECT_NE(rank1.find("err 1\n"), std::string::npos) << rank1;

  Outcome bad = run("--nproc-per-node 2 --redirects 0:1,2:3 -- true", "badspec");
  EXPECT_EQ(bad.code, 2);
  EXPECT_NE(bad.err.find("--redirects '0:1,2:3' names local rank 2 but --nproc-per-node is 2"),
            std::string::npos)
      << bad.err;
}

TEST_F(Launch, BadInputIsOneClearSentenceWithExitCode2) {
  Outcome unknown = run("--no-such-option -- true", "unknown");
  EXPECT_EQ(unknown.code, 2);
  Outcome zero = run("--nproc-per-node 0 -- true", "zero");
  EXPECT_EQ(zero.code, 2);
  EXPECT_NE(zero.err.find("--nproc-per-node must be at least 1, got 0"), std::string::npos)
      << zero.err;
  Outcome missing = run("--nproc-per-node 2 -- /no/such/program", "missing");
  EXPECT_EQ(missing.code, 2);
  EXPECT_NE(missing.err.find("cannot run '/no/such/program': No such file or directory"),
            std::string::npos)
      << missing.err;
  Outcome nothing = run("--nproc-per-node 2", "nothing");
  EXPECT_EQ(nothing.code, 2);
  EXPECT_NE(nothing.err.find("no program to launch"), std::string::npos) << nothing.err;
}

TEST_F(Launch, SlurmSubmitDryRunPrintsOneSrunTaskPerRank) {
  const std::string config = std::string(COHORT_SOURCE_DIR) + "/configs/fashion_mnist_mlp.yaml";
  const std::string cmd = std::string(COHORT_BINARY) + " slurm submit " + config +
                          " --nodes 2 --ntasks-per-node 4 --partition gpu --time 1:00:00 "
                          "--gpus-per-node 4 --dry-run \"optimizer.lr=0.05\" >" +
                          (dir_ / "s.out").string() + " 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << read_text(dir_ / "s.out");
  const std::string script = read_text(dir_ / "s.out");
  for (const char* line :
       {"#!/bin/bash\n", "#SBATCH --nodes=2\n", "#SBATCH --ntasks-per-node=4\n",
        "#SBATCH --partition=gpu\n", "#SBATCH --time=1:00:00\n", "#SBATCH --gpus-per-node=4\n",
        "srun --label --kill-on-bad-exit=1 ", "#SBATCH --signal=USR1@120\n", "#SBATCH --requeue\n",
        "if [ \"$rc\" -eq 138 ]; then scontrol requeue \"$SLURM_JOB_ID\"; fi\n"})
    EXPECT_NE(script.find(line), std::string::npos) << line << " missing from:\n" << script;
  EXPECT_NE(script.find(" train '" + config + "' 'optimizer.lr=0.05'\n"), std::string::npos)
      << script;
  // A bad config fails here, naming the key, not later in the queue.
  const std::string bad = std::string(COHORT_BINARY) + " slurm submit " + config +
                          " --dry-run optimizer.lr=fast >" + (dir_ / "b.out").string() + " 2>&1";
  EXPECT_EQ(WEXITSTATUS(std::system(bad.c_str())), 2);
  EXPECT_NE(read_text(dir_ / "b.out").find("optimizer.lr"), std::string::npos)
      << read_text(dir_ / "b.out");
}

// An unreachable rendezvous is a clear error once --rdzv-timeout has passed, not a hang.
TEST_F(Launch, AnUnreachableRendezvousIsAClearError) {
  Outcome r = run("--nnodes 2 --node-rank 1 --rdzv-endpoint 127.0.0.1:1 --rdzv-timeout 2 -- true");
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_NE(r.err.find("node 1 could not reach the rendezvous 127.0.0.1:1 within 2 s"),
            std::string::npos)
      << r.err;
  // Node 0 up, node 1 never coming: node 0 says how many arrived.
  const std::string port = std::to_string(cohort::launcher::free_port());
  r = run(
      "--nnodes 2 --node-rank 0 --rdzv-endpoint 127.0.0.1:" + port + " --rdzv-timeout 2 -- true",
      "alone");
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_NE(r.err.find("the rendezvous on node 0: only 1 of the 2 nodes needed arrived within 2 s"),
            std::string::npos)
      << r.err;
  Outcome no_endpoint = run("--nnodes 2 --node-rank 0 -- true", "noep");
  EXPECT_EQ(no_endpoint.code, 2);
  EXPECT_NE(no_endpoint.err.find("--nnodes 2 needs --rdzv-endpoint"), std::string::npos)
      << no_endpoint.err;
}

// `cohort bench rendezvous`: simulated agents through the real protocol and store. Each agent's
// store traffic does not grow with the number of agents: the same operations per agent to meet
// (the host's share of the closing spread over all), and at most the launcher's cadence while
// supervising (a beat and a look at one neighbour a second, a look for failures four times).
TEST_F(Launch, RendezvousTrafficPerAgentDoesNotGrowWithTheAgents) {
  std::map<int, std::map<std::string, std::vector<double>>> phases;
  for (int n : {8, 128}) {
    const auto r =
        cohort::test::run_command(std::string(COHORT_BINARY) + " bench rendezvous --agents " +
                                  std::to_string(n) + " --beat-seconds 2");
    ASSERT_EQ(r.code, 0) << r.output;
    std::istringstream lines(r.output);
    for (std::string line; std::getline(lines, line);) {
      std::istringstream f(line);
      std::string name;
      double seconds, ops, per_agent, per_second;
      if (f >> name >> seconds >> ops >> per_agent >> per_second)
        phases[n][name] = {seconds, ops, per_agent};
    }
    for (const char* phase : {"connect", "rendezvous", "heartbeats", "failure", "leave"})
      ASSERT_TRUE(phases[n].count(phase)) << phase << "\n" << r.output;
    // Meeting: 8 operations per agent, and the host's 3 per agent once.
    EXPECT_LE(phases[n]["rendezvous"][2], 8 + 3 + 1.0) << r.output;
    // Supervising: at most 2 + 4 a second, whatever the number of agents.
    EXPECT_LE(phases[n]["heartbeats"][2] / phases[n]["heartbeats"][0], 6.5) << r.output;
    EXPECT_NE(r.output.find("failure broadcast: the last agent saw it"), std::string::npos);
  }
  EXPECT_LE(phases[128]["rendezvous"][2], phases[8]["rendezvous"][2] + 0.5);
}

// Three nodes (network namespaces), one agent each with two workers: global ranks, and the job's
// collectives across nodes.
class MultiNodeLaunch : public Launch {
 protected:
  void SetUp() override {
    Launch::SetUp();
    cluster_ = std::make_unique<cohort::test::NetnsCluster>("chl", 3);
    if (!cluster_->unavailable.empty()) GTEST_SKIP() << cluster_->unavailable;
    ASSERT_EQ(cluster_->error, "");
  }
  void TearDown() override {
    Launch::TearDown();
    cluster_.reset();
  }
  // Starts node k's agent; tags share the job's run id ("job_0", "job_1", ...).
  pid_t start_node(int k, const std::string& args) {
    // Port 29400 inside namespaces of our own: nothing else can hold it.
    return start("--nnodes 3 --node-rank " + std::to_string(k) + " --rdzv-endpoint " +
                     cluster_->address(0) + ":29400 --rdzv-timeout 60 " + args,
                 "job_" + std::to_string(k), cluster_->node(k));
  }
  std::unique_ptr<cohort::test::NetnsCluster> cluster_;
};

TEST_F(MultiNodeLaunch, ThreeAgentsRunOneJob) {
  const std::string args = "--nproc-per-node 2 -- " + std::string(COHORT_BINARY) +
                           " bench collectives -b 4K -e 1M -f 16 --iters 5";
  std::vector<pid_t> agents;
  for (int k = 0; k < 3; ++k) agents.push_back(start_node(k, args));
  for (int k = 0; k < 3; ++k) {
    Outcome r = finish(agents[k], "job_" + std::to_string(k), 120s, k == 2);
    EXPECT_EQ(r.code, 0) << "node " << k << ":\n" << r.err;
    if (k == 0) {
      EXPECT_NE(r.out.find("[0/0] # cohort bench collectives: allreduce, backend cpu, transport "
                           "auto, 6 ranks"),
                std::string::npos)
          << r.out;
    }
  }
}

// The agent of node 2 is killed mid-run: its workers die with it, and every other agent stops its
// workers and exits non-zero; nothing of the job is left anywhere.
TEST_F(MultiNodeLaunch, AnAgentKilledMidRunEndsTheJobEverywhere) {
  const std::string args = "--nproc-per-node 1 -- " + std::string(COHORT_BINARY) +
                           " bench collectives -b 1M -e 1M --iters 1000000 --timeout 120";
  std::vector<pid_t> agents;
  for (int k = 0; k < 3; ++k) agents.push_back(start_node(k, args));
  const auto end = std::chrono::steady_clock::now() + 120s;
  while (read_text(dir_ / "job_0.out").find("errors") == std::string::npos) {
    ASSERT_LT(std::chrono::steady_clock::now(), end) << "the job never started";
    std::this_thread::sleep_for(20ms);
  }
  kill(agents[2], SIGKILL);
  Outcome killed = finish(agents[2], "job_2", 120s, false);
  EXPECT_EQ(killed.code, 128 + SIGKILL);
  for (int k = 0; k < 2; ++k) {
    // Well within the 120 s collective timeout; the last one checks that nothing is left.
    Outcome r = finish(agents[k], "job_" + std::to_string(k), 100s, k == 1);
    EXPECT_NE(r.code, 0) << "node " << k;
    EXPECT_NE(r.code, -1) << "node " << k << " did not end:\n" << r.err;
    EXPECT_NE(r.err.find("cohort launch: "), std::string::npos) << r.err;
  }
}

// An elastic job (--nnodes 2:3) of `cohort train` on three network-namespace nodes. Node 2 dies
// mid-run (every process in its namespace SIGKILLed): nodes 0 and 1 meet again and go on from the
// newest checkpoint at world size 2, each rank's batch raised so that the global batch stays 24.
// Node 2 then comes back and is admitted at the next checkpoint, and the three finish the run.
TEST_F(MultiNodeLaunch, AnElasticJobLosesANodeGoesOnAndAdmitsItAgain) {
  const std::string run = (dir_ / "run").string();
  // Rank 0 sleeps 20 ms a step and the others keep its pace (lock step): the run lasts long enough
  // for the drill without needing the CPU of a machine that may be busy with other tests.
  const std::string args =
      "--nnodes 2:3 --rdzv-last-call 2 --heartbeat-timeout 20 --max-restarts 2 "
      "--nproc-per-node 1 -- env COHORT_TEST_STEP_DELAY_MS=0:20 " +
      std::string(COHORT_BINARY) + " train " COHORT_SOURCE_DIR "/configs/tiny_gpt.yaml " +
      kTinyGpt +
      " train.steps=600 train.log_every=10 eval.every_steps=0 checkpoint.every_steps=20 "
      "distributed.timeout_s=30 diagnostics.straggler_factor=0 logging.tensorboard=false "
      "logging.dir=" +
      run;
  const auto elastic = [&](int k, const std::string& tag) {
    return start("--node-rank " + std::to_string(k) + " --rdzv-endpoint " + cluster_->address(0) +
                     ":29400 --rdzv-timeout 60 " + args,
                 tag, cluster_->node(k));
  };
  // Waits until `file` holds `text`; false after 120 s.
  const auto until = [&](const std::string& file, const std::string& text) {
    const auto end = std::chrono::steady_clock::now() + 120s;
    while (read_text(dir_ / file).find(text) == std::string::npos) {
      if (std::chrono::steady_clock::now() > end) return false;
      std::this_thread::sleep_for(50ms);
    }
    return true;
  };
  std::vector<pid_t> agents;
  for (int k = 0; k < 3; ++k) agents.push_back(elastic(k, "job_" + std::to_string(k)));
  ASSERT_TRUE(until("job_0.err", "round 0: node 0 of 3, ranks 0-0 of 3"))
      << read_text(dir_ / "job_0.err");
  ASSERT_TRUE(until("run/metrics.jsonl", "\"step\":40,")) << read_text(dir_ / "job_0.out");
  // Node 2 dies: everything in its namespace.
  ASSERT_EQ(std::system(("ip netns pids " + cluster_->node(2) + " | xargs -r kill -9").c_str()), 0);
  Outcome dead = finish(agents[2], "job_2", 60s, false);
  EXPECT_EQ(dead.code, 128 + SIGKILL);
  ASSERT_TRUE(until("job_0.err", "round 1: node 0 of 2, ranks 0-0 of 2"))
      << read_text(dir_ / "job_0.err");
  ASSERT_TRUE(until("job_0.out", "per rank keeps the global batch of 24"))
      << read_text(dir_ / "job_0.out");
  EXPECT_NE(read_text(dir_ / "job_0.out").find("resumed from"), std::string::npos);
  // Node 2 comes back while the two train: admitted at the next checkpoint.
  agents[2] = elastic(2, "job_2b");
  ASSERT_TRUE(until("job_2b.err", "it joins when the workers next make room"))
      << read_text(dir_ / "job_2b.err");
  ASSERT_TRUE(until("job_0.err", "round 2: node 0 of 3, ranks 0-0 of 3"))
      << read_text(dir_ / "job_0.err") << read_text(dir_ / "job_0.out");
  for (int k = 0; k < 3; ++k) {
    const std::string tag = k == 2 ? "job_2b" : "job_" + std::to_string(k);
    Outcome r = finish(agents[static_cast<size_t>(k)], tag, 300s, k == 2);
    EXPECT_EQ(r.code, 0) << tag << ":\n" << r.err;
  }
  EXPECT_NE(read_text(dir_ / "job_0.err").find("to let waiting nodes join"), std::string::npos);
  // The run reached its last step, and its last checkpoint is there.
  EXPECT_TRUE(fs::exists(dir_ / "run" / "checkpoints" / "step_600"));
}

}  // namespace
