#include "collectives/store/token.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "core/util/error.h"

namespace cohort::collectives {
namespace {

constexpr size_t kTokenBytes = 32;
constexpr const char* kWorkerPrefix = "worker:";

std::string from_hex(const std::string& hex) {
  auto digit = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  if (hex.size() % 2) return {};
  std::string out(hex.size() / 2, '\0');
  for (size_t i = 0; i < out.size(); ++i) {
    const int hi = digit(hex[2 * i]), lo = digit(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return {};
    out[i] = static_cast<char>(hi * 16 + lo);
  }
  return out;
}

std::string trim(std::string s) {
  const auto first = s.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return {};
  return s.substr(first, s.find_last_not_of(" \t\r\n") - first + 1);
}

const char* var(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? v : nullptr;
}

std::string key_file_path() {
  if (const char* f = var("COHORT_KEY_FILE")) return f;
  const char* home = var("HOME");
  if (!home)
    COHORT_THROW(AuthError,
                 "HOME is not set, so there is no ~/.cohort/key to derive this job's token from; "
                 "set COHORT_TOKEN, COHORT_TOKEN_FILE or COHORT_KEY_FILE");
  return std::string(home) + "/.cohort/key";
}

// The user's key, created (0600, in a 0700 directory) by whichever process comes first: written
// to a private temporary file and linked into place, so a racing process reads either nothing
// (and links its own, which fails) or a complete key.
std::string user_key() {
  const std::string path = key_file_path();
  if (::access(path.c_str(), F_OK) != 0) {
    const std::filesystem::path dir = std::filesystem::path(path).parent_path();
    if (!dir.empty() && ::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
      COHORT_THROW(AuthError, "cannot create ", dir.string(),
                   " for the key file: ", std::strerror(errno));
    const std::string tmp = path + ".tmp." + std::to_string(::getpid());
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
      COHORT_THROW(AuthError, "cannot create the key file ", path, ": ", std::strerror(errno));
    const std::string text = to_hex(random_bytes(kTokenBytes)) + "\n";
    const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) &&
                    ::fsync(fd) == 0;
    ::close(fd);
    if (ok) (void)::link(tmp.c_str(), path.c_str());  // EEXIST: another process was first
    ::unlink(tmp.c_str());
  }
  const std::string hex = read_private_file(path, "the key file");
  const std::string key = from_hex(hex);
  if (key.size() < 16)
    COHORT_THROW(AuthError, "the key file ", path,
                 " does not hold at least 32 hex digits; remove it to have a new one made");
  return key;
}

}  // namespace

const char* role_name(StoreRole role) { return role == StoreRole::kAgent ? "agent" : "worker"; }

std::string random_bytes(size_t n) {
  std::string out(n, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(n)) != 1)
    COHORT_THROW(Error, "OpenSSL could not produce random bytes");
  return out;
}

std::string hmac_sha256(const std::string& key, const std::string& message) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (!HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
            reinterpret_cast<const unsigned char*>(message.data()), message.size(), mac, &len))
    COHORT_THROW(Error, "OpenSSL could not compute an HMAC");
  return std::string(reinterpret_cast<const char*>(mac), len);
}

std::string to_hex(const std::string& bytes) {
  static const char* kDigits = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    out += kDigits[c >> 4];
    out += kDigits[c & 15];
  }
  return out;
}

bool equal_in_constant_time(const std::string& a, const std::string& b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::string read_private_file(const std::string& path, const std::string& what) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) COHORT_THROW(AuthError, "cannot open ", what, " ", path, ": ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    COHORT_THROW(AuthError, what, " ", path, " is not a regular file");
  }
  if (st.st_uid != ::geteuid() || (st.st_mode & 077) != 0) {
    ::close(fd);
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    COHORT_THROW(AuthError, what, " ", path, " must belong to this user and be private (mode ",
                 mode, "); chmod 600 ", path);
  }
  std::string text(4097, '\0');
  const ssize_t n = ::read(fd, text.data(), text.size());
  ::close(fd);
  if (n < 0) COHORT_THROW(AuthError, "cannot read ", what, " ", path, ": ", std::strerror(errno));
  if (n > 4096) COHORT_THROW(AuthError, what, " ", path, " is larger than 4 KiB");
  text.resize(static_cast<size_t>(n));
  return trim(text);
}

JobToken JobToken::generate() { return JobToken(random_bytes(kTokenBytes), true); }

JobToken JobToken::parse(const std::string& text_in, const std::string& where) {
  std::string text = trim(text_in);
  bool job = true;
  if (text.rfind(kWorkerPrefix, 0) == 0) {
    job = false;
    text = text.substr(std::strlen(kWorkerPrefix));
  }
  std::string bytes = text.size() == 2 * kTokenBytes ? from_hex(text) : std::string();
  if (bytes.size() != kTokenBytes)
    COHORT_THROW(AuthError, where,
                 " is not a job token: expected 64 hex digits, or 'worker:' and 64 hex digits (",
                 text_in.size(), " characters given)");
  return JobToken(std::move(bytes), job);
}

std::optional<JobToken> JobToken::from_environment() {
  if (const char* t = var("COHORT_TOKEN")) return parse(t, "COHORT_TOKEN");
  if (const char* f = var("COHORT_TOKEN_FILE"))
    return parse(read_private_file(f, "COHORT_TOKEN_FILE"), std::string("COHORT_TOKEN_FILE ") + f);
  return std::nullopt;
}

JobToken JobToken::for_job(const std::string& job_id) {
  return JobToken(hmac_sha256(user_key(), "cohort job token v1|" + job_id), true);
}

JobToken JobToken::worker() const {
  if (empty()) return *this;
  return job_ ? JobToken(hmac_sha256(bytes_, "cohort store worker v1"), false) : *this;
}

std::string JobToken::role_key(StoreRole role) const {
  if (empty())
    COHORT_THROW(AuthError, "this process has no job token: set COHORT_TOKEN or COHORT_TOKEN_FILE");
  if (role == StoreRole::kWorker) return worker().bytes_;
  if (!job_)
    COHORT_THROW(AuthError,
                 "a worker's token cannot act as an agent: the agent role needs the "
                 "job's token (COHORT_TOKEN without 'worker:')");
  return hmac_sha256(bytes_, "cohort store agent v1");
}

std::string JobToken::derive_secret(const std::string& label) const {
  if (empty())
    COHORT_THROW(AuthError, "this process has no job token to derive the ", label,
                 " secret from: set COHORT_TOKEN or COHORT_TOKEN_FILE");
  return to_hex(hmac_sha256(worker().bytes_, "cohort secret v1|" + label));
}

std::string JobToken::to_text() const { return (job_ ? "" : kWorkerPrefix) + to_hex(bytes_); }

}  // namespace cohort::collectives
