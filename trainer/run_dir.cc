// run.json, the directory locks and the resume decision.
#include "trainer/run_dir.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>

#include <nlohmann/json.hpp>

#include "collectives/store/token.h"
#include "core/io/checkpoint.h"
#include "core/io/safetensors.h"
#include "core/util/env.h"
#include "core/util/error.h"

namespace cohort::trainer {
namespace fs = std::filesystem;

namespace {

constexpr size_t kMaxRunJsonBytes = 1 << 20;

std::string hostname() {
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  return host;
}

std::string now_utc() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// At most `max` bytes of a file; nullopt when it cannot be opened.
std::optional<std::string> read_small(const fs::path& p, size_t max) {
  std::ifstream f(p, std::ios::binary);
  if (!f) return std::nullopt;
  std::string text(max, '\0');
  f.read(text.data(), static_cast<std::streamsize>(max));
  text.resize(static_cast<size_t>(f.gcount()));
  return text;
}

bool is_commit(const std::string& s) {
  return s.size() == 40 && s.find_first_not_of("0123456789abcdef") == std::string::npos;
}

// The commit of the git work tree holding `start` (walking up), or "" where there is none.
std::string git_commit(fs::path start) {
  std::error_code ec;
  start = fs::absolute(start, ec);
  for (fs::path d = start; !d.empty(); d = d.parent_path()) {
    const fs::path git = d / ".git";
    if (fs::is_directory(git, ec)) {
      auto head = read_small(git / "HEAD", 4096);
      if (!head) return "";
      std::string h = *head;
      while (!h.empty() && (h.back() == '\n' || h.back() == '\r')) h.pop_back();
      if (h.rfind("ref: ", 0) != 0) return is_commit(h) ? h : "";
      // HEAD names a ref under refs/; anything else (an absolute path, "..") is not followed.
      const std::string ref = h.substr(5);
      if (ref.rfind("refs/", 0) != 0 || ref.find("..") != std::string::npos ||
          ref.find_first_not_of(
              "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-") !=
              std::string::npos)
        return "";
      std::string commit;
      if (auto c = read_small(git / ref, 4096)) {
        commit = c->substr(0, std::min<size_t>(40, c->size()));
      } else if (auto packed = read_small(git / "packed-refs", kMaxRunJsonBytes)) {
        const size_t at = packed->find(" " + ref + "\n");
        if (at != std::string::npos && at >= 40) commit = packed->substr(at - 40, 40);
      }
      return is_commit(commit) ? commit : "";
    }
    if (d == d.parent_path()) break;
  }
  return "";
}

// Flattens a YAML tree to "a.b.c" -> scalar text (lists and maps below a key as flow YAML).
void flatten(const YAML::Node& n, const std::string& prefix,
             std::map<std::string, std::string>& out) {
  if (n.IsMap()) {
    for (auto it = n.begin(); it != n.end(); ++it) {
      if (!it->first.IsScalar()) continue;
      const std::string key =
          prefix.empty() ? it->first.Scalar() : prefix + "." + it->first.Scalar();
      // model.layers and model.nodes are compared whole.
      if (key == "model.layers" || key == "model.nodes") {
        YAML::Emitter e;
        e << YAML::Flow << it->second;
        out[key] = e.c_str();
        continue;
      }
      flatten(it->second, key, out);
    }
    return;
  }
  YAML::Emitter e;
  e << YAML::Flow << n;
  out[prefix] = e.c_str();
}

bool changes_state(const std::string& key) {
  if (key == "model.init_from" || key == "model.dropout") return false;
  return key.rfind("model.", 0) == 0 || key == "optimizer.type" || key == "data.dataset";
}

std::string random_id() { return collectives::to_hex(collectives::random_bytes(8)); }

}  // namespace

std::string job_run_id() {
  for (const char* var : {env::kRunId, env::kTorchRunId})
    // torchrun's default rdzv id is the word "none", the same for every job: not an identity.
    if (const char* v = env::get(var); v && std::string(v) != "none") return v;
  if (const char* job = env::get(env::kSlurmJobId)) return std::string("slurm-") + job;
  static const std::string id = random_id();
  return id;
}

std::vector<std::string> incompatible_changes(const std::string& checkpoint_config,
                                              const YAML::Node& current,
                                              std::vector<std::string>* changed) {
  YAML::Node old;
  try {
    old = YAML::Load(checkpoint_config);
  } catch (const YAML::Exception& e) {
    COHORT_THROW(IoError, "the checkpoint's recorded config is not YAML: ", e.what());
  }
  std::map<std::string, std::string> a, b;
  flatten(old, "", a);
  flatten(current, "", b);
  std::vector<std::string> bad;
  for (const auto& [key, value] : b) {
    auto it = a.find(key);
    const std::string before = it == a.end() ? "(unset)" : it->second;
    if (before == value) continue;
    // Paths that only name where things are written are not settings of the run.
    if (key == "logging.dir" || key == "checkpoint.dir" || key == "checkpoint.resume" ||
        key == "parameter_server.checkpoint_dir")
      continue;
    const std::string line = key + ": " + before + " -> " + value;
    if (changes_state(key)) {
      bad.push_back(line);
    } else if (changed) {
      changed->push_back(line);
    }
  }
  return bad;
}

void RunDirectory::lock(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) COHORT_THROW(IoError, "cannot create ", dir, ": ", ec.message());
  const std::string path = (fs::path(dir) / ".cohort-lock").string();
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) COHORT_THROW(IoError, "cannot open ", path);
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    auto holder = read_small(path, 512).value_or("");
    while (!holder.empty() && holder.back() == '\n') holder.pop_back();
    ::close(fd);
    COHORT_THROW(ConfigError, dir, " is in use by another running job",
                 holder.empty() ? std::string() : " (" + holder + ")",
                 "; two runs never share a run directory: set logging.dir to another one");
  }
  const std::string me =
      "pid " + std::to_string(::getpid()) + " on " + hostname() + ", run " + job_run_id() + "\n";
  if (::ftruncate(fd, 0) == 0) (void)!::pwrite(fd, me.data(), me.size(), 0);
  lock_fds_.push_back(fd);
}

