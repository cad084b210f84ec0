#include "trainer/heal.h"

#include <algorithm>
#include <cstdlib>
#include <sstream>
#include <thread>

#include "core/util/error.h"

namespace cohort::trainer {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

namespace {

// Numbers another rank wrote: checked before they index anything.
int64_t parse_int(const std::string& v, int64_t lo, int64_t hi, const char* what) {
  char* end = nullptr;
  const long long n = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || end == v.c_str() || n < lo || n > hi)
    COHORT_THROW(DistributedError, "healing: the store holds '", v.substr(0, 32), "' for ", what);
  return n;
}

}  // namespace

Healer::Healer(std::shared_ptr<collectives::Store> store, std::string backend,
               collectives::ProcessGroupOptions options, int full_world)
    : store_(std::move(store)),
      backend_(std::move(backend)),
      options_(std::move(options)),
      full_world_(full_world) {}

std::string Healer::key(int g, const std::string& what) const {
  return "heal/" + std::to_string(g) + "/" + what;
}

bool Healer::joiner_waiting() { return store_->check({key(generation_ + 1, "count")}); }

Generation Healer::regroup(int old_rank, std::chrono::milliseconds settle) {
  // A replacement joins the generation after the last closed one.
  int g = generation_ + 1;
  if (old_rank < 0 && store_->check({"heal/gen"}))
    g = static_cast<int>(parse_int(store_->get("heal/gen"), 0, 1 << 30, "the generation")) + 1;
  const auto deadline = Clock::now() + options_.timeout;
  while (true) {
    const int64_t index = store_->add(key(g, "count"), 1) - 1;
    store_->set(key(g, "member/" + std::to_string(index)), std::to_string(old_rank));
    if (old_rank < 0) store_->add("heal/replacing", -1);
    if (index == 0) {
      // The closer: until the whole job is there, or nobody new arrived for `settle` and no
      // replacement the launchers announced is still starting (given kReplacementWait at most).
      int64_t seen = 1;
      const auto opened = Clock::now();
      auto changed = opened;
      while (true) {
        const int64_t n = store_->add(key(g, "count"), 0);
        const auto now = Clock::now();
        if (n != seen) {
          seen = n;
          changed = now;
        }
        if (n >= full_world_) break;
        if (now - changed >= settle &&
            (store_->add("heal/replacing", 0) <= 0 || now - opened >= kReplacementWait))
          break;
        std::this_thread::sleep_for(5ms);
      }
      std::vector<std::pair<int64_t, int64_t>> order;  // (old rank or a large number, arrival)
      bool has_zero = false;
      for (int64_t i = 0; i < seen; ++i) {
        const int64_t r = parse_int(store_->get(key(g, "member/" + std::to_string(i))), -1, 1 << 24,
                                    "an arrival's old rank");
        has_zero = has_zero || r == 0;
        order.emplace_back(r < 0 ? (int64_t{1} << 40) + i : r, i);
      }
      std::sort(order.begin(), order.end());
      std::string closed = std::to_string(seen);
      for (const auto& [r, i] : order) closed += " " + std::to_string(i);
      if (!has_zero)
        closed = "error: rank 0, which writes the run directory, is not among the " +
                 std::to_string(seen) + " rank(s) left";
      store_->set(key(g, "closed"), closed);
      store_->set("heal/gen", std::to_string(g));
    }
    store_->wait({key(g, "closed")},
                 std::chrono::duration_cast<collectives::Millis>(deadline - Clock::now()));
    const std::string closed = store_->get(key(g, "closed"));
    if (closed.rfind("error: ", 0) == 0)
      COHORT_THROW(DistributedError, "healing generation ", g, " failed: ", closed.substr(7));
    std::istringstream in(closed);
    std::string field;
    in >> field;
    const int64_t n = parse_int(field, 1, 1 << 24, "a generation's size");
    std::vector<int64_t> arrivals;
    while (static_cast<int64_t>(arrivals.size()) < n && in >> field)
      arrivals.push_back(parse_int(field, 0, n - 1, "an arrival"));
    if (static_cast<int64_t>(arrivals.size()) != n)
      COHORT_THROW(DistributedError, "healing: generation ", g, "'s list is malformed");
    const auto mine = std::find(arrivals.begin(), arrivals.end(), index);
    if (mine == arrivals.end()) {
      // Closed before this rank came (it noticed the failure late): join the next one as a
      // newcomer, which the others wait for at their next look.
      if (Clock::now() > deadline)
        COHORT_THROW(TimeoutError, "healing: no generation took this rank in within ",
                     options_.timeout.count() / 1000, " s");
      old_rank = -1;
      ++g;
      continue;
    }
    Generation out;
    out.number = g;
    out.world = static_cast<int>(n);
    out.rank = static_cast<int>(mine - arrivals.begin());
    for (int64_t i : arrivals)
      out.old_ranks.push_back(static_cast<int>(
          parse_int(store_->get(key(g, "member/" + std::to_string(i))), -1, 1 << 24, "a rank")));
    out.group = collectives::create_process_group(
        backend_, std::make_shared<collectives::PrefixStore>(key(g, "group"), store_), out.rank,
        out.world, options_);
    generation_ = g;
    return out;
  }
}

}  // namespace cohort::trainer
