// What a run does around its loop: claiming the run directory and resuming (every rank loading
// what it keeps of the checkpoint), the banner, the timeline, checkpoint writing, and every rank's
// numbers at the end.
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <thread>

#include <nlohmann/json.hpp>

#include "collectives/store/store.h"
#include "core/io/checkpoint.h"
#include "core/tensor/cuda/cuda_device.h"
#include "core/util/env.h"
#include "core/util/threads.h"
#include "trainer/reporter.h"
#include "trainer/run_dir.h"
#include "trainer/stop.h"
#include "trainer/stragglers.h"
#include "trainer/trainer.h"

namespace cohort::trainer {

namespace {

// The process's peak resident memory, or on a GPU the device memory its allocator peaked at.
double peak_memory_mb(core::Device device) {
  if (device.is_cuda())
    return static_cast<double>(core::cuda::memory_stats().peak_allocated) / (1 << 20);
  struct rusage ru {};
  ::getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_maxrss) / 1024;  // kilobytes on Linux
}

// The process's peak address space (VmPeak), which `ulimit -v` caps; 0 where /proc lacks it.
double peak_address_space_mb() {
  std::ifstream f("/proc/self/status");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("VmPeak:", 0) == 0) return std::atof(line.c_str() + 7) / 1024;  // kB
  return 0;
}

void create_checkpoint_root(const std::string& root) {
  std::error_code ec;
  std::filesystem::create_directories(root, ec);
  if (ec) COHORT_THROW(IoError, "cannot create checkpoint.dir ", root, ": ", ec.message());
}

// Polls rather than blocks, so that a write abandoned by a failing run ends within a poll.
void wait_for_key(collectives::Store& store, const std::string& key, collectives::Millis timeout,
                  const std::atomic<bool>& cancelled, const std::string& what) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!store.check({key})) {
    if (cancelled.load())
      COHORT_THROW(DistributedError, "checkpoint write abandoned while waiting for ", what);
    if (std::chrono::steady_clock::now() >= deadline)
      COHORT_THROW(TimeoutError, "checkpoint: waited ", timeout.count() / 1000.0, " s for ", what,
                   " (distributed.timeout_s)");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

// The last step of a sharded checkpoint: every rank but 0 hands in its manifest entry through the
// store; rank 0 collects them in rank order and runs `commit`. With `cancelled`, waits poll it.
void commit_or_hand_in(const std::shared_ptr<collectives::Store>& job_store, int64_t step, int rank,
                       int world, const std::string& entry, collectives::Millis timeout,
                       const std::atomic<bool>* cancelled,
                       const std::function<void(const std::vector<std::string>&)>& commit) {
  collectives::PrefixStore store("checkpoint/" + std::to_string(step), job_store);
  if (rank != 0) {
    store.set(std::to_string(rank), entry);
    return;
  }
  std::vector<std::string> entries{entry};
  for (int r = 1; r < world; ++r) {
    const std::string key = std::to_string(r);
    if (cancelled)
      wait_for_key(store, key, timeout, *cancelled, "rank " + key + "'s part");
    else
      store.wait({key}, timeout);
    entries.push_back(store.get(key));
    store.delete_key(key);
  }
  commit(entries);
}

}  // namespace

void Trainer::write_run_files() const {
  std::ofstream f(c_.logging.dir + "/config.resolved.yaml");
  f << c_.resolved << "\n";
  // What the data turned out to be, so that a later run (or a person) sees the same numbers.
  nlohmann::json data{{"dataset", c_.data.dataset},
                      {"train_samples", train_set_->size()},
                      {"eval_samples", eval_set_ ? eval_set_->size() : 0},
                      {"classes", train_set_->num_classes()}};
  if (!data_.normalization_source.empty())
    data["normalization"] = {
        {"mean", data_.mean}, {"std", data_.std}, {"source", data_.normalization_source}};
  std::ofstream(c_.logging.dir + "/data.json") << data.dump(2) << "\n";
}

