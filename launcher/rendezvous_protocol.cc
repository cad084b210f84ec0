#include "launcher/rendezvous_protocol.h"

#include <algorithm>
#include <cstdlib>
#include <map>
#include <sstream>
#include <thread>
#include <vector>

#include "core/util/error.h"

namespace cohort::launcher {

namespace {

using namespace std::chrono_literals;

// A number read from the store: only agents holding the job's token write there, but a value is
// still checked before it sizes or indexes anything.
int64_t parse_count(const std::string& v, const std::string& what, int64_t max) {
  char* end = nullptr;
  const long long n = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || end == v.c_str() || n < 0 || n > max)
    COHORT_THROW(DistributedError, "the rendezvous store holds '", v.substr(0, 64), "' for ", what,
                 ", which is not a count from 0 to ", max);
  return n;
}

std::vector<int64_t> parse_fields(const std::string& v, size_t n, const std::string& what) {
  std::istringstream in(v);
  std::vector<int64_t> out;
  std::string f;
  while (out.size() < n && in >> f) out.push_back(parse_count(f, what, 1 << 30));
  if (out.size() != n)
    COHORT_THROW(DistributedError, "the rendezvous store holds '", v.substr(0, 64), "' for ", what,
                 ", which is not ", n, " counts");
  return out;
}

constexpr int kMaxNodes = 1 << 20;

}  // namespace

AgentRendezvous::AgentRendezvous(std::shared_ptr<collectives::Store> store,
                                 RendezvousSettings settings)
    : store_(std::move(store)), s_(std::move(settings)) {
  if (s_.min_nodes < 1 || s_.max_nodes < s_.min_nodes || s_.max_nodes > kMaxNodes)
    COHORT_THROW(ConfigError, "--nnodes ", s_.min_nodes, ":", s_.max_nodes,
                 " must be 1 or more, MIN no larger than MAX");
}

std::string AgentRendezvous::key(const std::string& what) const { return key(joined_, what); }

std::string AgentRendezvous::key(int round, const std::string& what) const {
  return "r" + std::to_string(round) + "/" + what;
}

std::chrono::milliseconds AgentRendezvous::timeout() const {
  return std::chrono::milliseconds(static_cast<int64_t>(s_.timeout_s * 1000));
}

