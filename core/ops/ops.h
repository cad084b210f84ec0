// The op front ends: every differentiable function on tensors. Each validates its arguments, runs
// the kernel of the inputs' device and, in grad mode, records its backward. Throws InvalidArgument
// with a sentence naming the op and the offending shapes on bad input.
#pragma once

#include <functional>
#include <optional>
#include <utility>
#include <vector>

#include "core/tensor/generator.h"
#include "core/tensor/tensor.h"

namespace cohort::core {

// --- factories
// -----------------------------------------------------------------------------------------
Tensor zeros(const Shape& shape, TensorOptions opts = {});
Tensor ones(const Shape& shape, TensorOptions opts = {});
Tensor full(const Shape& shape, double value, TensorOptions opts = {});
Tensor zeros_like(const Tensor& t);
Tensor ones_like(const Tensor& t);
Tensor full_like(const Tensor& t, double value);
Tensor scalar_tensor(double value, TensorOptions opts = {});
// [start, end) with step; dtype int64 unless opts says otherwise.
Tensor arange(double start, double end, double step = 1,
              TensorOptions opts = TensorOptions(DType::kInt64));
Tensor arange(int64_t end, TensorOptions opts = TensorOptions(DType::kInt64));
Tensor rand(const Shape& shape, TensorOptions opts = {}, Generator* gen = nullptr);
Tensor randn(const Shape& shape, TensorOptions opts = {}, Generator* gen = nullptr);
Tensor randint(int64_t low, int64_t high, const Shape& shape,
               TensorOptions opts = TensorOptions(DType::kInt64), Generator* gen = nullptr);
Tensor randperm(int64_t n, Generator* gen = nullptr);
// Copies `data` (count = product of shape) into a new tensor.
template <typename T>
Tensor from_vector(const std::vector<T>& data, const Shape& shape,
                   TensorOptions opts = TensorOptions(dtype_of<T>()));
// Wraps external CPU memory without copying; the caller keeps it alive while the tensor lives.
Tensor from_blob(void* data, const Shape& shape, DType dtype);
// As above, and the tensor (with every view of it) holds `owner`, which keeps the memory alive (a
// shared-memory mapping, say).
Tensor from_blob(void* data, const Shape& shape, DType dtype, std::shared_ptr<void> owner);
Tensor tensor(std::initializer_list<double> values, TensorOptions opts = {});

// In-place initialisers (no autograd), drawing from `gen` or the default generator.
Tensor& uniform_(Tensor& t, double low, double high, Generator* gen = nullptr);
Tensor& normal_(Tensor& t, double mean, double std, Generator* gen = nullptr);
// PyTorch's defaults: kaiming_uniform_(a=sqrt(5)) for weights; fan_in from dims 1.. (fan_in mode).
Tensor& kaiming_uniform_(Tensor& t, double a, Generator* gen = nullptr);
Tensor& kaiming_normal_(Tensor& t, double a = 0, Generator* gen = nullptr);
int64_t fan_in(const Tensor& t);

// --- elementwise
// -------------------------------------------------------------------------------------
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor add(const Tensor& a, double s);
Tensor sub(const Tensor& a, double s);
Tensor mul(const Tensor& a, double s);
Tensor div(const Tensor& a, double s);
Tensor pow(const Tensor& a, double exponent);
Tensor pow(const Tensor& a, const Tensor& exponent);
Tensor maximum(const Tensor& a, const Tensor& b);
Tensor minimum(const Tensor& a, const Tensor& b);
Tensor neg(const Tensor& a);
Tensor exp(const Tensor& a);
Tensor log(const Tensor& a);
Tensor sqrt(const Tensor& a);
Tensor rsqrt(const Tensor& a);
Tensor abs(const Tensor& a);
Tensor sign(const Tensor& a);
Tensor square(const Tensor& a);
Tensor clamp(const Tensor& a, std::optional<double> lo, std::optional<double> hi);
Tensor relu(const Tensor& a);
// approximate: "none" (erf form) or "tanh".
Tensor gelu(const Tensor& a, const std::string& approximate = "none");
Tensor tanh(const Tensor& a);
Tensor sigmoid(const Tensor& a);
Tensor silu(const Tensor& a);

// Comparisons return bool tensors and are not differentiable.
Tensor eq(const Tensor& a, const Tensor& b);
Tensor ne(const Tensor& a, const Tensor& b);
Tensor lt(const Tensor& a, const Tensor& b);
Tensor le(const Tensor& a, const Tensor& b);
Tensor gt(const Tensor& a, const Tensor& b);
Tensor ge(const Tensor& a, const Tensor& b);
Tensor gt(const Tensor& a, double s);
Tensor lt(const Tensor& a, double s);
Tensor eq(const Tensor& a, double s);
Tensor logical_not(const Tensor& a);
Tensor logical_and(const Tensor& a, const Tensor& b);
Tensor logical_or(const Tensor& a, const Tensor& b);
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);
Tensor masked_fill(const Tensor& a, const Tensor& mask, double value);