void Trainer::save(int64_t step, int64_t epoch, int64_t batch_in_epoch) {
  if (batch_in_epoch >= per_epoch_) {
    ++epoch;
    batch_in_epoch = 0;
  }
  // Parameter-server workers do not step together: the chief writes alone.
  if (!collective() && !leader()) return;
  core::io::CheckpointMeta meta{step,
                                epoch,
                                batch_in_epoch,
                                batch_in_epoch * c_.data.batch_size * world_,
                                core::default_generator().state(),
                                run_id_,
                                YAML::Dump(c_.resolved)};
  const std::string root = c_.checkpoint.dir;
  const int64_t keep = c_.checkpoint.keep;
  // One writer: model.safetensors and optimizer.safetensors, which PyTorch loads as they are.
  if (!collective()) {
    if (!writer_) {
      core::io::save_checkpoint(root, parallel_->model_state(), parallel_->optimizer_state(), meta,
                                keep);
      return;
    }
    auto model = host_snapshot(parallel_->model_state());
    auto optimizer = host_snapshot(parallel_->optimizer_state());
    written(writer_->start(step, [=](const std::atomic<bool>&) {
      core::io::save_checkpoint(root, model, optimizer, meta, keep);
    }));
    return;
  }
  // Every rank writes its own file of the checkpoint at once; rank 0 then lists them all in the
  // manifest and renames the directory into place (core/io/checkpoint.h). `cohort checkpoint
  // consolidate` makes one model.safetensors of it.
  const std::string tmp = core::io::sharded_tmp_dir(root, step, run_id_);
  const auto timeout = collectives::Millis(static_cast<int64_t>(c_.distributed.timeout_s * 1000));
  const bool leader = this->leader();
  const int writer_rank = parallel_->writer_rank(), rank = rank_, world = world_;
  const int64_t kill_step = kill_in_checkpoint(rank_).value_or(-1);
  if (!writer_) {
    if (leader) {
      create_checkpoint_root(root);
      core::io::prepare_sharded_dir(tmp);
    }
    dist_.group->barrier()->wait();
    const std::string entry =
        core::io::write_checkpoint_shard(tmp, writer_rank, parallel_->checkpoint_state());
    if (kill_step == step) ::raise(SIGKILL);
    commit_or_hand_in(dist_.store, step, rank, world, entry, timeout, nullptr,
                      [&](const std::vector<std::string>& entries) {
                        core::io::commit_sharded_checkpoint(root, tmp, entries, meta, keep);
                      });
    // The checkpoint is whole on disk before any rank goes on (or is stopped).
    dist_.group->barrier()->wait();
    return;
  }
  // checkpoint.async: the same steps on the writer's thread, from a copy taken now, with the
  // store (its own connection) in place of the group's barriers, which belong to training.
  core::io::ShardedState state = host_snapshot(parallel_->checkpoint_state());
  if (!checkpoint_store_) checkpoint_store_ = dist_.store->clone();
  auto store = checkpoint_store_;
  written(writer_->start(step, [=, state = std::move(state)](const std::atomic<bool>& cancelled) {
    collectives::PrefixStore ready("checkpoint/" + std::to_string(step) + "/ready", store);
    if (leader) {
      create_checkpoint_root(root);
      core::io::prepare_sharded_dir(tmp);
      ready.set("0", "1");
    } else {
      wait_for_key(ready, "0", timeout, cancelled, "rank 0 to prepare the checkpoint directory");
    }
    const std::string entry = core::io::write_checkpoint_shard(tmp, writer_rank, state);
    if (kill_step == step) ::raise(SIGKILL);
    commit_or_hand_in(store, step, rank, world, entry, timeout, &cancelled,
                      [&](const std::vector<std::string>& entries) {
                        core::io::commit_sharded_checkpoint(root, tmp, entries, meta, keep);
                        ready.delete_key("0");
                      });
  }));
}

void Trainer::publish_host() {
  if (!dist_.store || !collective()) return;
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  std::string where = host;
  if (const char* node = env::get(env::kNodeRank))
    where = "node " + std::string(node) + " (" + where + ")";
  dist_.store->set("host/" + std::to_string(rank_), where);
}

