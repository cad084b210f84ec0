// Run-time loading of OpenBLAS (see blas.h for why) and the portable fallback GEMM.
#include "core/ops/cpu/blas.h"

#include <dlfcn.h>

#include <cstdlib>
#include <cstring>

#include "cohort/config.h"
#include "core/ops/cpu/bf16_gemm.h"
#include "core/ops/cpu/cpu_backend.h"

namespace cohort::core::cpu {
namespace {

// CBLAS enum values (cblas.h): RowMajor 101, NoTrans 111, Trans 112.
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;
using SgemmFn = void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int,
                         float, float*, int);
using DgemmFn = void (*)(int, int, int, int, int, int, double, const double*, int, const double*,
                         int, double, double*, int);
using SetThreadsFn = void (*)(int);

struct Blas {
  BlasInfo info;
  SgemmFn sgemm = nullptr;
  DgemmFn dgemm = nullptr;
  SetThreadsFn set_threads = nullptr;
};

int g_requested_threads = 0;

bool amd_with_avx512() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  return __builtin_cpu_is("amd") && __builtin_cpu_supports("avx512f") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq");
#else
  return false;
#endif
}

Blas load() {
  Blas b;
  if (!std::getenv("OPENBLAS_CORETYPE") && amd_with_avx512()) {
    setenv("OPENBLAS_CORETYPE", "SkylakeX", 0);
  }
  if (const char* c = std::getenv("OPENBLAS_CORETYPE")) b.info.coretype = c;
  // OpenBLAS's threads spin for 2^28 cycles (about 0.1 s) after each GEMM before they sleep, on
  // the cores that Cohort's own kernels (parallel_for) run on between GEMMs: with 2 threads the
  // CNN trained 16% slower than with 2^16 cycles (about 20 us), and the MLP, GEMM after GEMM, no
  // faster. A user's setting wins.
  setenv("OPENBLAS_THREAD_TIMEOUT", "16", 0);
  // Without a thread count OpenBLAS starts one thread per core at load; start with what was asked.
  if (g_requested_threads > 0 && !std::getenv("OPENBLAS_NUM_THREADS")) {
    setenv("OPENBLAS_NUM_THREADS", std::to_string(g_requested_threads).c_str(), 0);
  }
  for (const char* path : {COHORT_OPENBLAS_PATH, "libopenblas.so.0", "libopenblas.so"}) {
    void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) continue;
    b.sgemm = reinterpret_cast<SgemmFn>(dlsym(h, "cblas_sgemm"));
    b.dgemm = reinterpret_cast<DgemmFn>(dlsym(h, "cblas_dgemm"));
    b.set_threads = reinterpret_cast<SetThreadsFn>(dlsym(h, "openblas_set_num_threads"));
    if (b.sgemm && b.dgemm) {
      b.info.library = path;
      if (b.set_threads && g_requested_threads > 0) b.set_threads(g_requested_threads);
      return b;
    }
    dlclose(h);
    b = Blas{};
  }
  b.info.library = "builtin";
  return b;
}

Blas& blas() {
  static Blas b = load();
  return b;
}

template <typename T>
void fallback_gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
                   int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  for (int64_t i = 0; i < m; ++i) {
    T* crow = c + i * ldc;
    for (int64_t j = 0; j < n; ++j) crow[j] = beta == T(0) ? T(0) : crow[j] * beta;
    for (int64_t p = 0; p < k; ++p) {
      T av = alpha * (ta ? a[p * lda + i] : a[i * lda + p]);
      if (av == T(0)) continue;
      if (!tb) {
        const T* brow = b + p * ldb;
        for (int64_t j = 0; j < n; ++j) crow[j] += av * brow[j];
      } else {
        for (int64_t j = 0; j < n; ++j) crow[j] += av * b[j * ldb + p];
      }
    }
  }
}

}  // namespace

const BlasInfo& blas_info() { return blas().info; }

void set_blas_threads(int n) {
  g_requested_threads = n;
  Blas& b = blas();  // loads with the count above if not loaded yet
  if (b.set_threads) b.set_threads(n);
}

void sgemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
           int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  Blas& bl = blas();
  // precision: bf16 on an AVX512-BF16 CPU (a process-wide switch the trainer sets).
  if (bf16_gemm_enabled()) {
    bf16_gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  if (bl.sgemm) {
    bl.sgemm(kRowMajor, ta ? kTrans : kNoTrans, tb ? kTrans : kNoTrans, static_cast<int>(m),
             static_cast<int>(n), static_cast<int>(k), alpha, a, static_cast<int>(lda), b,
             static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
  } else {
    fallback_gemm<float>(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
}

void dgemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const double* a,
           int64_t lda, const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  Blas& bl = blas();
  if (bl.dgemm) {
    bl.dgemm(kRowMajor, ta ? kTrans : kNoTrans, tb ? kTrans : kNoTrans, static_cast<int>(m),
             static_cast<int>(n), static_cast<int>(k), alpha, a, static_cast<int>(lda), b,
             static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
  } else {
    fallback_gemm<double>(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
}

namespace {
// The batch's i-th matrix; an empty tensor's null pointer stays null (an offset from null is
// undefined behaviour even when nothing is read through it).
template <typename T>
T* at(const Tensor& t, int64_t offset) {
  T* p = t.data_ptr<T>();
  return p ? p + offset : p;
}
}  // namespace

void CpuBackend::gemm(const GemmArgs& g, const Tensor& a, const Tensor& b, const Tensor& c) {
  for (int64_t i = 0; i < g.batch; ++i) {
    if (c.dtype() == DType::kFloat32) {
      float* ci = at<float>(c, i * g.stride_c);
      float beta = static_cast<float>(g.beta);
      if (beta == 0.0f && g.k > 0) {
        // OpenBLAS clears C for beta = 0 in a pass of its own that ran at well under memset's
        // speed (9% of a CNN step); C = A B + 0 is the same product, bit for bit.
        if (g.ldc == g.n) {
          std::memset(ci, 0, sizeof(float) * static_cast<size_t>(g.m * g.n));
        } else {
          for (int64_t r = 0; r < g.m; ++r)
            std::memset(ci + r * g.ldc, 0, sizeof(float) * static_cast<size_t>(g.n));
        }
        beta = 1.0f;
      }
      sgemm(g.trans_a, g.trans_b, g.m, g.n, g.k, static_cast<float>(g.alpha),
            at<float>(a, i * g.stride_a), g.lda, at<float>(b, i * g.stride_b), g.ldb, beta, ci,
            g.ldc);
    } else if (c.dtype() == DType::kFloat64) {
      dgemm(g.trans_a, g.trans_b, g.m, g.n, g.k, g.alpha, at<double>(a, i * g.stride_a), g.lda,
            at<double>(b, i * g.stride_b), g.ldb, g.beta, at<double>(c, i * g.stride_c), g.ldc);
    } else {
      COHORT_THROW(InvalidArgument, "matmul needs float32 or float64 tensors, got ",
                   dtype_name(c.dtype()));
    }
  }
}

}  // namespace cohort::core::cpu
