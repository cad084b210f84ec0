// Grad mode: whether ops record autograd history on this thread. NoGradGuard turns it off for a
// scope (evaluation, optimiser updates); the backward engine also runs with it off.
#pragma once

namespace cohort::core::autograd {

class GradMode {
 public:
  static bool is_enabled();
  static void set_enabled(bool enabled);
};

class NoGradGuard {
 public:
  NoGradGuard() : prev_(GradMode::is_enabled()) { GradMode::set_enabled(false); }
  ~NoGradGuard() { GradMode::set_enabled(prev_); }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};

}  // namespace cohort::core::autograd
