// The key-value store that ranks rendezvous through: connection addresses, NCCL ids, barriers and
// the progress reports that turn a collective timeout into an error naming the missing ranks.
// Values are byte strings. Every blocking call has a timeout and throws TimeoutError naming the
// keys (and, for TcpStore, the server) when it expires.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace cohort::collectives {

using Millis = std::chrono::milliseconds;

class Store : public std::enable_shared_from_this<Store> {
 public:
  static constexpr Millis kDefaultTimeout{std::chrono::seconds(300)};

  virtual ~Store() = default;

  virtual void set(const std::string& key, const std::string& value) = 0;
  // Waits up to timeout() for the key to exist, then returns its value.
  virtual std::string get(const std::string& key) = 0;
  // Adds delta to the integer stored at key (a missing key counts as 0); returns the new value.
  virtual int64_t add(const std::string& key, int64_t delta) = 0;
  // Sets key to desired if its value is expected (or if it is missing and expected is empty);
  // returns the value the key holds afterwards.
  virtual std::string compare_set(const std::string& key, const std::string& expected,
                                  const std::string& desired) = 0;
  // True when every key exists; never blocks.
  virtual bool check(const std::vector<std::string>& keys) = 0;
  // Waits until every key exists or the timeout expires (TimeoutError).
  virtual void wait(const std::vector<std::string>& keys, Millis timeout) = 0;
  void wait(const std::vector<std::string>& keys) { wait(keys, timeout_); }
  // Returns whether the key existed.
  virtual bool delete_key(const std::string& key) = 0;
  virtual int64_t num_keys() = 0;
  // Another handle on the same keys with a connection of its own, so that a thread using it never
  // queues behind another thread's blocking call on this one (TcpStore clients serialise calls).
  // The store must be owned by a shared_ptr.
  virtual std::shared_ptr<Store> clone() = 0;

  Millis timeout() const { return timeout_; }
  void set_timeout(Millis t) { timeout_ = t; }

 protected:
  Millis timeout_ = kDefaultTimeout;
};

// Every key gets "<prefix>/" in front: how process groups and subsystems share one store.
class PrefixStore final : public Store {
 public:
  PrefixStore(std::string prefix, std::shared_ptr<Store> store);
  void set(const std::string& key, const std::string& value) override;
  std::string get(const std::string& key) override;
  int64_t add(const std::string& key, int64_t delta) override;
  std::string compare_set(const std::string& key, const std::string& expected,
                          const std::string& desired) override;
  bool check(const std::vector<std::string>& keys) override;
  void wait(const std::vector<std::string>& keys, Millis timeout) override;
  using Store::wait;
  bool delete_key(const std::string& key) override;
  int64_t num_keys() override;
  std::shared_ptr<Store> clone() override;
  const std::shared_ptr<Store>& underlying() const { return store_; }

 private:
  std::string k(const std::string& key) const { return prefix_ + "/" + key; }
  std::vector<std::string> ks(const std::vector<std::string>& keys) const;
  std::string prefix_;
  std::shared_ptr<Store> store_;
};

// In-process store for tests and for threads standing in for ranks.
class HashStore final : public Store {
 public:
  HashStore();
  ~HashStore() override;
  void set(const std::string& key, const std::string& value) override;
  std::string get(const std::string& key) override;
  int64_t add(const std::string& key, int64_t delta) override;
  std::string compare_set(const std::string& key, const std::string& expected,
                          const std::string& desired) override;
  bool check(const std::vector<std::string>& keys) override;
  void wait(const std::vector<std::string>& keys, Millis timeout) override;
  using Store::wait;
  bool delete_key(const std::string& key) override;
  int64_t num_keys() override;
  std::shared_ptr<Store> clone() override;

 private:
  struct State;
  std::unique_ptr<State> s_;
};

// Formats keys for error messages: 'a', 'b' (at most a few, then "and N more").
std::string describe_keys(const std::vector<std::string>& keys);
// Parses a stored integer; throws DistributedError naming the key when it is not one.
int64_t parse_stored_int(const std::string& key, const std::string& value);

}  // namespace cohort::collectives