// In-place updates (optimisers, accumulation). Not recorded by autograd; they bump the version.
Tensor& add_(Tensor& a, const Tensor& b, double alpha = 1);
Tensor& mul_(Tensor& a, double s);
Tensor& mul_(Tensor& a, const Tensor& b);
Tensor& addcmul_(Tensor& a, const Tensor& b, const Tensor& c, double value);
Tensor& addcdiv_(Tensor& a, const Tensor& b, const Tensor& c, double value);
Tensor& lerp_(Tensor& a, const Tensor& b, double weight);
Tensor& clamp_(Tensor& a, std::optional<double> lo, std::optional<double> hi);
Tensor& masked_fill_(Tensor& a, const Tensor& mask, double value);

// --- reductions
// ----------------------------------------------------------------------------------------
Tensor sum(const Tensor& a);
Tensor sum(const Tensor& a, const Shape& dims, bool keepdim = false);
Tensor mean(const Tensor& a);
Tensor mean(const Tensor& a, const Shape& dims, bool keepdim = false);
// var with `correction` (1: unbiased, 0: population).
Tensor var(const Tensor& a, const Shape& dims, int64_t correction = 1, bool keepdim = false);
Tensor max(const Tensor& a);
Tensor min(const Tensor& a);
// Values and int64 indices along one dimension.
std::pair<Tensor, Tensor> max(const Tensor& a, int64_t dim, bool keepdim = false);
std::pair<Tensor, Tensor> min(const Tensor& a, int64_t dim, bool keepdim = false);
Tensor argmax(const Tensor& a, int64_t dim, bool keepdim = false);
Tensor argmax(const Tensor& a);
// Sums a broadcast gradient back to `shape` (the inverse of broadcasting).
Tensor sum_to(const Tensor& g, const Shape& shape);
Shape broadcast_shapes(const Shape& a, const Shape& b);

// --- linear algebra
// ------------------------------------------------------------------------------------ 1-D, 2-D and
// batched (broadcast) matrix products through the device's BLAS.
Tensor matmul(const Tensor& a, const Tensor& b);
// x @ weight^T + bias, with the bias folded into the GEMM. bias may be undefined.
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias);

// Mixed precision, as PyTorch's autocast: while an AutocastGuard(kBFloat16 or kFloat16) lives on
// this thread, matmul, linear and scaled_dot_product_attention of CUDA tensors run in that dtype
// on tensor cores (float32 accumulation) and return it, so activations between them stay 16-bit;
// layer_norm, softmax, log_softmax, cross_entropy and mse_loss take 16-bit inputs in float32;
// other ops run in their inputs' promoted dtype. The float32 parameters stay the master copy.
// Autograd records the casts, and each gradient comes back in its input's dtype. CPU tensors are
// unaffected.
class AutocastGuard {
 public:
  explicit AutocastGuard(DType dtype);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  DType previous_;
};
// The dtype autocast computes in on this thread (kFloat32: off).
DType autocast_dtype();
// Whether autocast converts `t` for a matmul (a float32, or other 16-bit, CUDA tensor while
// autocast is on).
bool autocasts(const Tensor& t);
// bfloat16 or float16.
bool is_half_float(const Tensor& t);

// --- neural-network functions
// ----------------------------------------------------------------------
Tensor softmax(const Tensor& a, int64_t dim);
Tensor log_softmax(const Tensor& a, int64_t dim);
enum class Reduction { kNone, kMean, kSum };
struct CrossEntropyOptions {
  int64_t ignore_index = -100;
  double label_smoothing = 0;
  Reduction reduction = Reduction::kMean;
};
// log_softmax + negative log-likelihood, fused. logits [N, C] (or [N, C, d...]); target int64 [N].
Tensor cross_entropy(const Tensor& logits, const Tensor& target,
                     const CrossEntropyOptions& opts = {});
