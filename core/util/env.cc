#include "core/util/env.h"

#include <charconv>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/util/error.h"

namespace cohort::env {

namespace {

bool parse(const char* begin, const char* end, int64_t& out) {
  auto [p, ec] = std::from_chars(begin, end, out);
  return ec == std::errc() && p == end;
}

}  // namespace

const char* get(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? v : nullptr;
}

int64_t integer(const char* name, int64_t fallback, int64_t min, int64_t max) {
  const char* v = get(name);
  if (!v) return fallback;
  int64_t out = 0;
  if (!parse(v, v + std::strlen(v), out) || out < min || out > max)
    COHORT_THROW(ConfigError, "environment variable ", name, "='", std::string(v).substr(0, 64),
                 "' is not an integer in ", min, "..", max);
  return out;
}

bool flag(const char* name, bool fallback) {
  const char* v = get(name);
  if (!v) return fallback;
  const std::string s(v);
  if (s == "1" || s == "true" || s == "yes" || s == "on") return true;
  if (s == "0" || s == "false" || s == "no" || s == "off") return false;
  COHORT_THROW(ConfigError, "environment variable ", name, "='", s.substr(0, 64),
               "' is not 0 or 1");
}

bool integer_pair(const char* name, const char* form, int64_t& a, int64_t& b) {
  const char* v = get(name);
  if (!v) return false;
  const char* colon = std::strchr(v, ':');
  const char* end = v + std::strlen(v);
  if (!colon || !parse(v, colon, a) || !parse(colon + 1, end, b) || a < 0 || b < 0)
    COHORT_THROW(ConfigError, "environment variable ", name, "='", std::string(v).substr(0, 64),
                 "' is not ", form);
  return true;
}

}  // namespace cohort::env
