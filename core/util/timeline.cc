#include "core/util/timeline.h"

#include <cerrno>
#include <cstring>

#include <nlohmann/json.hpp>

#include "core/util/error.h"

namespace cohort::core {

Timeline::Timeline(const std::string& path, int pid, std::string_view process_name)
    : pid_(pid), t0_(std::chrono::steady_clock::now()) {
  f_ = std::fopen(path.c_str(), "w");
  if (!f_) COHORT_THROW(IoError, "cannot create timeline file ", path, ": ", std::strerror(errno));
  // The array format needs no closing bracket to load, so a crashed run's timeline stays readable.
  std::fputs("[\n", f_);
  nlohmann::json meta = {{"name", "process_name"},
                         {"ph", "M"},
                         {"pid", pid_},
                         {"args", {{"name", std::string(process_name)}}}};
  write_event(meta.dump());
}

Timeline::~Timeline() {
  std::lock_guard<std::mutex> lock(mu_);
  std::fputs("\n]\n", f_);
  std::fclose(f_);
}

int64_t Timeline::now_us() const { return to_us(std::chrono::steady_clock::now()); }

int64_t Timeline::to_us(std::chrono::steady_clock::time_point t) const {
  return std::chrono::duration_cast<std::chrono::microseconds>(t - t0_).count();
}

void Timeline::complete(std::string_view name, std::string_view category, int64_t start_us,
                        int64_t dur_us, int tid) {
  nlohmann::json e = {{"name", std::string(name)},
                      {"cat", std::string(category)},
                      {"ph", "X"},
                      {"ts", start_us},
                      {"dur", dur_us},
                      {"pid", pid_},
                      {"tid", tid}};
  write_event(e.dump());
}

void Timeline::name_thread(int tid, std::string_view name) {
  nlohmann::json e = {{"name", "thread_name"},
                      {"ph", "M"},
                      {"pid", pid_},
                      {"tid", tid},
                      {"args", {{"name", std::string(name)}}}};
  write_event(e.dump());
}

void Timeline::flush() {
  std::lock_guard<std::mutex> lock(mu_);
  std::fflush(f_);
}

void Timeline::write_event(const std::string& json) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!first_) std::fputs(",\n", f_);
  first_ = false;
  std::fputs(json.c_str(), f_);
}

}  // namespace cohort::core
