#include "collectives/flight_recorder.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/util/env.h"
#include "core/util/error.h"

namespace cohort::collectives {
namespace {

int64_t steady_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// "0-4 and 6-7", "3".
std::string ranks_text(const std::vector<int>& ranks) {
  std::vector<std::string> runs;
  for (size_t i = 0; i < ranks.size();) {
    size_t j = i;
    while (j + 1 < ranks.size() && ranks[j + 1] == ranks[j] + 1) ++j;
    if (j == i + 1) {  // two in a row read better apart
      runs.push_back(std::to_string(ranks[i]));
      runs.push_back(std::to_string(ranks[j]));
    } else {
      runs.push_back(j == i ? std::to_string(ranks[i])
                            : std::to_string(ranks[i]) + "-" + std::to_string(ranks[j]));
    }
    i = j + 1;
  }
  std::string out;
  for (size_t k = 0; k < runs.size(); ++k)
    out += (k == 0 ? "" : k + 1 == runs.size() ? " and " : ", ") + runs[k];
  return out;
}

std::string bytes_text(int64_t b) {
  char text[32];
  if (b >= (1 << 20))
    std::snprintf(text, sizeof text, "%.1f MB", static_cast<double>(b) / (1 << 20));
  else if (b >= 1024)
    std::snprintf(text, sizeof text, "%.1f KB", static_cast<double>(b) / 1024);
  else
    std::snprintf(text, sizeof text, "%lld bytes", static_cast<long long>(b));
  return text;
}

}  // namespace

namespace {
thread_local const char* tag_what = nullptr;
thread_local int64_t tag_index = -1;
}  // namespace

FlightTag::FlightTag(const char* what, int64_t index)
    : previous_what_(tag_what), previous_index_(tag_index) {
  tag_what = what;
  tag_index = index;
}

FlightTag::~FlightTag() {
  tag_what = previous_what_;
  tag_index = previous_index_;
}

const char* flight_state_name(FlightEntry::State s) {
  switch (s) {
    case FlightEntry::State::kQueued:
      return "queued";
    case FlightEntry::State::kStarted:
      return "started";
    case FlightEntry::State::kCompleted:
      return "completed";
    case FlightEntry::State::kFailed:
      break;
  }
  return "failed";
}

FlightRecorder& FlightRecorder::get() {
  static auto* r = new FlightRecorder(
      static_cast<size_t>(env::integer(env::kFlightRecorderSize, 2048, 0, int64_t{1} << 20)));
  return *r;
}

FlightRecorder::FlightRecorder(size_t capacity)
    : ring_(capacity),
      epoch_ns_(steady_ns()),
      epoch_wall_us_(std::chrono::duration_cast<std::chrono::microseconds>(
                         std::chrono::system_clock::now().time_since_epoch())
                         .count()) {
  if (const char* d = env::get(env::kFlightRecorderDir)) dir_ = d;
}

int64_t FlightRecorder::now_us() const { return (steady_ns() - epoch_ns_) / 1000 + 1; }

int FlightRecorder::next_group() {
  std::lock_guard<std::mutex> lock(mu_);
  return next_group_++;
}

uint64_t FlightRecorder::queued(int group, bool collective, const char* op, int64_t bytes, int peer,
                                std::string_view dtype) {
  if (ring_.empty()) return 0;
  const int64_t t = now_us();
  std::lock_guard<std::mutex> lock(mu_);
  const uint64_t id = next_id_++;
  FlightEntry& e = ring_[id % ring_.size()];
  e = FlightEntry{};
  e.id = id;
  e.group = group;
  e.collective = collective;
  e.op = op;
  e.bytes = bytes;
  e.peer = peer;
  e.dtype = dtype;
  e.queued_us = t;
  if (tag_what) e.tag = tag_index < 0 ? tag_what : tag_what + (" " + std::to_string(tag_index));
  return id;
}

FlightEntry* FlightRecorder::find(uint64_t id) {
  if (id == 0 || ring_.empty()) return nullptr;
  FlightEntry& e = ring_[id % ring_.size()];
  return e.id == id ? &e : nullptr;  // overwritten by newer operations otherwise
}

void FlightRecorder::started(uint64_t id, uint64_t seq) {
  const int64_t t = now_us();
  std::lock_guard<std::mutex> lock(mu_);
  if (FlightEntry* e = find(id)) {
    e->seq = e->collective ? seq : 0;
    e->started_us = t;
    e->state = FlightEntry::State::kStarted;
  }
}

void FlightRecorder::ended(uint64_t id, bool ok) {
  const int64_t t = now_us();
  std::lock_guard<std::mutex> lock(mu_);
  if (FlightEntry* e = find(id)) {
    e->ended_us = t;
    e->state = ok ? FlightEntry::State::kCompleted : FlightEntry::State::kFailed;
  }
}

std::vector<FlightEntry> FlightRecorder::snapshot() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<FlightEntry> out;
  for (const FlightEntry& e : ring_)
    if (e.id != 0) out.push_back(e);
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.id < b.id; });
  return out;
}