void AgentRendezvous::host_round(int round) {
  // Arrival 0 is the host, before anyone can arrive: its node holds the store, and the workers'
  // MASTER_ADDR, so its first worker is global rank 0.
  ++ops_;
  store_->add(key(round, "count"), 1);
  ++ops_;
  store_->set(key(round, "info/0"),
              std::to_string(s_.node_rank) + " " + std::to_string(s_.nproc) + " " + s_.label);
  ++ops_;
  store_->set(key(round, "open"), "1");
  const auto start = Clock::now();
  Clock::time_point enough{};  // when min_nodes were first in
  int64_t arrived = 1;
  while (true) {
    ++ops_;
    arrived = std::min<int64_t>(store_->add(key(round, "count"), 0), s_.max_nodes);
    const auto now = Clock::now();
    if (arrived >= s_.max_nodes) break;
    if (arrived >= s_.min_nodes) {
      if (enough == Clock::time_point{}) enough = now;
      if (now - enough >= std::chrono::duration<double>(s_.last_call_s)) break;
    } else if (now - start > timeout()) {
      std::ostringstream w;
      w << "only " << arrived << " of the " << s_.min_nodes << " nodes needed arrived within "
        << s_.timeout_s << " s";
      const std::string why = w.str();
      store_->set(key(round, "closed"), "error: " + why);
      COHORT_THROW(ConfigError, "the rendezvous on node 0: ", why,
                   " (--rdzv-timeout; start an agent on every node with the same --nnodes and "
                   "--rdzv-endpoint)");
    }
    std::this_thread::sleep_for(arrived >= s_.min_nodes ? 20ms : 10ms);
  }
  // Who came: node ranks (fixed: as given; elastic: in arrival order) and their first ranks.
  struct Arrival {
    int64_t node_rank, nproc;
  };
  std::vector<Arrival> arrivals;
  std::string error;
  std::map<int64_t, int64_t> by_rank;  // node rank -> arrival
  for (int64_t i = 0; i < arrived; ++i) {
    ++ops_;
    const std::string info = store_->get(key(round, "info/" + std::to_string(i)));
    const auto f = parse_fields(info, 2, "an agent's node rank and workers");
    const int64_t node = s_.elastic ? i : f[0];
    arrivals.push_back({node, f[1]});
    if (!s_.elastic && node >= s_.max_nodes && error.empty())
      error = "an agent gave --node-rank " + std::to_string(node) + " but --nnodes is " +
              std::to_string(s_.max_nodes);
    if (!by_rank.emplace(node, i).second && error.empty())
      error = "two agents gave --node-rank " + std::to_string(node) +
              "; give each node its own, 0 to " + std::to_string(s_.max_nodes - 1);
    if ((f[1] < 1 || f[1] > 1 << 16) && error.empty())
      error = "an agent has " + std::to_string(f[1]) + " workers";
  }
  if (!error.empty()) {
    store_->set(key(round, "closed"), "error: " + error);
    COHORT_THROW(ConfigError, "the rendezvous: ", error);
  }
  std::map<int64_t, int64_t> offset;  // node rank -> first global rank
  int64_t world = 0;
  for (const auto& [node, i] : by_rank) {
    offset[node] = world;
    world += arrivals[static_cast<size_t>(i)].nproc;
  }
  // The world size data.batch_size was given for: the job's first round's.
  ++ops_;
  const std::string batch_world = store_->compare_set("batch_world", "", std::to_string(world));
  for (int64_t i = 0; i < arrived; ++i) {
    const int64_t node = arrivals[static_cast<size_t>(i)].node_rank;
    ++ops_;
    store_->set(key(round, "assign/" + std::to_string(i)),
                std::to_string(node) + " " + std::to_string(arrived) + " " + std::to_string(world) +
                    " " + std::to_string(offset[node]) + " " + batch_world);
  }
  ++ops_;
  store_->set(key(round, "closed"), std::to_string(arrived));
}

std::optional<Membership> AgentRendezvous::join(int round) {
  int64_t index = 0;
  try {
    if (s_.host) {
      host_round(round);
    } else {
      ops_ += 2;
      store_->wait({key(round, "open")}, timeout());
      index = store_->add(key(round, "count"), 1) - 1;
      ++ops_;
      store_->set(key(round, "info/" + std::to_string(index)),
                  std::to_string(s_.node_rank) + " " + std::to_string(s_.nproc) + " " + s_.label);
    }
    ops_ += 2;
    store_->wait({key(round, "closed")}, timeout());
    const std::string closed = store_->get(key(round, "closed"));
    if (closed.rfind("error: ", 0) == 0)
      COHORT_THROW(ConfigError, "the rendezvous failed on node 0: ", closed.substr(7));
    const int64_t in =
        parse_count(closed, "the nodes of round " + std::to_string(round), kMaxNodes);
    if (index >= in) return std::nullopt;
    ++ops_;
    const auto f = parse_fields(store_->get(key(round, "assign/" + std::to_string(index))), 5,
                                "this agent's place in the job");
    m_ = Membership{round,
                    static_cast<int>(index),
                    static_cast<int>(f[0]),
                    static_cast<int>(f[1]),
                    static_cast<int>(f[2]),
                    static_cast<int>(f[3]),
                    static_cast<int>(f[4])};
  } catch (const TimeoutError& e) {
    COHORT_THROW(ConfigError, "node ", s_.node_rank, " could not meet the other nodes at the ",
                 "rendezvous within ", s_.timeout_s, " s: ", e.what());
  }
  joined_ = round;
  next_beat_ = next_failure_poll_ = Clock::now();
  neighbour_beat_ = -1;
  neighbour_seen_ = Clock::now();
  return m_;
}

bool AgentRendezvous::await_round(int round, double timeout_s) {
  const auto end = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                      std::chrono::duration<double>(timeout_s));
  while (true) {
    ops_ += 2;
    if (store_->check({key(round, "open")})) return true;
    if (store_->check({"finished"})) return false;
    if (Clock::now() > end)
      COHORT_THROW(TimeoutError, "round ", round, " of the rendezvous did not open within ",
                   timeout_s, " s");
    std::this_thread::sleep_for(200ms);
  }
}

