#include "collectives/store/file_store.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "core/util/error.h"

namespace cohort::collectives {
namespace {

constexpr char kSet = 'S', kDelete = 'D';
const std::string kUsersKey = "\x01cohort_file_store_users";

void write_all(int fd, const char* p, size_t n, const std::string& path) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) COHORT_THROW(IoError, "FileStore ", path, ": write failed: ", std::strerror(errno));
    p += w;
    n -= static_cast<size_t>(w);
  }
}

void put_u32(std::string& s, uint32_t v) { s.append(reinterpret_cast<const char*>(&v), 4); }

}  // namespace

// Holds the in-process mutex and the exclusive file lock, and brings data_ up to date.
class FileStore::Locked {
 public:
  explicit Locked(FileStore& s) : s_(s), lock_(s.mu_) {
    while (::flock(s_.fd_, LOCK_EX) != 0) {
      if (errno != EINTR)
        COHORT_THROW(IoError, "FileStore ", s_.path_, ": flock failed: ", std::strerror(errno));
    }
    s_.refresh();
  }
  ~Locked() { ::flock(s_.fd_, LOCK_UN); }

 private:
  FileStore& s_;
  std::lock_guard<std::mutex> lock_;
};

FileStore::FileStore(std::string path, Millis timeout) : path_(std::move(path)) {
  timeout_ = timeout;
  fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) COHORT_THROW(IoError, "cannot open FileStore ", path_, ": ", std::strerror(errno));
  add(kUsersKey, 1);
}

FileStore::~FileStore() {
  try {
    Locked l(*this);
    auto it = data_.find(kUsersKey);
    int64_t users = it == data_.end() ? 1 : parse_stored_int(kUsersKey, it->second);
    if (users <= 1) {
      ::unlink(path_.c_str());
    } else {
      append(kSet, kUsersKey, std::to_string(users - 1));
    }
  } catch (...) {
    // A destructor cannot report; the file is only left behind.
  }
  ::close(fd_);
}

void FileStore::refresh() {
  struct stat st {};
  if (::fstat(fd_, &st) != 0)
    COHORT_THROW(IoError, "FileStore ", path_, ": fstat failed: ", std::strerror(errno));
  if (st.st_size <= offset_) return;
  std::string buf(static_cast<size_t>(st.st_size - offset_), '\0');
  size_t got = 0;
  while (got < buf.size()) {
    ssize_t r =
        ::pread(fd_, buf.data() + got, buf.size() - got, offset_ + static_cast<int64_t>(got));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) COHORT_THROW(IoError, "FileStore ", path_, ": read failed: ", std::strerror(errno));
    got += static_cast<size_t>(r);
  }
  size_t p = 0;
  auto u32 = [&](uint32_t& v) {
    if (p + 4 > buf.size()) return false;
    std::memcpy(&v, buf.data() + p, 4);
    p += 4;
    return true;
  };
  while (p < buf.size()) {
    const size_t start = p;
    char type = buf[p++];
    uint32_t kl = 0, vl = 0;
    if (!u32(kl) || p + kl > buf.size())
      COHORT_THROW(IoError, "FileStore ", path_, " is corrupt at byte ",
                   offset_ + static_cast<int64_t>(start));
    std::string key = buf.substr(p, kl);
    p += kl;
    if (!u32(vl) || p + vl > buf.size())
      COHORT_THROW(IoError, "FileStore ", path_, " is corrupt at byte ",
                   offset_ + static_cast<int64_t>(start));
    if (type == kSet) {
      data_[key] = buf.substr(p, vl);
    } else if (type == kDelete) {
      data_.erase(key);
    } else {
      COHORT_THROW(IoError, "FileStore ", path_, " is corrupt at byte ",
                   offset_ + static_cast<int64_t>(start));
    }
    p += vl;
  }
  offset_ = st.st_size;
}

void FileStore::append(char type, const std::string& key, const std::string& value) {
  std::string rec(1, type);
  put_u32(rec, static_cast<uint32_t>(key.size()));
  rec += key;
  put_u32(rec, static_cast<uint32_t>(value.size()));
  rec += value;
  if (::lseek(fd_, 0, SEEK_END) < 0)
    COHORT_THROW(IoError, "FileStore ", path_, ": seek failed: ", std::strerror(errno));
  write_all(fd_, rec.data(), rec.size(), path_);
  offset_ += static_cast<int64_t>(rec.size());
  if (type == kSet) {
    data_[key] = value;
  } else {
    data_.erase(key);
  }
}

void FileStore::set(const std::string& key, const std::string& value) {
  Locked l(*this);
  append(kSet, key, value);
}

std::string FileStore::get(const std::string& key) {
  wait({key}, timeout_);
  Locked l(*this);
  auto it = data_.find(key);
  if (it == data_.end())
    COHORT_THROW(DistributedError, "FileStore ", path_, ": key '", key,
                 "' was deleted while being read");
  return it->second;
}

int64_t FileStore::add(const std::string& key, int64_t delta) {
  Locked l(*this);
  auto it = data_.find(key);
  int64_t v = (it == data_.end() ? 0 : parse_stored_int(key, it->second)) + delta;
  append(kSet, key, std::to_string(v));
  return v;
}

std::string FileStore::compare_set(const std::string& key, const std::string& expected,
                                   const std::string& desired) {
  Locked l(*this);
  auto it = data_.find(key);
  if (it == data_.end()) {
    if (!expected.empty()) return expected;
    append(kSet, key, desired);
    return desired;
  }
  if (it->second == expected) append(kSet, key, desired);
  return data_[key];
}

bool FileStore::check(const std::vector<std::string>& keys) {
  Locked l(*this);
  for (const auto& k : keys)
    if (!data_.count(k)) return false;
  return true;
}

void FileStore::wait(const std::vector<std::string>& keys, Millis timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  auto pause = std::chrono::microseconds(200);
  while (!check(keys)) {
    if (std::chrono::steady_clock::now() >= deadline)
      COHORT_THROW(TimeoutError, "FileStore ", path_, ": timed out after ", timeout.count(),
                   " ms waiting for keys ", describe_keys(keys));
    std::this_thread::sleep_for(pause);
    pause = std::min<std::chrono::microseconds>(pause * 2, std::chrono::milliseconds(20));
  }
}

bool FileStore::delete_key(const std::string& key) {
  Locked l(*this);
  if (!data_.count(key)) return false;
  append(kDelete, key, "");
  return true;
}

int64_t FileStore::num_keys() {
  Locked l(*this);
  return static_cast<int64_t>(data_.size()) - static_cast<int64_t>(data_.count(kUsersKey));
}

}  // namespace cohort::collectives

namespace cohort::collectives {

std::shared_ptr<Store> FileStore::clone() { return std::make_shared<FileStore>(path_, timeout_); }

}  // namespace cohort::collectives
