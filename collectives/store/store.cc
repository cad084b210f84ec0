#include "collectives/store/store.h"

#include <charconv>
#include <condition_variable>
#include <map>
#include <mutex>

#include "core/util/error.h"

namespace cohort::collectives {

std::string describe_keys(const std::vector<std::string>& keys) {
  std::string out;
  const size_t shown = std::min<size_t>(keys.size(), 4);
  for (size_t i = 0; i < shown; ++i) out += (i ? ", '" : "'") + keys[i] + "'";
  if (keys.size() > shown) out += " and " + std::to_string(keys.size() - shown) + " more";
  return out;
}

int64_t parse_stored_int(const std::string& key, const std::string& value) {
  int64_t v = 0;
  auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
  if (ec != std::errc() || end != value.data() + value.size())
    COHORT_THROW(DistributedError, "store key '", key, "' holds '", value,
                 "', which is not an integer, so add() cannot update it");
  return v;
}

PrefixStore::PrefixStore(std::string prefix, std::shared_ptr<Store> store)
    : prefix_(std::move(prefix)), store_(std::move(store)) {
  timeout_ = store_->timeout();
}
void PrefixStore::set(const std::string& key, const std::string& value) {
  store_->set(k(key), value);
}
std::string PrefixStore::get(const std::string& key) { return store_->get(k(key)); }
int64_t PrefixStore::add(const std::string& key, int64_t delta) {
  return store_->add(k(key), delta);
}
std::string PrefixStore::compare_set(const std::string& key, const std::string& expected,
                                     const std::string& desired) {
  return store_->compare_set(k(key), expected, desired);
}
bool PrefixStore::check(const std::vector<std::string>& keys) { return store_->check(ks(keys)); }
void PrefixStore::wait(const std::vector<std::string>& keys, Millis timeout) {
  store_->wait(ks(keys), timeout);
}
bool PrefixStore::delete_key(const std::string& key) { return store_->delete_key(k(key)); }
int64_t PrefixStore::num_keys() { return store_->num_keys(); }
std::vector<std::string> PrefixStore::ks(const std::vector<std::string>& keys) const {
  std::vector<std::string> out;
  out.reserve(keys.size());
  for (const auto& key : keys) out.push_back(k(key));
  return out;
}

struct HashStore::State {
  std::mutex mu;
  std::condition_variable cv;
  std::map<std::string, std::string> data;
};

HashStore::HashStore() : s_(std::make_unique<State>()) {}
HashStore::~HashStore() = default;

void HashStore::set(const std::string& key, const std::string& value) {
  std::lock_guard<std::mutex> lock(s_->mu);
  s_->data[key] = value;
  s_->cv.notify_all();
}

std::string HashStore::get(const std::string& key) {
  wait({key}, timeout_);
  std::lock_guard<std::mutex> lock(s_->mu);
  auto it = s_->data.find(key);
  if (it == s_->data.end())
    COHORT_THROW(DistributedError, "HashStore: key '", key, "' was deleted while being read");
  return it->second;
}

int64_t HashStore::add(const std::string& key, int64_t delta) {
  std::lock_guard<std::mutex> lock(s_->mu);
  auto it = s_->data.find(key);
  int64_t v = (it == s_->data.end() ? 0 : parse_stored_int(key, it->second)) + delta;
  s_->data[key] = std::to_string(v);
  s_->cv.notify_all();
  return v;
}

std::string HashStore::compare_set(const std::string& key, const std::string& expected,
                                   const std::string& desired) {
  std::lock_guard<std::mutex> lock(s_->mu);
  auto it = s_->data.find(key);
  if (it == s_->data.end()) {
    if (!expected.empty()) return expected;  // as torch: a missing key reports `expected` back
    s_->data[key] = desired;
    s_->cv.notify_all();
    return desired;
  }
  if (it->second == expected) {
    it->second = desired;
    s_->cv.notify_all();
  }
  return it->second;
}

bool HashStore::check(const std::vector<std::string>& keys) {
  std::lock_guard<std::mutex> lock(s_->mu);
  for (const auto& k : keys)
    if (!s_->data.count(k)) return false;
  return true;
}

void HashStore::wait(const std::vector<std::string>& keys, Millis timeout) {
  std::unique_lock<std::mutex> lock(s_->mu);
  auto all = [&] {
    for (const auto& k : keys)
      if (!s_->data.count(k)) return false;
    return true;
  };
  if (!s_->cv.wait_for(lock, timeout, all))
    COHORT_THROW(TimeoutError, "HashStore: timed out after ", timeout.count(),
                 " ms waiting for keys ", describe_keys(keys));
}

bool HashStore::delete_key(const std::string& key) {
  std::lock_guard<std::mutex> lock(s_->mu);
  return s_->data.erase(key) > 0;
}

int64_t HashStore::num_keys() {
  std::lock_guard<std::mutex> lock(s_->mu);
  return static_cast<int64_t>(s_->data.size());
}

}  // namespace cohort::collectives

namespace cohort::collectives {

std::shared_ptr<Store> PrefixStore::clone() {
  return std::make_shared<PrefixStore>(prefix_, store_->clone());
}

// Every handle of an in-process store is the store itself.
std::shared_ptr<Store> HashStore::clone() { return shared_from_this(); }

}  // namespace cohort::collectives
