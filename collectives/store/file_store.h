// A store in one file on a filesystem every rank can reach (NFS, Lustre, a local disk for one
// node): for clusters that allow no extra ports. The file is an append-only log of set/delete
// records guarded by flock(2); each client replays what others appended since it last looked.
// The last client to close the store removes the file.
#pragma once

#include <map>
#include <mutex>

#include "collectives/store/store.h"

namespace cohort::collectives {

class FileStore final : public Store {
 public:
  // Opens (creating if needed) the store at path; throws IoError naming the path when it cannot.
  explicit FileStore(std::string path, Millis timeout = kDefaultTimeout);
  ~FileStore() override;
  FileStore(const FileStore&) = delete;
  FileStore& operator=(const FileStore&) = delete;

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
  class Locked;
  void refresh();  // caller holds the file lock
  void append(char type, const std::string& key, const std::string& value);

  std::string path_;
  int fd_ = -1;
  std::mutex mu_;  // the flock is per open file description, so threads serialise here first
  int64_t offset_ = 0;
  std::map<std::string, std::string> data_;
};

}  // namespace cohort::collectives