Tensor mse_loss(const Tensor& input, const Tensor& target, Reduction reduction = Reduction::kMean);
Tensor layer_norm(const Tensor& x, const Shape& normalized_shape, const Tensor& weight,
                  const Tensor& bias, double eps = 1e-5);
Tensor embedding(const Tensor& weight, const Tensor& indices);
// Sums a small tensor over the ranks of a data-parallel job, in place (blocking). Given to
// batch_norm it makes SyncBatchNorm; core knows no process groups, the trainer supplies one.
using StatSum = std::function<void(Tensor&)>;
struct BatchNormOptions {
  bool training = true;
  double momentum = 0.1;  // running = (1 - momentum) * running + momentum * batch statistic
  double eps = 1e-5;
};
// x [N, C, *]. Training: normalises with the batch's mean and biased variance per channel (summed
// over ranks first when sum_over_ranks is given; it is called twice forward, once backward) and
// updates running_mean / running_var in place where defined (the variance unbiased, as PyTorch
// does). Evaluation: normalises with the running statistics. weight and bias may be undefined.
Tensor batch_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor running_mean,
                  Tensor running_var, const BatchNormOptions& o,
                  const StatSum& sum_over_ranks = {});
Tensor dropout(const Tensor& x, double p, bool training, Generator* gen = nullptr);
// softmax(q k^T / sqrt(d) + causal mask) v over [..., L, d] tensors.
Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal);

// kIm2col: one GEMM over unfolded input windows; any geometry. kWinograd: F(2x2, 3x3), 2.25x
// fewer multiplications, for 3x3 kernels with stride 1, dilation 1 and one group. kAuto takes
// Winograd for such float32 CPU convolutions with at least 16 channels in and out, and the
// device's library (kLibrary: cuDNN for CUDA tensors) where there is one, im2col otherwise.
enum class Conv2dAlgorithm { kAuto, kIm2col, kWinograd, kLibrary };
struct Conv2dOptions {
  std::pair<int64_t, int64_t> stride{1, 1}, padding{0, 0}, dilation{1, 1};
  int64_t groups = 1;
  Conv2dAlgorithm algorithm = Conv2dAlgorithm::kAuto;
};
Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias,
              const Conv2dOptions& opts = {});
// The algorithm conv2d runs for these operands (never kAuto). Asking for kWinograd where it
// does not apply is an error naming the reason.
Conv2dAlgorithm conv2d_algorithm(const Tensor& x, const Tensor& weight, const Conv2dOptions& opts);
struct Pool2dOptions {
  std::pair<int64_t, int64_t> kernel{2, 2}, stride{0, 0} /* 0: = kernel */, padding{0, 0};
  bool count_include_pad = true;
};
Tensor max_pool2d(const Tensor& x, const Pool2dOptions& opts);
Tensor avg_pool2d(const Tensor& x, const Pool2dOptions& opts);

// --- joining, splitting, indexing
// ---------------------------------------------------------------------
Tensor cat(const std::vector<Tensor>& tensors, int64_t dim = 0);
Tensor stack(const std::vector<Tensor>& tensors, int64_t dim = 0);
std::vector<Tensor> split(const Tensor& t, int64_t split_size, int64_t dim = 0);
std::vector<Tensor> chunk(const Tensor& t, int64_t chunks, int64_t dim = 0);
Tensor index_select(const Tensor& t, int64_t dim, const Tensor& index);
Tensor gather(const Tensor& t, int64_t dim, const Tensor& index);

// --- operators
// -----------------------------------------------------------------------------------------
inline Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
inline Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
inline Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
inline Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
inline Tensor operator+(const Tensor& a, double s) { return add(a, s); }
inline Tensor operator-(const Tensor& a, double s) { return sub(a, s); }
inline Tensor operator*(const Tensor& a, double s) { return mul(a, s); }
inline Tensor operator/(const Tensor& a, double s) { return div(a, s); }
inline Tensor operator*(double s, const Tensor& a) { return mul(a, s); }
inline Tensor operator+(double s, const Tensor& a) { return add(a, s); }
inline Tensor operator-(double s, const Tensor& a) { return add(neg(a), s); }
inline Tensor operator-(const Tensor& a) { return neg(a); }

// Whether two tensors have equal shapes and values within rtol/atol (computed in float64).
bool allclose(const Tensor& a, const Tensor& b, double rtol = 1e-5, double atol = 1e-8);

}  // namespace cohort::core
