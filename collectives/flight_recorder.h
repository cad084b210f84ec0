// The flight recorder: every process keeps its last operations on every process group (what,
// on which group, how large, when queued, started and ended, and how it ended) in a fixed ring,
// so that when a job hangs or fails, each rank can write down where it was (dump) and
// `cohort diagnose` can line the ranks up and name the one that never arrived. Recording takes
// one short lock per operation; the ring's size is COHORT_FLIGHT_RECORDER_SIZE (default 2048, 0
// turns it off).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace cohort::collectives {

struct FlightEntry {
  enum class State : uint8_t { kQueued, kStarted, kCompleted, kFailed };
  uint64_t id = 0;   // this process's count of recorded operations, from 1
  int group = 0;     // the process group, numbered in the order this process made them
  uint64_t seq = 0;  // the group's collective number; 0 for send and recv
  bool collective = true;
  std::string op;  // "allreduce"
  int64_t bytes = 0;
  int peer = -1;      // send and recv: the other rank
  std::string tag;    // who issued it, when it said so: "ddp bucket 2" (FlightTag)
  std::string dtype;  // of its tensors ("float32"); empty for a barrier
  int64_t queued_us = 0, started_us = 0, ended_us = 0;  // since the recorder began; 0: not yet
  State state = State::kQueued;
};

const char* flight_state_name(FlightEntry::State s);

// Names the operations this thread issues while in scope, in the recorder and in `cohort
// diagnose` ("allreduce #1842 of group 0 (6.3 MB, ddp bucket 2)"). `what` must be a string
// literal; `index` (-1: none) is appended.
class FlightTag {
 public:
  explicit FlightTag(const char* what, int64_t index = -1);
  ~FlightTag();
  FlightTag(const FlightTag&) = delete;
  FlightTag& operator=(const FlightTag&) = delete;

 private:
  const char* previous_what_;
  int64_t previous_index_;
};

class FlightRecorder {
 public:
  // The process's recorder.
  static FlightRecorder& get();
  explicit FlightRecorder(size_t capacity);

  // A group's number, in creation order (the same on every rank that makes groups alike).
  int next_group();
  // Returns the entry's id (0 when recording is off).
  uint64_t queued(int group, bool collective, const char* op, int64_t bytes, int peer,
                  std::string_view dtype = {});
  void started(uint64_t id, uint64_t seq);
  void ended(uint64_t id, bool ok);
  // The entries still in the ring, oldest first.
  std::vector<FlightEntry> snapshot() const;

  // Where dump() writes rank_<rank>.json: COHORT_FLIGHT_RECORDER_DIR when set, else what the
  // program sets (the trainer: RUN_DIR/flight_recorder); empty: nowhere. The first call also
  // makes SIGUSR2 dump (`kill -USR2 PID` asks a running rank where it is). `world` (0: unknown)
  // goes into the dump, so that a diagnosis knows of ranks that wrote none.
  void set_dump_dir(const std::string& dir, int rank, int world = 0);
  // The directory dumps go to now ("" when none).
  std::string dump_dir() const;
  // Writes the ring and `reason` atomically (a temporary file renamed); false when there is no
  // directory or it cannot be written. Never throws: it runs while something else failed.
  bool dump(const std::string& reason) noexcept;
  // The same with the error's message as the reason (for a backend's catch (...)).
  bool dump(std::exception_ptr error) noexcept;
  // The same to an explicit file (tests, `cohort diagnose`'s own checks).
  bool dump_to(const std::string& path, int rank, const std::string& reason) const noexcept;

 private:
  int64_t now_us() const;
  FlightEntry* find(uint64_t id);  // under mu_

  mutable std::mutex mu_;
  std::vector<FlightEntry> ring_;
  uint64_t next_id_ = 1;
  int next_group_ = 0;
  std::string dir_;
  int rank_ = 0;
  std::atomic<int> world_{0};  // read by dump_to without the lock
  int64_t epoch_ns_ = 0;
  int64_t epoch_wall_us_ = 0;  // the wall clock at epoch_ns_: dumps of several ranks line up on it
};

// `cohort diagnose DIR`: reads every rank_*.json under DIR and says in a paragraph what happened:
// which collective hung and who never entered it, or which operation the ranks disagree on.
// Throws ConfigError naming the file when a dump is malformed or there is none.
std::string diagnose_flight_dumps(const std::string& dir);

// For `cohort launch`: the paragraph for a job whose workers failed, from the dumps in the
// directory its workers named in `note` (COHORT_FLIGHT_RECORDER_NOTE), waiting up to `wait` for
// `ranks` dumps to appear. "" when there is no note or no dump.
std::string diagnose_from_note(const std::string& note, int ranks, std::chrono::milliseconds wait);

}  // namespace cohort::collectives
