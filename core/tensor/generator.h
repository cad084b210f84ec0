// A seeded, checkpointable random generator (xoshiro256**). Random tensors are drawn on the CPU
// from it and copied to the target device, so a seed gives the same numbers on every device.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>

namespace cohort::core {

class Generator {
 public:
  explicit Generator(uint64_t seed = 0) { manual_seed(seed); }

  void manual_seed(uint64_t seed) {
    uint64_t x = seed;
    for (auto& s : state_) s = splitmix64(x);
    have_spare_ = false;
  }
  uint64_t next_u64() {
    const uint64_t result = rotl(state_[1] * 5, 7) * 9;
    const uint64_t t = state_[1] << 17;
    state_[2] ^= state_[0];
    state_[3] ^= state_[1];
    state_[1] ^= state_[2];
    state_[0] ^= state_[3];
    state_[2] ^= t;
    state_[3] = rotl(state_[3], 45);
    return result;
  }
  // Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }
  // Standard normal (Box–Muller, caching the second value).
  double normal() {
    if (have_spare_) {
      have_spare_ = false;
      return spare_;
    }
    double u1 = uniform(), u2 = uniform();
    if (u1 < 1e-300) u1 = 1e-300;
    double r = std::sqrt(-2.0 * std::log(u1));
    spare_ = r * std::sin(2 * M_PI * u2);
    have_spare_ = true;
    return r * std::cos(2 * M_PI * u2);
  }
  // Uniform integer in [0, n).
  uint64_t below(uint64_t n) {
    return n == 0 ? 0 : static_cast<uint64_t>(uniform() * static_cast<double>(n)) % n;
  }

  // Full state for checkpoints: four words of xoshiro state plus the cached normal.
  struct State {
    std::array<uint64_t, 4> s;
    bool have_spare;
    double spare;
  };
  State state() const { return {state_, have_spare_, spare_}; }
  void set_state(const State& st) {
    state_ = st.s;
    have_spare_ = st.have_spare;
    spare_ = st.spare;
  }

 private:
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  static uint64_t splitmix64(uint64_t& x) {
    uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  std::array<uint64_t, 4> state_{};
  bool have_spare_ = false;
  double spare_ = 0;
};

// The process-wide default generator (seeded by manual_seed or the trainer's `seed`).
Generator& default_generator();
void manual_seed(uint64_t seed);

}  // namespace cohort::core
