// A Chrome-trace timeline (chrome://tracing, ui.perfetto.dev): spans of work on named threads of a
// process, one process per rank. The trainer records data/forward/backward/optimizer phases; the
// data-parallel code records its bucket all-reduces on the same clock, so overlap is visible.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <string>
#include <string_view>

namespace cohort::core {

class Timeline {
 public:
  // Writes the JSON array format to `path` (truncated); `pid` labels the process, e.g. the rank.
  // Throws IoError when the file cannot be created.
  Timeline(const std::string& path, int pid, std::string_view process_name);
  ~Timeline();
  Timeline(const Timeline&) = delete;
  Timeline& operator=(const Timeline&) = delete;

  // Microseconds on the timeline's clock (steady, zero at construction).
  int64_t now_us() const;
  int64_t to_us(std::chrono::steady_clock::time_point t) const;
  // A finished span [start_us, start_us + dur_us) on thread lane `tid`. Thread-safe.
  void complete(std::string_view name, std::string_view category, int64_t start_us, int64_t dur_us,
                int tid = 0);
  void name_thread(int tid, std::string_view name);
  // Pushes buffered events to the file; events are otherwise buffered by stdio.
  void flush();

  // Records a span from construction to destruction; a null timeline makes it free.
  class Span {
   public:
    Span(Timeline* t, std::string_view name, std::string_view category, int tid = 0)
        : t_(t), name_(name), category_(category), tid_(tid), start_(t ? t->now_us() : 0) {}
    ~Span() {
      if (t_) t_->complete(name_, category_, start_, t_->now_us() - start_, tid_);
    }
    Span(const Span&) = delete;
    Span& operator=(const Span&) = delete;

   private:
    Timeline* t_;
    std::string_view name_, category_;
    int tid_;
    int64_t start_;
  };

 private:
  void write_event(const std::string& json);

  std::mutex mu_;
  std::FILE* f_ = nullptr;
  int pid_;
  bool first_ = true;
  std::chrono::steady_clock::time_point t0_;
};

}  // namespace cohort::core
