#include "launcher/slurm_env.h"

#include <charconv>

#include "core/util/error.h"

namespace cohort::launcher {
namespace {

[[noreturn]] void malformed(const std::string& what, const std::string& list) {
  COHORT_THROW(ConfigError, "the Slurm ", what, " '", list, "' is malformed");
}

int to_int(const std::string& s, const std::string& what, const std::string& list) {
  int v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || end != s.data() + s.size() || v < 0) malformed(what, list);
  return v;
}

// Splits at commas that are not inside brackets.
std::vector<std::string> split_top(const std::string& s, const std::string& list) {
  std::vector<std::string> parts;
  int depth = 0;
  std::string cur;
  for (char c : s) {
    if (c == '[') ++depth;
    if (c == ']') --depth;
    if (depth < 0 || depth > 1) malformed("host list", list);
    if (c == ',' && depth == 0) {
      parts.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (depth != 0) malformed("host list", list);
  parts.push_back(cur);
  return parts;
}

void expand_name(const std::string& name, const std::string& list, std::vector<std::string>& out) {
  const size_t open = name.find('[');
  if (open == std::string::npos) {
    if (name.empty()) malformed("host list", list);
    out.push_back(name);
    return;
  }
  const size_t close = name.find(']', open);
  const std::string head = name.substr(0, open), tail = name.substr(close + 1);
  std::string ranges = name.substr(open + 1, close - open - 1) + ",";
  size_t start = 0, comma;
  while ((comma = ranges.find(',', start)) != std::string::npos) {
    const std::string r = ranges.substr(start, comma - start);
    start = comma + 1;
    const size_t dash = r.find('-');
    const std::string lo_s = r.substr(0, dash);
    const std::string hi_s = dash == std::string::npos ? lo_s : r.substr(dash + 1);
    const int lo = to_int(lo_s, "host list", list), hi = to_int(hi_s, "host list", list);
    if (hi < lo || hi - lo > 100000) malformed("host list", list);
    for (int v = lo; v <= hi; ++v) {
      std::string num = std::to_string(v);
      if (num.size() < lo_s.size()) num.insert(0, lo_s.size() - num.size(), '0');
      expand_name(head + num + tail, list, out);  // later brackets of the same name
    }
  }
}

}  // namespace

std::vector<std::string> expand_hostlist(const std::string& list) {
  std::vector<std::string> out;
  for (const auto& part : split_top(list, list)) expand_name(part, list, out);
  return out;
}

std::vector<int> expand_tasks_per_node(const std::string& list) {
  std::vector<int> out;
  size_t start = 0;
  const std::string s = list + ",";
  size_t comma;
  while ((comma = s.find(',', start)) != std::string::npos) {
    const std::string item = s.substr(start, comma - start);
    start = comma + 1;
    const size_t paren = item.find("(x");
    if (paren == std::string::npos) {
      out.push_back(to_int(item, "task list", list));
      continue;
    }
    if (item.back() != ')') malformed("task list", list);
    const int count = to_int(item.substr(0, paren), "task list", list);
    const int times = to_int(item.substr(paren + 2, item.size() - paren - 3), "task list", list);
    out.insert(out.end(), static_cast<size_t>(times), count);
  }
  return out;
}

int slurm_port(const std::string& job_id) {
  return 29500 + to_int(job_id, "job id", job_id) % 10000;
}

}  // namespace cohort::launcher