namespace {

int signal_pipe[2] = {-1, -1};

void on_sigusr2(int) {
  const int saved = errno;
  const char c = 'd';
  (void)!::write(signal_pipe[1], &c, 1);  // async-signal-safe; the dump runs on its own thread
  errno = saved;
}

// SIGUSR2 dumps, from a thread of its own: a signal handler may not allocate or take locks.
void dump_on_sigusr2(FlightRecorder& recorder) {
  if (::pipe2(signal_pipe, O_CLOEXEC) != 0) return;
  // A burst of signals must not block the handler on a full pipe: extra bytes are dropped.
  ::fcntl(signal_pipe[1], F_SETFL, O_NONBLOCK);
  std::thread([&recorder] {
    char c;
    while (true) {
      const ssize_t n = ::read(signal_pipe[0], &c, 1);
      if (n == 1) {
        recorder.dump("SIGUSR2");
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else {
        return;
      }
    }
  }).detach();
  struct sigaction sa {};
  sa.sa_handler = on_sigusr2;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  ::sigaction(SIGUSR2, &sa, nullptr);
}

}  // namespace

void FlightRecorder::set_dump_dir(const std::string& dir, int rank, int world) {
  static std::once_flag signal_once;
  std::call_once(signal_once, [this] { dump_on_sigusr2(*this); });
  std::lock_guard<std::mutex> lock(mu_);
  if (!env::get(env::kFlightRecorderDir)) dir_ = dir;
  rank_ = rank;
  world_ = world;
  // A dump this rank left in an earlier run (or attempt) of the same directory would be read as
  // this one's.
  if (!dir_.empty()) {
    std::error_code ec;
    std::filesystem::remove(dir_ + "/rank_" + std::to_string(rank_) + ".json", ec);
  }
}

std::string FlightRecorder::dump_dir() const {
  std::lock_guard<std::mutex> lock(mu_);
  return dir_;
}

bool FlightRecorder::dump(const std::string& reason) noexcept {
  std::string dir;
  int rank = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    dir = dir_;
    rank = rank_;
  }
  if (dir.empty() || ring_.empty()) return false;
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  return dump_to(dir + "/rank_" + std::to_string(rank) + ".json", rank, reason);
}

bool FlightRecorder::dump(std::exception_ptr error) noexcept {
  try {
    std::rethrow_exception(error);
  } catch (const std::exception& e) {
    return dump(std::string(e.what()));
  } catch (...) {
    return dump(std::string("an error that is not a std::exception"));
  }
}

bool FlightRecorder::dump_to(const std::string& path, int rank,
                             const std::string& reason) const noexcept {
  try {
    nlohmann::json j;
    j["rank"] = rank;
    if (const int world = world_.load(); world > 0) j["world"] = world;
    j["pid"] = static_cast<int64_t>(::getpid());
    j["reason"] = reason;
    j["dumped_us"] = now_us();
    j["epoch_wall_us"] = epoch_wall_us_;
    nlohmann::json entries = nlohmann::json::array();
    for (const FlightEntry& e : snapshot())
      entries.push_back({{"id", e.id},
                         {"group", e.group},
                         {"seq", e.seq},
                         {"collective", e.collective},
                         {"op", e.op},
                         {"bytes", e.bytes},
                         {"peer", e.peer},
                         {"tag", e.tag},
                         {"dtype", e.dtype},
                         {"queued_us", e.queued_us},
                         {"started_us", e.started_us},
                         {"ended_us", e.ended_us},
                         {"state", flight_state_name(e.state)}});
    j["entries"] = std::move(entries);
    const std::string tmp = path + ".tmp";
    {
      std::ofstream f(tmp, std::ios::trunc);
      f << j.dump(1) << "\n";
      if (!f) return false;
    }
    std::filesystem::rename(tmp, path);
    return true;
  } catch (...) {
    return false;
  }
}

