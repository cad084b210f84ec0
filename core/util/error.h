// Cohort's error hierarchy and checks. Library code throws; only executables decide exit codes.
// Every message is one sentence a user can act on; COHORT_CHECK adds the file and line for
// developers.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace cohort {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};
class InvalidArgument : public Error {
  using Error::Error;
};
class ConfigError : public Error {
  using Error::Error;
};
class IoError : public Error {
  using Error::Error;
};
class TimeoutError : public Error {
  using Error::Error;
};
class DistributedError : public Error {
  using Error::Error;
};
class CudaError : public Error {
  using Error::Error;
};
// An allocation the system refused (a memory limit such as ulimit -v or a cgroup's, or the
// machine's memory).
class OutOfMemoryError : public Error {
  using Error::Error;
};
// A token that is missing, malformed or refused (by the store or a parameter server), or a secret
// file that other users can read.
class AuthError : public Error {
  using Error::Error;
};

namespace detail {
template <typename... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}
}  // namespace detail

}  // namespace cohort

// COHORT_CHECK(cond, parts...) throws cohort::InvalidArgument built from the parts (streamed in
// order).
#define COHORT_CHECK(cond, ...)                                                       \
  do {                                                                                \
    if (!(cond)) [[unlikely]]                                                         \
      throw ::cohort::InvalidArgument(                                                \
          ::cohort::detail::concat(__VA_ARGS__, " [", __FILE__, ":", __LINE__, "]")); \
  } while (0)

// COHORT_THROW(Type, parts...) throws the given error type with a message built from the parts.
#define COHORT_THROW(Type, ...) throw Type(::cohort::detail::concat(__VA_ARGS__))