RunDirectory::RunDirectory(const Config& c, int world_size) {
  lock(c.logging.dir);
  const fs::path ckpt(c.checkpoint.dir);
  std::error_code ec;
  if (fs::weakly_canonical(ckpt, ec) != fs::weakly_canonical(c.logging.dir, ec) &&
      fs::weakly_canonical(ckpt, ec).string().rfind(
          fs::weakly_canonical(c.logging.dir, ec).string() + "/", 0) != 0)
    lock(c.checkpoint.dir);

  const fs::path run_json = fs::path(c.logging.dir) / "run.json";
  nlohmann::json prev;
  if (auto text = read_small(run_json, kMaxRunJsonBytes)) {
    prev = nlohmann::json::parse(*text, nullptr, false);
    if (prev.is_discarded() || !prev.is_object() || !prev.contains("run_id") ||
        !prev["run_id"].is_string())
      COHORT_THROW(IoError, run_json.string(), " is not a run record Cohort wrote (no run_id)");
  }
  const std::string me = job_run_id();
  const std::string prev_id = prev.is_object() ? prev["run_id"].get<std::string>() : "";

  // What the directories hold that is not this run's.
  std::vector<std::string> others;
  if (!prev_id.empty() && prev_id != me)
    others.push_back("run " + prev_id + " (started " + prev.value("started", std::string("?")) +
                     ")");
  if (prev_id.empty() && fs::exists(fs::path(c.logging.dir) / "metrics.jsonl"))
    others.push_back("metrics.jsonl of an earlier run");
  int64_t foreign_checkpoints = 0, own_checkpoints = 0;
  for (auto& e : fs::directory_iterator(ckpt, ec)) {
    const std::string n = e.path().filename().string();
    if (n.rfind("step_", 0) != 0 || !e.is_directory()) continue;
    (core::io::checkpoint_run_id(e.path().string()) == me ? own_checkpoints
                                                          : foreign_checkpoints)++;
  }
  if (foreign_checkpoints > 0)
    others.push_back(std::to_string(foreign_checkpoints) + " checkpoint" +
                     (foreign_checkpoints == 1 ? "" : "s") + " in " + c.checkpoint.dir);

  std::string mode = c.checkpoint.resume;
  if (mode.empty()) mode = !prev_id.empty() && prev_id == me ? "auto" : "never";

  decision_.run_id = me;
  if (mode == "auto") {
    std::vector<std::string> skipped;
    decision_.resume = core::io::latest_checkpoint(c.checkpoint.dir, &skipped);
    for (const auto& why : skipped)
      std::fprintf(stderr, "cohort: checkpoint.resume=auto skipped a checkpoint: %s\n",
                   why.c_str());
  } else if (mode != "never") {
    decision_.resume = mode;
  }

  if (decision_.resume) {
    const core::io::CheckpointReader ck(*decision_.resume);
    // Continuing a run makes this process part of it: its checkpoints are pruned together.
    if (!ck.meta().run_id.empty()) decision_.run_id = ck.meta().run_id;
    if (ck.meta().config.empty()) {
      std::fprintf(stderr,
                   "cohort: checkpoint %s records no config (an older Cohort wrote it); its "
                   "model and optimizer are not checked against this config\n",
                   decision_.resume->c_str());
    } else {
      std::vector<std::string> changed;
      const auto bad = incompatible_changes(ck.meta().config, c.resolved, &changed);
      if (!bad.empty()) {
        std::string list;
        for (const auto& b : bad) list += (list.empty() ? "" : "; ") + b;
        COHORT_THROW(
            ConfigError, "cannot resume from ", *decision_.resume,
            ": these keys give its state another meaning and differ from this config: ", list,
            " (set them back, or start a new run with checkpoint.resume=never and "
            "another logging.dir)");
      }
      for (const auto& line : changed)
        std::printf("resuming with a changed setting: %s\n", line.c_str());
    }
  } else if (!others.empty() && mode == "auto" && c.checkpoint.resume == "auto") {
    std::string list;
    for (const auto& o : others) list += (list.empty() ? "" : ", ") + o;
    COHORT_THROW(ConfigError, "checkpoint.resume=auto found no checkpoint it can load in ",
                 c.checkpoint.dir, " (see the lines above), and logging.dir ", c.logging.dir,
                 " holds another run's files (", list,
                 "); repair or remove them, or choose a new logging.dir");
  } else if (!others.empty()) {
    std::string list;
    for (const auto& o : others) list += (list.empty() ? "" : ", ") + o;
    COHORT_THROW(ConfigError, "logging.dir ", c.logging.dir, " holds another run's files (", list,
                 "); runs never mix: continue that run with checkpoint.resume=auto, or choose a "
                 "new logging.dir, or remove the old one");
  } else if (own_checkpoints > 0) {
    // This job again, told not to resume (checkpoint.resume: never): its earlier checkpoints go
    // aside, so that neither pruning nor a later `auto` mixes them with this start's.
    const fs::path aside = ckpt / ("superseded-" + now_utc());
    fs::create_directories(aside, ec);
    for (auto& e : fs::directory_iterator(ckpt, ec)) {
      const std::string n = e.path().filename().string();
      if (n.rfind("step_", 0) == 0) fs::rename(e.path(), aside / n, ec);
    }
    std::fprintf(stderr,
                 "cohort: checkpoint.resume is never: this job's earlier checkpoints moved to %s\n",
                 aside.string().c_str());
  }

  nlohmann::json rec = prev.is_object() && decision_.resume ? prev : nlohmann::json::object();
  if (!decision_.resume || !rec.contains("started")) {
    rec["run_id"] = decision_.run_id;
    rec["started"] = now_utc();
    rec["config_sha256"] = core::io::sha256_hex(YAML::Dump(c.resolved));
    rec["git_commit"] = git_commit(".");
    rec["host"] = hostname();
    rec["world_size"] = world_size;
  }
  if (decision_.resume) {
    if (!rec.contains("resumed") || !rec["resumed"].is_array())
      rec["resumed"] = nlohmann::json::array();
    rec["resumed"].push_back({{"at", now_utc()},
                              {"from", *decision_.resume},
                              {"config_sha256", core::io::sha256_hex(YAML::Dump(c.resolved))},
                              {"world_size", world_size},
                              {"by", me}});
  }
  const fs::path tmp = run_json.string() + ".tmp";
  {
    std::ofstream f(tmp);
    f << rec.dump(2) << "\n";
    if (!f) COHORT_THROW(IoError, "cannot write ", tmp.string());
  }
  fs::rename(tmp, run_json, ec);
  if (ec) COHORT_THROW(IoError, "cannot write ", run_json.string(), ": ", ec.message());
}