namespace {

struct RankDump {
  int rank = -1;
  int world = 0;  // 0: not recorded
  std::string reason;
  int64_t dumped_us = 0;
  int64_t epoch_wall_us = 0;  // add to an entry's times for the wall clock
  std::vector<FlightEntry> entries;
};

// Every field checked: a dump is a file, and a file may have been written by anyone.
RankDump read_dump(const std::filesystem::path& file) {
  auto bad = [&](const std::string& what) {
    COHORT_THROW(ConfigError, "flight-recorder dump ", file.string(), " is malformed: ", what);
  };
  std::error_code ec;
  const auto size = std::filesystem::file_size(file, ec);
  if (ec) bad("it cannot be read (" + ec.message() + ")");
  if (size > (size_t{256} << 20)) bad("larger than 256 MB");
  std::ifstream f(file);
  nlohmann::json j;
  try {
    f >> j;
  } catch (const std::exception& e) {
    bad(std::string("not JSON (") + e.what() + ")");
  }
  auto integer = [&](const nlohmann::json& o, const char* key, int64_t lo, int64_t hi) {
    if (!o.is_object() || !o.contains(key) || !o[key].is_number_integer()) bad(key);
    const int64_t v = o[key].get<int64_t>();
    if (v < lo || v > hi) bad(std::string(key) + " out of range");
    return v;
  };
  auto text = [&](const nlohmann::json& o, const char* key) {
    if (!o.contains(key) || !o[key].is_string() || o[key].get<std::string>().size() > 4096)
      bad(key);
    return o[key].get<std::string>();
  };
  RankDump d;
  d.rank = static_cast<int>(integer(j, "rank", 0, 1 << 24));
  if (j.contains("world")) d.world = static_cast<int>(integer(j, "world", 1, 1 << 20));
  d.reason = text(j, "reason");
  d.dumped_us = integer(j, "dumped_us", 0, INT64_MAX / 4);
  d.epoch_wall_us = integer(j, "epoch_wall_us", 0, INT64_MAX / 4);
  if (!j.contains("entries") || !j["entries"].is_array() || j["entries"].size() > (1u << 20))
    bad("entries");
  for (const auto& o : j["entries"]) {
    FlightEntry e;
    e.id = static_cast<uint64_t>(integer(o, "id", 1, INT64_MAX));
    e.group = static_cast<int>(integer(o, "group", 0, 1 << 20));
    e.seq = static_cast<uint64_t>(integer(o, "seq", 0, INT64_MAX));
    if (!o.contains("collective") || !o["collective"].is_boolean()) bad("collective");
    e.collective = o["collective"].get<bool>();
    e.op = text(o, "op");
    e.bytes = integer(o, "bytes", 0, INT64_MAX);
    e.peer = static_cast<int>(integer(o, "peer", -1, 1 << 24));
    if (o.contains("tag")) e.tag = text(o, "tag");
    if (o.contains("dtype")) e.dtype = text(o, "dtype");
    e.queued_us = integer(o, "queued_us", 0, INT64_MAX / 4);
    e.started_us = integer(o, "started_us", 0, INT64_MAX / 4);
    e.ended_us = integer(o, "ended_us", 0, INT64_MAX / 4);
    const std::string state = text(o, "state");
    if (state == "queued")
      e.state = FlightEntry::State::kQueued;
    else if (state == "started")
      e.state = FlightEntry::State::kStarted;
    else if (state == "completed")
      e.state = FlightEntry::State::kCompleted;
    else if (state == "failed")
      e.state = FlightEntry::State::kFailed;
    else
      bad("state " + state);
    d.entries.push_back(std::move(e));
  }
  return d;
}

}  // namespace

