// TensorBoard event files (events.out.tfevents.*): TFRecord framing around tensorflow.Event
// protocol buffers carrying scalar summaries, which TensorBoard, tbparse and TensorFlow read.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

namespace cohort::trainer {

class EventWriter {
 public:
  // Creates dir/events.out.tfevents.<unix time>.<host>.<pid> and writes the file-version record.
  // Throws IoError when the file cannot be created.
  explicit EventWriter(const std::string& dir);
  ~EventWriter();
  EventWriter(const EventWriter&) = delete;
  EventWriter& operator=(const EventWriter&) = delete;

  void add_scalar(std::string_view tag, double value, int64_t step);
  void flush();
  const std::string& path() const { return path_; }

 private:
  void write_record(const std::string& event);

  std::string path_;
  std::FILE* f_ = nullptr;
};

}  // namespace cohort::trainer
