#include "trainer/metrics.h"

#include <filesystem>

#include "core/util/error.h"

namespace cohort::trainer {

MetricsWriter::MetricsWriter(const std::string& dir, bool append) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  std::string path = dir + "/metrics.jsonl";
  f_ = std::fopen(path.c_str(), append ? "a" : "w");
  if (!f_) COHORT_THROW(IoError, "cannot write metrics file ", path);
}

MetricsWriter::~MetricsWriter() {
  if (f_) std::fclose(f_);
}

void MetricsWriter::write(const nlohmann::json& record) {
  std::string line = record.dump() + "\n";
  std::fwrite(line.data(), 1, line.size(), f_);
  std::fflush(f_);
}

}  // namespace cohort::trainer