std::string AgentRendezvous::check() {
  if (joined_ < 0 || m_.nnodes <= 1) return "";
  try {
    const auto now = Clock::now();
    if (now >= next_failure_poll_) {
      next_failure_poll_ =
          now + std::chrono::duration_cast<Clock::duration>(
                    std::chrono::duration<double>(std::max(s_.failure_poll_s, 0.01)));
      ++ops_;
      if (store_->check({key("failed")})) {
        ++ops_;
        return store_->get(key("failed"));
      }
    }
    if (now < next_beat_) return "";
    next_beat_ = now + std::chrono::duration_cast<Clock::duration>(
                           std::chrono::duration<double>(std::max(s_.heartbeat_s, 0.01)));
    ops_ += 2;
    store_->add(key("beat/" + std::to_string(m_.index)), 1);
    // Only the next arrival's beat: a ring of watchers costs every agent one read, and an agent
    // that stops is noticed by the one before it.
    const int next = (m_.index + 1) % m_.nnodes;
    const int64_t beat = store_->add(key("beat/" + std::to_string(next)), 0);
    if (beat != neighbour_beat_) {
      neighbour_beat_ = beat;
      neighbour_seen_ = now;
    } else if (now - neighbour_seen_ > std::chrono::duration<double>(s_.heartbeat_timeout_s)) {
      std::string who = "arrival " + std::to_string(next);
      try {
        ++ops_;
        const std::string info = store_->get(key("info/" + std::to_string(next)));
        const auto f = parse_fields(info, 2, "an agent's node rank and workers");
        const size_t label = info.find(' ', info.find(' ') + 1);
        who = "node " + std::to_string(s_.elastic ? next : f[0]);
        if (label != std::string::npos && label + 1 < info.size())
          who += " (" + info.substr(label + 1, 64) + ")";
      } catch (const std::exception&) {
      }
      const std::string text = "the agent of " + who + " stopped responding (no heartbeat for " +
                               std::to_string(static_cast<int>(s_.heartbeat_timeout_s)) + " s)";
      post_failure(text);
      return text;
    }
  } catch (const std::exception& e) {
    return std::string("the rendezvous store is gone (node 0's agent has probably exited): ") +
           e.what();
  }
  return "";
}

void AgentRendezvous::post_failure(const std::string& text) {
  if (joined_ < 0) return;
  try {
    ++ops_;
    store_->compare_set(key("failed"), "", text);
  } catch (const std::exception&) {
    // The store host is gone; the other agents notice that themselves.
  }
}

void AgentRendezvous::post_done() {
  ++ops_;
  store_->add(key("done"), 1);
}

bool AgentRendezvous::all_done() {
  ++ops_;
  return store_->add(key("done"), 0) >= m_.nnodes;
}

int AgentRendezvous::pending_joiners() {
  if (!s_.host || joined_ < 0) return 0;
  ++ops_;
  return static_cast<int>(std::max<int64_t>(0, store_->add(key("count"), 0) - m_.nnodes));
}

void AgentRendezvous::post_finished() {
  try {
    ++ops_;
    store_->set("finished", "1");
  } catch (const std::exception&) {
  }
}

void AgentRendezvous::leave() {
  if (joined_ < 0 || m_.nnodes <= 1) return;
  try {
    ++ops_;
    store_->add(key("left"), 1);
    if (!s_.host) return;
    const auto end =
        Clock::now() + std::chrono::duration_cast<Clock::duration>(
                           std::chrono::duration<double>(std::min(s_.timeout_s, 30.0)));
    while (Clock::now() < end) {
      ++ops_;
      if (store_->add(key("left"), 0) >= m_.nnodes) return;
      std::this_thread::sleep_for(20ms);
    }
  } catch (const std::exception&) {
    // An agent that is gone cannot say so; its absence is already reported.
  }
}

void AgentRendezvous::publish(const std::string& what, const std::string& value) {
  ++ops_;
  store_->set(key(what), value);
}

std::string AgentRendezvous::read(const std::string& what) {
  ops_ += 2;
  store_->wait({key(what)}, timeout());
  return store_->get(key(what));
}

}  // namespace cohort::launcher