RunDirectory::~RunDirectory() {
  for (int fd : lock_fds_) ::close(fd);
}

namespace {
std::string decision_key() {
  return "run/decision/" + std::to_string(env::integer(env::kRestartCount, 0, 0, INT32_MAX));
}
}  // namespace

void publish_decision(collectives::Store& store, const std::optional<RunDecision>& d,
                      const std::string& error) {
  nlohmann::json j;
  if (d) {
    j["run_id"] = d->run_id;
    j["resume"] = d->resume.value_or("");
  } else {
    j["error"] = error;
  }
  store.set(decision_key(), j.dump());
}

RunDecision await_decision(collectives::Store& store, std::chrono::milliseconds timeout) {
  store.wait({decision_key()}, timeout);
  const auto j = nlohmann::json::parse(store.get(decision_key()), nullptr, false);
  if (j.is_discarded() || !j.is_object())
    COHORT_THROW(DistributedError, "rank 0 sent an unreadable run decision");
  if (j.contains("error"))
    COHORT_THROW(ConfigError, "rank 0 refused to start: ", j.value("error", std::string()));
  RunDecision d;
  d.run_id = j.value("run_id", std::string());
  const std::string r = j.value("resume", std::string());
  if (!r.empty()) d.resume = r;
  return d;
}

}  // namespace cohort::trainer