void Trainer::report_straggler(Reporter& report, const Straggler& s, int64_t step) {
  if (!leader()) return;
  std::string where;
  try {
    const std::string key = "host/" + std::to_string(s.rank);
    if (dist_.store && dist_.store->check({key})) where = dist_.store->get(key);
  } catch (const std::exception&) {
    // Where it runs is a detail; the rank is named anyway.
  }
  // A store value is another process's text: printable ASCII of a sane length only.
  if (where.size() > 200 ||
      std::any_of(where.begin(), where.end(), [](unsigned char c) { return c < 0x20 || c > 0x7e; }))
    where.clear();
  std::fprintf(stderr, "cohort: straggler at step %lld: %s\n", static_cast<long long>(step),
               describe(s, where).c_str());
  std::fflush(stderr);
  report.write({{"event", "straggler"},
                {"step", step},
                {"rank", s.rank},
                {"where", where},
                {"steps", s.steps},
                {"ratio", s.ratio},
                {"own_ms", s.own_ms},
                {"others_median_ms", s.others_ms},
                {"data_wait_fraction", s.data_fraction}});
}

void Trainer::written(std::optional<CheckpointWriter::Written> w) {
  if (w) last_write_s_ = w->seconds;
  if (w && leader() && reporter_)
    reporter_->write({{"event", "checkpoint_written"}, {"step", w->step}, {"seconds", w->seconds}});
}

std::optional<std::string> Trainer::claim_and_resume(std::unique_ptr<RunDirectory>& run_dir,
                                                     core::io::CheckpointMeta& start) {
  // Rank 0 claims the run directory and decides what the run resumes from; the others follow
  // its decision (every rank reads the checkpoint, so checkpoint.dir must be on storage every
  // node sees).
  RunDecision decision;
  const auto timeout = collectives::Millis(static_cast<int64_t>(c_.distributed.timeout_s * 1000));
  const bool share = dist_.store && world_ > 1;
  if (leader()) {
    try {
      run_dir = std::make_unique<RunDirectory>(c_, world_);
    } catch (const Error& e) {
      if (share) publish_decision(*dist_.store, std::nullopt, e.what());
      throw;
    }
    decision = run_dir->decision();
    if (share) publish_decision(*dist_.store, decision, "");
    write_run_files();
  } else if (heal_join_) {
    // A replacement rank takes the running job's state, and its run id, from rank 0 when it
    // joins (heal.h), not from the start's decision or a checkpoint.
    return std::nullopt;
  } else if (share) {
    decision = await_decision(*dist_.store, timeout);
  } else if (c_.checkpoint.resume == "auto") {
    decision.resume = core::io::latest_checkpoint(c_.checkpoint.dir);
  } else if (!c_.checkpoint.resume.empty() && c_.checkpoint.resume != "never") {
    decision.resume = c_.checkpoint.resume;
  }
  run_id_ = decision.run_id;
  const std::optional<std::string> resume_from = decision.resume;
  if (resume_from) {
    const core::io::CheckpointReader ck(*resume_from);
    try {
      parallel_->load_checkpoint(ck);
    } catch (const IoError&) {
      throw;
    } catch (const ConfigError&) {
      throw;
    } catch (const Error& e) {
      COHORT_THROW(ConfigError, "checkpoint ", *resume_from,
                   " does not fit this model: ", e.what());
    }
    start = ck.meta();
    core::default_generator().set_state(start.rng);
  }
  if (collective()) {
    auto steps = gather_from_ranks({static_cast<double>(resume_from ? start.step : -1)});
    auto at = [&](int r) {
      const double v = steps[static_cast<size_t>(r)];
      return v < 0 ? std::string("no checkpoint")
                   : "step " + std::to_string(static_cast<int64_t>(v));
    };
    for (int r = 1; r < world_; ++r)
      if (steps[static_cast<size_t>(r)] != steps[0])
        COHORT_THROW(ConfigError, "rank ", r, " resumes from ", at(r), " but rank 0 from ", at(0),
                     "; checkpoint.dir ", c_.checkpoint.dir, " must be shared by every node");
  }
  return resume_from;
}

