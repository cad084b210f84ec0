// exp for CPU kernels' inner loops. glibc's expf is a library call that GCC does not vectorise
// without -ffast-math, and softmax and cross-entropy over a vocabulary of 50257 spend most of their
// time in it. This one is Cephes' expf (range reduction by ln 2, degree-6 polynomial; within 2 ulp
// of the exact result on [-87, 88]) written with selects and no calls, so the loops that use it
// vectorise. Below -87.3 it gives 0 (exp(-inf) = 0 for masked logits), above 88.7 +inf; NaN stays
// NaN. double keeps std::exp.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace cohort::core::cpu {

inline float exp_fast(float x) {
  // Ternaries, not fmin/fmax: those are library calls (NaN rules) and stop vectorisation.
  float xc = x < -87.0f ? -87.0f : x;
  xc = xc > 88.0f ? 88.0f : xc;
  const float k = std::floor(xc * 1.44269504088896341f + 0.5f);
  // r = x - k ln2 in two parts, so that r keeps its low bits.
  const float r = xc - k * 0.693359375f + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  float y = p * scale;
  y = x < -87.3f ? 0.0f : y;
  y = x > 88.7f ? INFINITY : y;
  return x != x ? x : y;
}

inline float exp_of(float x) { return exp_fast(x); }
inline double exp_of(double x) { return std::exp(x); }

// Maximum and sum of a row through 8 independent partial results: without -ffast-math GCC keeps a
// single-accumulator reduction scalar (it may not reorder float additions), but vectorises these.
// The sum's order therefore differs from a plain loop's, within float rounding.
template <typename T>
T row_max(const T* x, int64_t n) {
  T part[8];
  for (auto& p : part) p = -INFINITY;
  int64_t c = 0;
  for (; c + 8 <= n; c += 8)
    for (int k = 0; k < 8; ++k) part[k] = x[c + k] > part[k] ? x[c + k] : part[k];
  T m = -INFINITY;
  for (; c < n; ++c) m = x[c] > m ? x[c] : m;
  for (T p : part) m = p > m ? p : m;
  return m;  // NaNs are passed over; they still reach the result through exp and the sum
}

template <typename T>
T row_sum(const T* x, int64_t n) {
  T part[8] = {};
  int64_t c = 0;
  for (; c + 8 <= n; c += 8)
    for (int k = 0; k < 8; ++k) part[k] += x[c + k];
  T s = 0;
  for (; c < n; ++c) s += x[c];
  for (T p : part) s += p;
  return s;
}

}  // namespace cohort::core::cpu
