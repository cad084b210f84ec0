#include "collectives/store/store_state.h"

#include <exception>
#include <utility>

namespace cohort::collectives {
namespace {

StoreOutcome answer(uint8_t code, wire::Fields fields, std::string changed = "") {
  StoreOutcome o;
  o.code = code;
  o.fields = std::move(fields);
  o.changed = std::move(changed);
  return o;
}

StoreOutcome error(std::string message) { return answer(1, {std::move(message)}); }

// Keys in messages: at most 64 bytes of them, as a peer chose them.
std::string shown(const std::string& key) { return key.substr(0, 64); }

}  // namespace

StoreState::StoreState(TcpStoreLimits limits, std::string agent_prefix)
    : limits_(limits), agent_prefix_(std::move(agent_prefix)) {}

size_t StoreState::max_frame() const {
  return 5 + 3 * 4 + limits_.max_key_bytes + 2 * limits_.max_value_bytes;
}

std::string StoreState::put(const std::string& key, const std::string& value) {
  if (value.size() > limits_.max_value_bytes)
    return "value of " + std::to_string(value.size()) + " bytes for key '" + shown(key) +
           "' exceeds the store's limit of " + std::to_string(limits_.max_value_bytes) + " bytes";
  auto it = data_.find(key);
  const size_t before = it == data_.end() ? 0 : key.size() + it->second.size();
  const size_t after = key.size() + value.size();
  if (bytes_ - before + after > limits_.max_total_bytes)
    return "the store holds " + std::to_string(bytes_) + " bytes and its limit is " +
           std::to_string(limits_.max_total_bytes) + "; key '" + shown(key) + "' does not fit";
  bytes_ = bytes_ - before + after;
  data_[key] = value;
  return "";
}

std::string StoreState::forbidden(StoreRole role, const wire::Fields& keys, size_t count) const {
  for (size_t i = 0; i < count && i < keys.size(); ++i) {
    if (keys[i].size() > limits_.max_key_bytes)
      return "key of " + std::to_string(keys[i].size()) + " bytes exceeds the store's limit of " +
             std::to_string(limits_.max_key_bytes) + " bytes";
    if (role != StoreRole::kAgent && !agent_prefix_.empty() &&
        keys[i].compare(0, agent_prefix_.size(), agent_prefix_) == 0)
      return "key '" + shown(keys[i]) +
             "' belongs to the launcher's agents; a worker may not use it";
  }
  return "";
}

wire::Fields StoreState::answer_parked(uint8_t op, const std::string& first_key) const {
  if (op != wire::kGet) return {};
  auto it = data_.find(first_key);
  return {it == data_.end() ? std::string() : it->second};
}

StoreOutcome StoreState::execute(StoreRole role, const char* body, size_t size) {
  uint8_t op = 0;
  wire::Fields f;
  if (!wire::decode(body, size, op, f)) {
    StoreOutcome o;
    o.kind = StoreOutcome::Kind::kClose;
    return o;
  }
  StoreOutcome o;
  try {
    o = run(role, op, f);
  } catch (const std::exception& e) {
    o = error(e.what());
  }
  o.op = op;
  return o;
}

StoreOutcome StoreState::run(StoreRole role, uint8_t op, const wire::Fields& f) {
  auto malformed = [&](size_t n) { return f.size() != n; };
  // Every op but NUM_KEYS names keys: its first field (SET, GET, ADD, COMPARE_SET, DELETE) or all
  // of them (CHECK, WAIT).
  if (op != wire::kNumKeys) {
    const size_t keyed = (op == wire::kCheck || op == wire::kWait) ? f.size() : 1;
    if (std::string why = forbidden(role, f, keyed); !why.empty()) return error(why);
  }
  switch (op) {
    case wire::kSet: {
      if (malformed(2)) return error("malformed request");
      if (std::string why = put(f[0], f[1]); !why.empty()) return error(why);
      return answer(0, {}, f[0]);
    }
    case wire::kGet:
    case wire::kWait: {
      if (op == wire::kGet && malformed(1)) return error("malformed request");
      StoreOutcome o;
      for (const auto& k : f)
        if (!data_.count(k)) o.fields.push_back(k);
      if (o.fields.empty()) return answer(0, answer_parked(op, f.empty() ? "" : f[0]));
      o.kind = StoreOutcome::Kind::kPark;
      return o;
    }
    case wire::kAdd: {
      if (malformed(2)) return error("malformed request");
      auto it = data_.find(f[0]);
      const int64_t current = it == data_.end() ? 0 : parse_stored_int(f[0], it->second);
      const int64_t delta = parse_stored_int("delta", f[1]);
      int64_t v;
      if (__builtin_add_overflow(current, delta, &v))
        return error("adding " + f[1].substr(0, 32) + " to key '" + shown(f[0]) +
                     "' overflows a 64-bit integer");
      if (std::string why = put(f[0], std::to_string(v)); !why.empty()) return error(why);
      return answer(0, {std::to_string(v)}, f[0]);
    }
    case wire::kCompareSet: {
      if (malformed(3)) return error("malformed request");
      auto it = data_.find(f[0]);
      const bool swap = it == data_.end() ? f[1].empty() : it->second == f[1];
      if (!swap) return answer(0, {it == data_.end() ? f[1] : it->second});
      if (std::string why = put(f[0], f[2]); !why.empty()) return error(why);
      return answer(0, {f[2]}, f[0]);
    }
    case wire::kCheck: {
      bool all = true;
      for (const auto& k : f) all = all && data_.count(k);
      return answer(0, {all ? "1" : "0"});
    }
    case wire::kDelete: {
      if (malformed(1)) return error("malformed request");
      auto it = data_.find(f[0]);
      if (it == data_.end()) return answer(0, {"0"});
      bytes_ -= it->first.size() + it->second.size();
      data_.erase(it);
      return answer(0, {"1"});
    }
    case wire::kNumKeys:
      return answer(0, {std::to_string(data_.size())});
    default:
      return error("unknown request " + std::to_string(op));
  }
}

}  // namespace cohort::collectives
