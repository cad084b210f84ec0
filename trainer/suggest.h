// "did you mean" for misspelt config keys, layer names and arguments.
#pragma once

#include <string>
#include <vector>

namespace cohort::trainer {

// The candidate closest to `word` by edit distance if it is within 3 edits, else "".
std::string closest(const std::string& word, const std::vector<std::string>& candidates);

// "; did you mean 'x'?" for the closest candidate, or "".
inline std::string did_you_mean(const std::string& word,
                                const std::vector<std::string>& candidates) {
  std::string c = closest(word, candidates);
  return c.empty() ? "" : "; did you mean '" + c + "'?";
}

}  // namespace cohort::trainer
