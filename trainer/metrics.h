// The run directory's metrics.jsonl: one JSON object per line, flushed as written so that a crashed
// run keeps everything up to its last step.
#pragma once

#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

namespace cohort::trainer {

class MetricsWriter {
 public:
  // Appends to dir/metrics.jsonl (creating dir); throws IoError when it cannot.
  explicit MetricsWriter(const std::string& dir, bool append);
  ~MetricsWriter();
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;
  void write(const nlohmann::json& record);

 private:
  std::FILE* f_ = nullptr;
};

}  // namespace cohort::trainer
