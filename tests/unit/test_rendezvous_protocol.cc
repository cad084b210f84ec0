// The launcher's rendezvous protocol (launcher/rendezvous_protocol.h) on an in-memory store with
// agents as threads: fixed and elastic rounds, late arrivals, agents that do not fit, heartbeats
// watched around a ring, failures and completion.
#include <gtest/gtest.h>

#include <future>
#include <thread>

#include "collectives/store/store.h"
#include "core/util/error.h"
#include "launcher/rendezvous_protocol.h"

namespace {

using cohort::launcher::AgentRendezvous;
using cohort::launcher::Membership;
using cohort::launcher::RendezvousSettings;
using namespace std::chrono_literals;

RendezvousSettings settings(int min, int max, int node_rank, int nproc = 2) {
  RendezvousSettings s;
  s.min_nodes = min;
  s.max_nodes = max;
  s.elastic = min < max;
  s.node_rank = node_rank;
  s.nproc = nproc;
  s.host = node_rank == 0;
  s.timeout_s = 60;
  s.last_call_s = 0.3;
  s.label = "n" + std::to_string(node_rank);
  return s;
}

// Starts agents with `each` settings on one store; returns their memberships.
std::vector<std::optional<Membership>> meet(std::shared_ptr<cohort::collectives::Store> store,
                                            const std::vector<RendezvousSettings>& each,
                                            int round = 0) {
  std::vector<std::future<std::optional<Membership>>> f;
  for (const auto& s : each)
    f.push_back(std::async(std::launch::async, [=] {
      AgentRendezvous a(store->clone(), s);
      return a.join(round);
    }));
  std::vector<std::optional<Membership>> out;
  for (auto& x : f) out.push_back(x.get());
  return out;
}

TEST(RendezvousProtocol, FixedNodesGetTheirOwnRanksAndOffsetsFromTheirWorkerCounts) {
  auto store = std::make_shared<cohort::collectives::HashStore>();
  // Node 2 runs 3 workers, the others 2: offsets 0, 2, 4 and a world of 7.
  const auto m = meet(store, {settings(3, 3, 2, 3), settings(3, 3, 0), settings(3, 3, 1)});
  ASSERT_TRUE(m[0] && m[1] && m[2]);
  EXPECT_EQ(m[1]->node_rank, 0);
  EXPECT_EQ(m[1]->rank_offset, 0);
  EXPECT_EQ(m[2]->rank_offset, 2);
  EXPECT_EQ(m[0]->node_rank, 2);
  EXPECT_EQ(m[0]->rank_offset, 4);
  for (const auto& x : m) {
    EXPECT_EQ(x->world, 7);
    EXPECT_EQ(x->nnodes, 3);
    EXPECT_EQ(x->batch_world, 7);
  }
}

TEST(RendezvousProtocol, TwoAgentsWithOneNodeRankAreOneSentenceForAll) {
  auto store = std::make_shared<cohort::collectives::HashStore>();
  auto a = std::async(std::launch::async, [&] {
    AgentRendezvous host(store->clone(), settings(2, 2, 0));
    return host.join(0);
  });
  RendezvousSettings s = settings(2, 2, 0);
  s.host = false;  // a second agent that also says --node-rank 0
  AgentRendezvous twin(store->clone(), s);
  try {
    twin.join(0);
    ADD_FAILURE() << "expected a ConfigError";
  } catch (const cohort::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("two agents gave --node-rank 0"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(a.get(), cohort::ConfigError);
}

TEST(RendezvousProtocol, AnElasticRoundClosesAfterTheLastCallAndALateAgentWaitsForTheNext) {
  auto store = std::make_shared<cohort::collectives::HashStore>();
  // 2 of at most 3 arrive: the host closes once the last call has passed.
  const auto m = meet(store, {settings(2, 3, 0), settings(2, 3, 5)});
  ASSERT_TRUE(m[0] && m[1]);
  EXPECT_EQ(m[0]->nnodes, 2);
  EXPECT_EQ(m[1]->node_rank, 1);  // arrival order, whatever --node-rank it gave
  EXPECT_EQ(m[0]->world, 4);
  // A third arrives while round 0 runs: it is not in it, and the host sees it waiting.
  AgentRendezvous host(store->clone(), settings(2, 3, 0));
  AgentRendezvous late(store->clone(), settings(2, 3, 7));
  // (The host's own view of round 0, for pending_joiners.)
  auto again = std::async(std::launch::async, [&] { return host.join(1); });
  AgentRendezvous other(store->clone(), settings(2, 3, 5));
  auto other_join = std::async(std::launch::async, [&] { return other.join(1); });
  ASSERT_TRUE(again.get());
  ASSERT_TRUE(other_join.get());
  EXPECT_FALSE(late.join(1).has_value());
  EXPECT_EQ(host.pending_joiners(), 1);
  // Round 2 admits it, and the world grows to 6; the batch world stays the first round's.
  auto h2 = std::async(std::launch::async, [&] { return host.join(2); });
  auto o2 = std::async(std::launch::async, [&] { return other.join(2); });
  ASSERT_TRUE(late.await_round(2, 60));
  const auto l2 = late.join(2);
  ASSERT_TRUE(l2 && h2.get() && o2.get());
  EXPECT_EQ(l2->nnodes, 3);
  EXPECT_EQ(l2->world, 6);
  EXPECT_EQ(l2->batch_world, 4);
  // A waiting agent learns that the job finished.
  AgentRendezvous waiting(store->clone(), settings(2, 3, 9));
  host.post_finished();
  EXPECT_FALSE(waiting.await_round(3, 60));
}

TEST(RendezvousProtocol, TooFewAgentsIsAClearErrorAfterTheTimeout) {
  auto store = std::make_shared<cohort::collectives::HashStore>();
  RendezvousSettings s = settings(2, 3, 0);
  s.timeout_s = 0.5;
  AgentRendezvous host(store, s);
  try {
    host.join(0);
    ADD_FAILURE() << "expected a ConfigError";
  } catch (const cohort::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("only 1 of the 2 nodes needed arrived within 0.5 s"),
              std::string::npos)
        << e.what();
  }
}

TEST(RendezvousProtocol, AStoppedHeartbeatIsSeenByTheAgentBeforeItAndFailuresReachEveryone) {
  auto store = std::make_shared<cohort::collectives::HashStore>();
  std::vector<std::unique_ptr<AgentRendezvous>> agents;
  for (int k = 0; k < 3; ++k) {
    RendezvousSettings s = settings(3, 3, k);
    s.heartbeat_s = 0.05;
    s.heartbeat_timeout_s = 0.5;
    s.failure_poll_s = 0.05;
    agents.push_back(std::make_unique<AgentRendezvous>(store->clone(), s));
  }
  std::vector<std::future<std::optional<Membership>>> f;
  for (auto& a : agents) f.push_back(std::async(std::launch::async, [&] { return a->join(0); }));
  for (auto& x : f) ASSERT_TRUE(x.get());
  // Arrival order decides the ring; find who watches whom.
  int silent = -1;
  for (int k = 0; k < 3; ++k)
    if (agents[static_cast<size_t>(k)]->membership().index == 2) silent = k;
  ASSERT_GE(silent, 0);
  // Everyone but `silent` beats; the agent before it in the ring (index 1) names it.
  std::string seen;
  const auto end = std::chrono::steady_clock::now() + 30s;
  while (seen.empty() && std::chrono::steady_clock::now() < end) {
    for (int k = 0; k < 3; ++k)
      if (k != silent)
        if (std::string w = agents[static_cast<size_t>(k)]->check(); !w.empty()) seen = w;
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_NE(seen.find("the agent of node " +
                      std::to_string(agents[static_cast<size_t>(silent)]->membership().node_rank) +
                      " (n"),
            std::string::npos)
      << seen;
  EXPECT_NE(seen.find("stopped responding"), std::string::npos) << seen;
  // Posted, so the silent one sees it too when it looks.
  EXPECT_EQ(agents[static_cast<size_t>(silent)]->check(), seen);
}

TEST(RendezvousProtocol, DoneIsCountedOnce) {
  auto store = std::make_shared<cohort::collectives::HashStore>();
  std::vector<std::unique_ptr<AgentRendezvous>> agents;
  for (int k = 0; k < 2; ++k)
    agents.push_back(std::make_unique<AgentRendezvous>(store->clone(), settings(2, 2, k)));
  std::vector<std::future<std::optional<Membership>>> f;
  for (auto& a : agents) f.push_back(std::async(std::launch::async, [&] { return a->join(0); }));
  for (auto& x : f) ASSERT_TRUE(x.get());
  agents[0]->post_done();
  EXPECT_FALSE(agents[1]->all_done());
  agents[1]->post_done();
  EXPECT_TRUE(agents[0]->all_done());
}

}  // namespace