void Trainer::print_banner(const std::optional<std::string>& resume_from,
                           const core::io::CheckpointMeta& start) const {
  if (leader()) {
    std::string data = c_.data.dataset + ", " + std::to_string(train_set_->size()) +
                       " training / " + std::to_string(eval_set_ ? eval_set_->size() : 0) +
                       " evaluation samples";
    if (train_set_->num_classes() > 0)
      data += ", " + std::to_string(train_set_->num_classes()) + " classes";
    if (!data_.normalization_source.empty())
      data += ", normalisation " + data_.normalization_source;
    std::printf(
        "cohort: %s on %s, world size %d (%s), %lld parameters, run directory %s (run %s)\n"
        "cohort: data: %s\n",
        c_.model.type.c_str(), device_.str().c_str(), world_,
        strategy_name(world_ > 1 || dist_.ps ? c_.distributed.strategy : Strategy::kNone),
        static_cast<long long>(model_->num_parameters()), c_.logging.dir.c_str(), run_id_.c_str(),
        data.c_str());
  }
  if (leader() && !dist_.placement.empty())
    std::printf("cohort: rank 0 on %s, %d %s\n", dist_.placement.c_str(), core::get_num_threads(),
                core::get_num_threads() == 1 ? "thread" : "threads");
  if (leader())
    if (const std::string d = parallel_->describe(); !d.empty())
      std::printf("cohort: %s\n", d.c_str());
  if (leader() && dist_.group)
    if (const std::string t = dist_.group->topology(); !t.empty())
      std::printf("cohort: %s backend, %s\n", dist_.group->backend_name().c_str(), t.c_str());
  if (resume_from && leader())
    std::printf("resumed from %s (step %lld, epoch %lld)\n", resume_from->c_str(),
                static_cast<long long>(start.step), static_cast<long long>(start.epoch));
}

std::unique_ptr<core::Timeline> Trainer::open_timeline(std::string& path) {
  namespace fs = std::filesystem;
  // Ranks record on their own clocks, started together after a barrier; the leader merges them.
  std::unique_ptr<core::Timeline> timeline;
  // Parameter-server workers other than the chief keep no timeline (they merge nothing).
  if (c_.logging.timeline && (collective() || leader())) {
    if (!collective()) {
      path = c_.logging.dir + "/timeline.json";
    } else {
      path =
          (fs::temp_directory_path() / ("cohort-timeline-" + std::to_string(::getpid()) + ".json"))
              .string();
      dist_.group->barrier()->wait();
    }
    std::string name = "rank " + std::to_string(rank_);
    if (!dist_.host.empty()) name += " (" + dist_.host + ")";
    timeline = std::make_unique<core::Timeline>(path, rank_, name);
    timeline->name_thread(0, "compute");
    if (const char* lane = parallel_->comm_lane()) timeline->name_thread(1, lane);
  }
  return timeline;
}

void Trainer::report_ranks(Reporter& report, double my_sps) {
  const ModelStateBytes mem = parallel_->state_bytes();
  const double peak_mb = peak_memory_mb(device_);
  std::vector<double> per_rank = gather_from_ranks(
      {my_sps, peak_mb, static_cast<double>(mem.total()) / (1 << 20), peak_address_space_mb()});
  if (collective())
    std::printf("rank %d: %.0f samples/s, peak memory %.0f MB\n", rank_, my_sps, peak_mb);
  {
    std::vector<nlohmann::json> records;
    for (size_t r = 0; r * 4 < per_rank.size(); ++r)
      records.push_back({{"samples_per_s", per_rank[4 * r]},
                         {"peak_mem_mb", per_rank[4 * r + 1]},
                         {"model_state_mb", per_rank[4 * r + 2]},
                         {"peak_vm_mb", per_rank[4 * r + 3]}});
    report.ranks(records);
  }
}

}  // namespace cohort::trainer
