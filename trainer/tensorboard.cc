// The Event messages are encoded by hand: four fields of tensorflow/core/util/event.proto and
// summary.proto are all we write, and generating code for TensorFlow's protos would be a heavier
// dependency than the encoding itself.
#include "trainer/tensorboard.h"

#include <unistd.h>

#include <boost/crc.hpp>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "core/util/error.h"

namespace cohort::trainer {
namespace {

// Event fields: wall_time = 1 (double), step = 2 (int64), file_version = 3 (string),
// summary = 5 (Summary). Summary: value = 1 (Value). Value: tag = 1 (string), simple_value = 2
// (float).
void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

template <typename T>
void put_fixed(std::string& out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));  // protobuf and TFRecord are little-endian, as is every target
  out.append(b, sizeof(T));
}

void put_bytes(std::string& out, int field, std::string_view bytes) {
  put_varint(out, (static_cast<uint64_t>(field) << 3) | 2);
  put_varint(out, bytes.size());
  out.append(bytes);
}

std::string event_header(double wall_time, int64_t step) {
  std::string e;
  put_varint(e, (1 << 3) | 1);
  put_fixed(e, wall_time);
  put_varint(e, (2 << 3) | 0);
  put_varint(e, static_cast<uint64_t>(step));
  return e;
}

double unix_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

uint32_t masked_crc32c(const void* data, size_t n) {
  boost::crc_optimal<32, 0x1EDC6F41, 0xFFFFFFFF, 0xFFFFFFFF, true, true> crc;
  crc.process_bytes(data, n);
  const uint32_t c = crc.checksum();
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

}  // namespace

EventWriter::EventWriter(const std::string& dir) {
  char host[256] = "localhost";
  gethostname(host, sizeof host - 1);
  path_ = dir + "/events.out.tfevents." + std::to_string(static_cast<int64_t>(unix_seconds())) +
          "." + host + "." + std::to_string(getpid());
  f_ = std::fopen(path_.c_str(), "wb");
  if (!f_)
    COHORT_THROW(IoError, "cannot create TensorBoard event file ", path_, ": ",
                 std::strerror(errno));
  std::string e = event_header(unix_seconds(), 0);
  put_bytes(e, 3, "brain.Event:2");
  write_record(e);
  flush();
}

EventWriter::~EventWriter() { std::fclose(f_); }

void EventWriter::add_scalar(std::string_view tag, double value, int64_t step) {
  std::string v;
  put_bytes(v, 1, tag);
  put_varint(v, (2 << 3) | 5);
  put_fixed(v, static_cast<float>(value));
  std::string summary;
  put_bytes(summary, 1, v);
  std::string e = event_header(unix_seconds(), step);
  put_bytes(e, 5, summary);
  write_record(e);
}

void EventWriter::flush() { std::fflush(f_); }

// TFRecord: uint64 length, masked CRC-32C of the length, data, masked CRC-32C of the data.
void EventWriter::write_record(const std::string& event) {
  std::string rec;
  put_fixed(rec, static_cast<uint64_t>(event.size()));
  put_fixed(rec, masked_crc32c(rec.data(), 8));
  rec += event;
  put_fixed(rec, masked_crc32c(event.data(), event.size()));
  if (std::fwrite(rec.data(), 1, rec.size(), f_) != rec.size())
    COHORT_THROW(IoError, "cannot write TensorBoard event file ", path_, ": ",
                 std::strerror(errno));
}

}  // namespace cohort::trainer
