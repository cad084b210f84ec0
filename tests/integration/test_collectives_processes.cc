// Collectives across real processes: `cohort bench collectives` ranks (which verify every result)
// over a TcpStore and a FileStore with each transport, under mpirun with the mpi and cpu backends,
// and a rank killed mid-all-reduce.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>

#include "cohort/config.h"
#include "collectives/store/tcp_store.h"
#include "test_util.h"

namespace {

namespace fs = std::filesystem;
using cohort::test::read_text;
using namespace std::chrono_literals;

// The job's token for every store these tests start; ranks get the worker part, as under
// cohort launch.
const cohort::collectives::JobToken& job_token() {
  static const auto token = cohort::collectives::JobToken::generate();
  return token;
}

std::unique_ptr<cohort::collectives::TcpStoreServer> store_server(
    const std::string& bind = "127.0.0.1") {
  cohort::collectives::TcpStoreServerOptions o;
  o.token = job_token();
  o.bind = bind;
  return std::make_unique<cohort::collectives::TcpStoreServer>(o);
}

struct Rank {
  pid_t pid = -1;
  fs::path log;
};

// Starts `cohort bench collectives ARGS` as rank `rank` of `size`, output to a log file; inside
// network namespace `netns` when one is given.
Rank start_rank(int rank, int size, const std::string& store, const std::string& args,
                const fs::path& dir, const std::string& tag = "", const std::string& netns = "") {
  Rank r;
  r.log = dir / ("rank" + std::to_string(rank) + tag + ".log");
  r.pid = fork();
  if (r.pid == 0) {
    setenv("COHORT_RANK", std::to_string(rank).c_str(), 1);
    setenv("COHORT_WORLD_SIZE", std::to_string(size).c_str(), 1);
    setenv("COHORT_STORE", store.c_str(), 1);
    setenv("COHORT_TOKEN", job_token().worker().to_text().c_str(), 1);
    std::string cmd = "exec " + (netns.empty() ? "" : "ip netns exec " + netns + " ") +
                      std::string(COHORT_BINARY) + " bench collectives " + args + " >" +
                      r.log.string() + " 2>&1";
    execl("/bin/sh", "sh", "-c", cmd.c_str(), nullptr);
    _exit(127);
  }
  return r;
}

// Waits for the process up to `limit`; kills it (and reports -1) if it does not end in time.
int wait_rank(Rank& r, std::chrono::seconds limit) {
  const auto end = std::chrono::steady_clock::now() + limit;
  int status = 0;
  while (std::chrono::steady_clock::now() < end) {
    if (waitpid(r.pid, &status, WNOHANG) == r.pid) {
      r.pid = -1;
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    std::this_thread::sleep_for(20ms);
  }
  kill(r.pid, SIGKILL);
  waitpid(r.pid, &status, 0);
  r.pid = -1;
  return -1;
}

class CollectiveProcesses : public cohort::test::TempDirTest {
 protected:
  void TearDown() override {
    for (auto& r : ranks_)
      if (r.pid > 0) {
        kill(r.pid, SIGKILL);
        waitpid(r.pid, nullptr, 0);
      }
    TempDirTest::TearDown();
  }
  // Runs `size` ranks to completion and expects every one to succeed; rank r runs in
  // nodes[r] when nodes are given.
  void run_all(int size, const std::string& store, const std::string& args,
               const std::vector<std::string>& nodes = {}) {
    ranks_.clear();
    for (int r = 0; r < size; ++r)
      ranks_.push_back(start_rank(r, size, store, args, dir_, "", nodes.empty() ? "" : nodes[r]));
    for (int r = 0; r < size; ++r) {
      int code = wait_rank(ranks_[r], 300s);
      EXPECT_EQ(code, 0) << "rank " << r << ":\n" << read_text(ranks_[r].log);
    }
  }
  std::vector<Rank> ranks_;
};

TEST_F(CollectiveProcesses, EveryOpOverTcpStoreAndFileStoreWithEachTransport) {
  int n = 0;
  for (std::string transport : {"shm", "tcp"})
    for (std::string op :
         {"allreduce", "broadcast", "allgather", "reduce_scatter", "alltoall", "barrier"}) {
      const std::string args = "--op " + op + " --transport " + transport +
                               " -b 4 -e 4M -f 32 --iters 3 --warmup 1 --timeout 120";
      {
        const auto server = store_server();  // a fresh store per run
        run_all(3, "127.0.0.1:" + std::to_string(server->port()), args);
      }
      run_all(3, "file:" + (dir_ / ("store" + std::to_string(n++))).string(), args);
      const std::string table = read_text(dir_ / "rank0.log");
      EXPECT_NE(table.find("errors"), std::string::npos) << table;
    }
}

// Under mpirun there is no store address: the ranks find one through MPI, whichever backend runs
// the collectives.
TEST_F(CollectiveProcesses, UnderMpirunEveryOpWithTheMpiAndCpuBackends) {
  if (!COHORT_USE_MPI) GTEST_SKIP() << "this build has no MPI (COHORT_USE_MPI=OFF)";
  for (std::string backend : {"mpi", "cpu"})
    for (std::string op :
         {"allreduce", "broadcast", "allgather", "reduce_scatter", "alltoall", "barrier"}) {
      Rank run;
      run.log = dir_ / ("mpirun_" + backend + "_" + op + ".log");
      run.pid = fork();
      if (run.pid == 0) {
        setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
        setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
        const std::string cmd =
            "exec mpirun --oversubscribe --bind-to none -np 3 " + std::string(COHORT_BINARY) +
            " bench collectives --backend " + backend + " --op " + op +
            " -b 4 -e 4M -f 32 --iters 3 --warmup 1 --timeout 120 >" + run.log.string() + " 2>&1";
        execl("/bin/sh", "sh", "-c", cmd.c_str(), nullptr);
        _exit(127);
      }
      ranks_.push_back(run);
      const int code = wait_rank(ranks_.back(), 300s);
      const std::string log = read_text(run.log);
      EXPECT_EQ(code, 0) << backend << " " << op << ":\n" << log;
      EXPECT_NE(log.find("backend " + backend + ", transport auto, 3 ranks"), std::string::npos)
          << log;
    }
}

TEST_F(CollectiveProcesses, ARankKilledMidAllreduceIsNamedByTheOthers) {
  for (std::string transport : {"shm", "tcp"}) {
    ranks_.clear();
    const std::string store = "file:" + (dir_ / ("kill_" + transport)).string();
    const std::string args = "--op allreduce --transport " + transport +
                             " -b 16M -e 16M --iters 1000000 --warmup 0 --timeout 120";
    for (int r = 0; r < 3; ++r) ranks_.push_back(start_rank(r, 3, store, args, dir_, transport));
    // Let them get into the all-reduces: the table's header comes after the group is up, then
    // the first all-reduce is verified and the timed ones start.
    const auto end = std::chrono::steady_clock::now() + 120s;
    while (read_text(ranks_[0].log).find("errors") == std::string::npos &&
           std::chrono::steady_clock::now() < end)
      std::this_thread::sleep_for(50ms);
    std::this_thread::sleep_for(1500ms);
    kill(ranks_[1].pid, SIGKILL);
    EXPECT_EQ(wait_rank(ranks_[1], 30s), 128 + SIGKILL);
    for (int r : {0, 2}) {
      // Well inside the 120 s collective timeout: the death itself is noticed.
      const auto t0 = std::chrono::steady_clock::now();
      int code = wait_rank(ranks_[r], 100s);
      const std::string log = read_text(ranks_[r].log);
      EXPECT_EQ(code, 4) << transport << " rank " << r << ":\n" << log;
      EXPECT_NE(log.find("rank 1"), std::string::npos) << transport << " rank " << r << ":\n"
                                                       << log;
      EXPECT_LT(std::chrono::steady_clock::now() - t0, 100s) << transport << " rank " << r;
    }
  }
}

// Nodes on one machine: network namespaces on a bridge (scripts/netns.sh), two ranks per node.
// Ranks of one node share memory; ranks on different nodes talk over TCP.
class MultiNode : public CollectiveProcesses {
 protected:
  void SetUp() override {
    CollectiveProcesses::SetUp();
    cluster_ = std::make_unique<cohort::test::NetnsCluster>("cht", 2);
    if (!cluster_->unavailable.empty()) GTEST_SKIP() << cluster_->unavailable;
    ASSERT_EQ(cluster_->error, "");
    subnet_ = cluster_->subnet;
  }
  void TearDown() override {
    CollectiveProcesses::TearDown();  // kills ranks left running
    cluster_.reset();
  }
  std::string node(int k) const { return cluster_->node(k); }
  std::unique_ptr<cohort::test::NetnsCluster> cluster_;
  std::string subnet_;
};

TEST_F(MultiNode, EveryOpAcrossTwoNodesOverTcpStoreAndFileStore) {
  const std::vector<std::string> nodes = {node(0), node(0), node(1), node(1)};
  for (std::string op :
       {"allreduce", "broadcast", "allgather", "reduce_scatter", "alltoall", "barrier"}) {
    const std::string args = "--op " + op + " -b 4 -e 4M -f 32 --iters 3 --warmup 1 --timeout 120";
    {
      // The store lives on the bridge's address, where every node reaches it.
      const auto server = store_server(subnet_ + ".254");
      run_all(4, subnet_ + ".254:" + std::to_string(server->port()), args, nodes);
    }
    run_all(4, "file:" + (dir_ / ("mn_store_" + op)).string(), args, nodes);
  }
}

// Several ranks on each of several nodes: all-reduces go hierarchically (a chain inside each node
// over shared memory, the leaders over TCP), and must give exactly what the flat ring gives. The
// bench checks every element against the closed form (the sum of rank + 1) on every rank, at sizes
// from one element per rank up to the ring's range among the leaders.
TEST_F(CollectiveProcesses, HierarchicalAllreduceEqualsTheFlatOneAcrossNodeLayouts) {
  for (auto [nodes, per_node] : {std::pair{2, 2}, std::pair{2, 3}, std::pair{3, 2}}) {
    cohort::test::NetnsCluster cluster("chh", nodes);
    if (!cluster.unavailable.empty()) GTEST_SKIP() << cluster.unavailable;
    ASSERT_EQ(cluster.error, "");
    const int size = nodes * per_node;
    std::vector<std::string> where;
    for (int r = 0; r < size; ++r) where.push_back(cluster.node(r / per_node));
    const std::string layout = std::to_string(nodes) + " nodes x " + std::to_string(per_node);
    for (std::string algorithm : {"auto", "hierarchical", "ring"}) {
      const std::string args = "--op allreduce --algorithm " + algorithm +
                               " -b 4 -e 4M -f 8 --iters 2 --warmup 1 --timeout 120";
      run_all(size, "file:" + (dir_ / ("h" + std::to_string(size) + algorithm)).string(), args,
              where);
      const std::string table = read_text(dir_ / "rank0.log");
      EXPECT_NE(table.find(layout), std::string::npos) << table;
      // On such a layout auto goes hierarchically from 32 KiB and keeps the flat recursive
      // doubling below; forced, the hierarchy runs at every size.
      const std::string leaders = " among " + std::to_string(nodes) + " leaders)";
      if (algorithm != "ring") {
        EXPECT_NE(table.find("hierarchical (ring" + leaders), std::string::npos) << table;
      }
      if (algorithm == "hierarchical") {
        EXPECT_NE(table.find("hierarchical (recursive doubling" + leaders), std::string::npos)
            << table;
      }
      if (algorithm == "auto") {
        EXPECT_NE(table.find("  recursive doubling\n"), std::string::npos) << table;
      }
      if (HasFailure()) return;
    }
  }
}

// A rank that dies inside a node, while its leader waits for its share over shared memory, ends
// the all-reduce on every node with a sentence naming it.
TEST_F(CollectiveProcesses, ARankKilledInsideANodeDuringAHierarchicalAllreduceIsNamed) {
  cohort::test::NetnsCluster cluster("chk", 2);
  if (!cluster.unavailable.empty()) GTEST_SKIP() << cluster.unavailable;
  ASSERT_EQ(cluster.error, "");
  const std::string store = "file:" + (dir_ / "kill_hier").string();
  const std::string args =
      "--op allreduce --algorithm hierarchical -b 16M -e 16M --iters 1000000 --warmup 0 "
      "--timeout 120";
  for (int r = 0; r < 4; ++r)
    ranks_.push_back(start_rank(r, 4, store, args, dir_, "", cluster.node(r / 2)));
  const auto end = std::chrono::steady_clock::now() + 120s;
  while (read_text(ranks_[0].log).find("errors") == std::string::npos &&
         std::chrono::steady_clock::now() < end)
    std::this_thread::sleep_for(50ms);
  std::this_thread::sleep_for(1500ms);
  // Rank 3 is node 1's second rank: its leader (rank 2) reduces its share over shared memory.
  kill(ranks_[3].pid, SIGKILL);
  EXPECT_EQ(wait_rank(ranks_[3], 30s), 128 + SIGKILL);
  for (int r : {0, 1, 2}) {
    const int code = wait_rank(ranks_[r], 100s);  // inside the 120 s collective timeout
    const std::string log = read_text(ranks_[r].log);
    EXPECT_EQ(code, 4) << "rank " << r << ":\n" << log;
    EXPECT_NE(log.find("rank 3"), std::string::npos) << "rank " << r << ":\n" << log;
  }
}

// The store is needed while a group forms; if its server goes away then, every rank says so,
// naming the server, instead of waiting for ever.
TEST_F(CollectiveProcesses, TheStoreServerDisappearingIsAnErrorNamingIt) {
  auto server = store_server();
  const std::string address = "127.0.0.1:" + std::to_string(server->port());
  // Ranks 0 and 1 of 3 start; rank 2 never does, so they wait in the store for it.
  for (int r = 0; r < 2; ++r)
    ranks_.push_back(start_rank(r, 3, address, "--op allreduce -b 4K -e 4K --timeout 120", dir_));
  cohort::collectives::TcpStoreOptions po;
  po.port = server->port();
  po.token = job_token();
  cohort::collectives::TcpStore probe(po);
  const auto end = std::chrono::steady_clock::now() + 60s;
  while (!probe.check({"bench/mesh/peer/0", "bench/mesh/peer/1"}) &&
         std::chrono::steady_clock::now() < end)
    std::this_thread::sleep_for(20ms);
  server.reset();
  for (int r = 0; r < 2; ++r) {
    const int code = wait_rank(ranks_[r], 100s);  // well inside the 120 s timeout
    const std::string log = read_text(ranks_[r].log);
    EXPECT_NE(code, 0) << log;
    EXPECT_NE(code, -1) << "rank " << r << " hung:\n" << log;
    EXPECT_NE(log.find(address), std::string::npos) << log;
  }
}

}  // namespace
