// Gradient compression for DDP's buckets, as PyTorch's DDP communication hooks: what a bucket sends
// instead of its float32 gradient.
//   bf16, fp16  the bucket divided by the world size and cast to a 16-bit float for the wire (the
//               backends add 16-bit values in float32 and round once per addition), cast back
//               after: half the bytes, the average within the dtype's rounding.
//   powersgd    each matrix-shaped gradient M (n x m, a parameter's first dimension by the rest)
//               replaced by a rank-r approximation P Q^T found by one step of power iteration
//               (Vogels et al., 2019): P = M Q all-reduced and orthogonalised, then Q = M^T P
//               all-reduced, so (n + m) r numbers cross the wire instead of n m. Vectors and
//               matrices too small to gain stay float32 and go with the P's. What the
//               approximation missed on this rank is added to its next gradient (error feedback);
//               Q carries over to the next step (warm start). The first start_step reductions
//               are plain all-reduces.
// Every rank ends with the same averaged gradient, bit for bit.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "collectives/process_group.h"
#include "core/tensor/tensor.h"

namespace cohort::collectives {

enum class Compression { kNone, kBFloat16, kFloat16, kPowerSgd };
const char* compression_name(Compression c);
// none, bf16, fp16, powersgd; ConfigError otherwise.
Compression parse_compression(const std::string& name);

struct PowerSgdOptions {
  int64_t rank = 1;  // of the approximation (PyTorch's matrix_approximation_rank)
  // Reductions done as plain all-reduces before compression starts (the first steps move the
  // parameters most, and error feedback has nothing to carry yet).
  int64_t start_step = 10;
  bool warm_start = true;      // reuse last step's Q (else a fresh random one every step)
  bool error_feedback = true;  // carry what the approximation missed into the next step
  // A matrix is compressed only when this many times fewer numbers cross the wire.
  double min_compression_rate = 2;
  // The smallest norm a column is divided by when orthogonalising (a zero column stays zero
  // instead of becoming NaN; larger norms are exact).
  double epsilon = 1e-30;
  uint64_t seed = 0;  // of the random Q (every rank draws the same)
};

struct CompressionOptions {
  Compression kind = Compression::kNone;
  PowerSgdOptions powersgd;
};

// A bucket's reduction in flight: the collective running now and what runs when it completes
// (local work, perhaps starting the next collective). `then` empty: nothing more.
struct Reduction {
  std::shared_ptr<Work> work;
  std::function<Reduction()> then;
  // `then` issues a collective: run it only where every rank does (DDP waits for the bucket,
  // in bucket order), so that the ranks' collectives keep one order.
  bool then_collective = false;
};

// A bucket as a hook sees it: its flat gradient and where each parameter lies in it.
struct HookBucket {
  struct Slot {
    std::string name;
    core::Shape shape;
    int64_t offset = 0;
  };
  std::vector<Slot> slots;
  int64_t numel = 0;  // unpadded
};

class CommHook {
 public:
  virtual ~CommHook() = default;
  // Starts averaging bucket `index` over the group: when the returned reduction has run to its
  // end, `grads` holds the average (under reduce_scatter: this rank's block of it, the blocks
  // being equal parts of `grads`, padded).
  virtual Reduction start(size_t index, core::Tensor& grads, bool reduce_scatter) = 0;
  // After every bucket of a backward has been reduced.
  virtual void end_backward() {}
  // State to checkpoint: `shared` is equal on every rank, `own` is this rank's (whole tensors).
  virtual void state(std::map<std::string, core::Tensor>& /*shared*/,
                     std::map<std::string, core::Tensor>& /*own*/) const {}
  // Loads what state() returned (own: this rank's, or the mean of the saved ranks' when the world
  // size changed). ConfigError naming the key when it does not fit.
  virtual void load_state(const std::map<std::string, core::Tensor>& /*shared*/,
                          const std::map<std::string, core::Tensor>& /*own*/) {}
  // A line for the banner.
  virtual std::string describe() const = 0;
};

// The hook for `o.kind` (null for kNone). Throws ConfigError for options out of range.
std::unique_ptr<CommHook> make_comm_hook(const CompressionOptions& o, ProcessGroup& group,
                                         std::vector<HookBucket> buckets, Millis timeout);

}  // namespace cohort::collectives