std::string diagnose_flight_dumps(const std::string& dir_in) {
  namespace fs = std::filesystem;
  fs::path dir(dir_in);
  std::error_code ec;
  if (fs::is_directory(dir / "flight_recorder", ec)) dir /= "flight_recorder";  // a run directory
  std::map<int, RankDump> dumps;
  for (const auto& f : fs::directory_iterator(dir, ec)) {
    const std::string name = f.path().filename().string();
    if (name.rfind("rank_", 0) != 0 || f.path().extension() != ".json") continue;
    RankDump d = read_dump(f.path());
    dumps[d.rank] = std::move(d);
  }
  if (dumps.empty())
    COHORT_THROW(ConfigError, "no flight-recorder dumps (rank_N.json) in ", dir.string(),
                 ": ranks write them there when an operation times out or fails");
  int world = dumps.rbegin()->first + 1;
  for (const auto& [rank, d] : dumps) world = std::max(world, d.world);
  std::vector<int> missing;
  for (int r = 0; r < world; ++r)
    if (!dumps.count(r)) missing.push_back(r);

  // Per group: each rank's collectives by sequence number.
  std::map<int, std::map<int, std::map<uint64_t, const FlightEntry*>>> by_group;
  for (const auto& [rank, d] : dumps)
    for (const FlightEntry& e : d.entries)
      // A collective still queued has no number yet (the runner gives it one when it starts).
      if (e.collective && e.state != FlightEntry::State::kQueued)
        by_group[e.group][rank][e.seq] = &e;

  std::ostringstream out;
  for (const auto& [group, ranks] : by_group) {
    // Disagreement: the same number, different operations or sizes.
    std::set<uint64_t> seqs;
    for (const auto& [rank, ops] : ranks)
      for (const auto& [seq, e] : ops) seqs.insert(seq);
    for (uint64_t seq : seqs) {
      // Per kind of operation: its ranks, and who issued it on the first of them.
      std::map<std::string, std::pair<std::vector<int>, std::string>> kinds;
      for (const auto& [rank, ops] : ranks)
        if (auto it = ops.find(seq); it != ops.end()) {
          auto& [rs, tag] = kinds[it->second->op + " " + bytes_text(it->second->bytes) +
                                  (it->second->dtype.empty() ? "" : " of " + it->second->dtype)];
          if (rs.empty()) tag = it->second->tag;
          rs.push_back(rank);
        }
      if (kinds.size() < 2) continue;
      out << "ranks disagree on collective #" << seq << " of group " << group << ":";
      bool first = true;
      for (const auto& [kind, who] : kinds) {
        const auto& [rs, tag] = who;
        out << (first ? " " : ", ") << kind << (tag.empty() ? "" : " (" + tag + ")") << " on rank"
            << (rs.size() > 1 ? "s " : " ") << ranks_text(rs);
        first = false;
      }
      out << ".";
      return out.str();
    }
    // A hang: the first collective some rank started and did not complete.
    uint64_t stuck = 0;
    const FlightEntry* stuck_entry = nullptr;
    for (const auto& [rank, ops] : ranks)
      for (const auto& [seq, e] : ops)
        if (e->state != FlightEntry::State::kCompleted && (!stuck_entry || seq < stuck)) {
          stuck = seq;
          stuck_entry = e;
        }
    if (!stuck_entry) continue;
    // Ranks that waited in it until they gave up, ranks that never entered it, and ranks that
    // entered it only after the first of those gave up (on the wall clock: a late rank may even
    // complete it, when what it needed had been sent before the others left).
    std::vector<int> never, waited, late;
    int64_t gave_up = INT64_MAX;  // wall clock
    for (int r = 0; r < world; ++r) {
      if (!dumps.count(r)) continue;
      const auto it = ranks.find(r);
      if (it == ranks.end() || !it->second.count(stuck)) continue;
      const FlightEntry* e = it->second.at(stuck);
      if (e->state == FlightEntry::State::kCompleted) continue;
      const int64_t end = e->ended_us ? e->ended_us : dumps.at(r).dumped_us;
      gave_up = std::min(gave_up, dumps.at(r).epoch_wall_us + end);
    }
    for (int r = 0; r < world; ++r) {
      if (!dumps.count(r)) continue;
      const auto it = ranks.find(r);
      if (it == ranks.end() || !it->second.count(stuck)) {
        never.push_back(r);
        continue;
      }
      const FlightEntry* e = it->second.at(stuck);
      if (dumps.at(r).epoch_wall_us + e->started_us >= gave_up)
        late.push_back(r);
      else if (e->state != FlightEntry::State::kCompleted)
        waited.push_back(r);
    }
    std::vector<int> absent = never;
    absent.insert(absent.end(), late.begin(), late.end());
    std::sort(absent.begin(), absent.end());
    // Every rank that dumped entered it: the ranks that did not dump (stopped, hung where they
    // could not, killed) are what the others waited for.
    const bool blame_missing = absent.empty() && !missing.empty();
    if (blame_missing)
      out << "rank" << (missing.size() > 1 ? "s " : " ") << ranks_text(missing)
          << " wrote no dump (stopped, hung where it could not write one, or killed) while every "
             "rank that did waited in";
    out << (blame_missing    ? ""
            : absent.empty() ? "every rank with a dump entered"
                             : "rank" + std::string(absent.size() > 1 ? "s " : " ") +
                                   ranks_text(absent) + " never entered")
        << " " << stuck_entry->op << " #" << stuck << " of group " << group << " ("
        << bytes_text(stuck_entry->bytes)
        << (stuck_entry->dtype.empty() ? "" : " of " + stuck_entry->dtype)
        << (stuck_entry->tag.empty() ? "" : ", " + stuck_entry->tag) << ")";
    if (!late.empty())
      out << " before the others gave up (" << (late.size() > 1 ? "ranks " : "rank ")
          << ranks_text(late) << " reached it only after)";
    if (!waited.empty()) {
      double longest = 0;
      for (int r : waited) {
        const FlightEntry* e = ranks.at(r).at(stuck);
        const int64_t end = e->ended_us ? e->ended_us : dumps.at(r).dumped_us;
        longest = std::max(longest, static_cast<double>(end - e->started_us) / 1e6);
      }
      char secs[32];
      std::snprintf(secs, sizeof secs, "%.1f", longest);
      out << "; rank" << (waited.size() > 1 ? "s " : " ") << ranks_text(waited) << " waited "
          << secs << " s in it";
    }
    out << ".";
    if (blame_missing) missing.clear();
    for (int r : absent) {
      const auto it = ranks.find(r);
      const FlightEntry* last = nullptr;
      if (it != ranks.end())
        for (const auto& [seq, e] : it->second)
          if (seq < stuck && e->state == FlightEntry::State::kCompleted) last = e;
      out << " Rank " << r << "'s last completed collective before it was "
          << (last ? last->op + " #" + std::to_string(last->seq) : std::string("none")) << ".";
    }
    break;
  }
  if (out.str().empty()) out << "every rank completed every collective it recorded.";
  if (!missing.empty())
    out << " Rank" << (missing.size() > 1 ? "s " : " ") << ranks_text(missing)
        << " wrote no dump (killed, stopped or never started).";
  return out.str();
}

std::string diagnose_from_note(const std::string& note, int ranks, std::chrono::milliseconds wait) {
  namespace fs = std::filesystem;
  std::string dir;
  {
    std::ifstream f(note);
    std::getline(f, dir);
  }
  // The note is the workers' word: a path, nothing more.
  std::error_code ec;
  if (dir.empty() || dir.size() > 4096 || !fs::is_directory(dir, ec)) return "";
  auto count = [&] {
    int n = 0;
    for (const auto& f : fs::directory_iterator(dir, ec))
      if (f.path().extension() == ".json" && f.path().filename().string().rfind("rank_", 0) == 0)
        ++n;
    return n;
  };
  const auto deadline = std::chrono::steady_clock::now() + wait;
  while (count() < ranks && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  if (count() == 0) return "";
  try {
    return diagnose_flight_dumps(dir) + " (cohort diagnose " + dir + ")";
  } catch (const std::exception& e) {
    return std::string("the flight-recorder dumps could not be read: ") + e.what();
  }
}

}  // namespace cohort::collectives
