// The TcpStore server's keys and the rules for changing them, apart from any socket: what one
// decoded request does, given the role that sent it. The server's io thread owns one; the fuzzer
// drives one directly (fuzz/store_protocol.cc).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

#include "collectives/store/tcp_store.h"
#include "collectives/store/tcp_store_protocol.h"

namespace cohort::collectives {

struct StoreOutcome {
  enum class Kind {
    kAnswer,  // reply with `code` and `fields`
    kPark,    // a GET or WAIT whose keys (`fields`) do not all exist yet
    kClose,   // a malformed request: drop the connection
  };
  Kind kind = Kind::kAnswer;
  uint8_t code = 0;  // 0 ok, 1 error (the message in fields[0])
  wire::Fields fields;
  uint8_t op = 0;       // the request's op
  std::string changed;  // a key that now has a value: its waiters may be answered
};

class StoreState {
 public:
  StoreState(TcpStoreLimits limits, std::string agent_prefix);

  // Executes one request body (wire::decode's input). Never throws.
  StoreOutcome execute(StoreRole role, const char* body, size_t size);
  // The reply to a parked request whose keys all exist now: GET's value, or nothing for WAIT.
  wire::Fields answer_parked(uint8_t op, const std::string& first_key) const;
  bool has(const std::string& key) const { return data_.count(key) != 0; }
  // The largest request body the limits allow (COMPARE_SET: a key and two values).
  size_t max_frame() const;
  const TcpStoreLimits& limits() const { return limits_; }
  size_t bytes() const { return bytes_; }
  size_t size() const { return data_.size(); }

 private:
  // Stores key = value within the limits; returns the error to answer, or "".
  std::string put(const std::string& key, const std::string& value);
  // The error for the first key `role` may not use, or "".
  std::string forbidden(StoreRole role, const wire::Fields& keys, size_t count) const;
  StoreOutcome run(StoreRole role, uint8_t op, const wire::Fields& f);

  TcpStoreLimits limits_;
  std::string agent_prefix_;
  std::map<std::string, std::string> data_;
  size_t bytes_ = 0;  // keys and values together
};

}  // namespace cohort::collectives
