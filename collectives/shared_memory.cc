#include "collectives/shared_memory.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/util/error.h"

namespace cohort::collectives {
namespace {

std::string read_first_line(const char* path) {
  std::ifstream f(path);
  std::string s;
  std::getline(f, s);
  return s;
}

}  // namespace

Mapping& Mapping::operator=(Mapping&& o) noexcept {
  if (this != &o) {
    if (addr_) ::munmap(addr_, size_);
    addr_ = std::exchange(o.addr_, nullptr);
    size_ = std::exchange(o.size_, 0);
  }
  return *this;
}

Mapping::~Mapping() {
  if (addr_) ::munmap(addr_, size_);
}

Mapping map_segment(const std::string& name, size_t size, bool create) {
  int fd = ::shm_open(name.c_str(), create ? (O_RDWR | O_CREAT | O_EXCL) : O_RDWR, 0600);
  if (fd < 0)
    COHORT_THROW(DistributedError, "cannot ", create ? "create" : "open", " shared memory ", name,
                 ": ", std::strerror(errno), create ? "; is /dev/shm full?" : "");
  if (create && ::ftruncate(fd, static_cast<off_t>(size)) != 0) {
    int e = errno;
    ::close(fd);
    ::shm_unlink(name.c_str());
    COHORT_THROW(DistributedError, "cannot size shared memory ", name, " to ", size,
                 " bytes: ", std::strerror(e), "; is /dev/shm full?");
  }
  if (!create) {
    struct stat st {};
    if (::fstat(fd, &st) != 0 || static_cast<size_t>(st.st_size) < size) {
      ::close(fd);
      COHORT_THROW(DistributedError, "shared memory ", name, " has ",
                   static_cast<long long>(st.st_size), " bytes, not the ", size, " expected");
    }
  }
  // Populated up front: otherwise the first pass over the memory takes a page fault per 4 KiB on
  // both sides (a 4 KiB all-reduce ran 5x slower until the rings had wrapped).
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED)
    COHORT_THROW(DistributedError, "cannot map shared memory ", name, ": ", std::strerror(errno));
  return Mapping(p, size);
}

void unlink_segment(const std::string& name) { ::shm_unlink(name.c_str()); }

namespace {

// Field 22 of /proc/<pid>/stat: when the process started, in clock ticks after boot. Empty when
// the process is gone.
std::string start_time(int pid) {
  const std::string stat = read_first_line(("/proc/" + std::to_string(pid) + "/stat").c_str());
  size_t at = stat.rfind(')');  // the command name may itself hold spaces or parens
  if (at == std::string::npos) return "";
  // After ") " come fields 3, 4, ...: skip to field 22.
  for (int field = 2; field < 22 && at != std::string::npos; ++field) at = stat.find(' ', at + 1);
  if (at == std::string::npos) return "";
  const size_t end = stat.find(' ', at + 1);
  return stat.substr(at + 1, end == std::string::npos ? std::string::npos : end - at - 1);
}

constexpr const char* kSegmentPrefix = "cohort-";

}  // namespace

std::string owned_segment_name(const std::string& what) {
  // Not cached: a forked child is another owner.
  const std::string owner = std::to_string(::getpid()) + "_" + start_time(::getpid());
  return "/" + std::string(kSegmentPrefix) + owner + "-" + what;
}

int remove_orphaned_segments() {
  std::error_code ec;
  int removed = 0;
  const std::string prefix = kSegmentPrefix;
  for (const auto& entry : std::filesystem::directory_iterator("/dev/shm", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.compare(0, prefix.size(), prefix) != 0) continue;
    // cohort-<pid>_<start>-...: anything else is not ours to judge.
    const size_t underscore = name.find('_', prefix.size());
    const size_t dash = underscore == std::string::npos ? underscore : name.find('-', underscore);
    if (dash == std::string::npos) continue;
    const std::string pid = name.substr(prefix.size(), underscore - prefix.size());
    const std::string started = name.substr(underscore + 1, dash - underscore - 1);
    if (pid.empty() || pid.size() > 9 || pid.find_first_not_of("0123456789") != std::string::npos ||
        started.empty() || started.find_first_not_of("0123456789") != std::string::npos)
      continue;
    const int owner = std::stoi(pid);
    if (process_exited(owner) || start_time(owner) != started) {
      unlink_segment("/" + name);
      ++removed;
    }
  }
  return removed;
}

bool process_exited(int pid) {
  if (pid <= 0) return false;
  if (::kill(pid, 0) != 0) return errno == ESRCH;
  // A zombie still answers kill() until its parent reaps it; its state says it has exited.
  const std::string stat = read_first_line(("/proc/" + std::to_string(pid) + "/stat").c_str());
  const size_t paren = stat.rfind(')');  // the command name may itself hold spaces or parens
  return paren != std::string::npos && paren + 2 < stat.size() &&
         (stat[paren + 2] == 'Z' || stat[paren + 2] == 'X');
}

std::string node_identity(std::string& host) {
  char buf[256] = {};
  ::gethostname(buf, sizeof buf - 1);
  host = buf;
  auto ns = [](const char* path) {
    char link[128] = {};
    ssize_t n = ::readlink(path, link, sizeof link - 1);
    return std::string(link, n > 0 ? static_cast<size_t>(n) : 0);
  };
  return host + "/" + read_first_line("/proc/sys/kernel/random/boot_id") + "/" +
         ns("/proc/self/ns/net") + "/" + ns("/proc/self/ns/pid");
}

std::string node_identity() {
  std::string host;
  return node_identity(host);
}

}  // namespace cohort::collectives
