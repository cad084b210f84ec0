// libcohort_nccl.so: the nccl process-group backend (collectives/backend_modules.h).
#include "collectives/nccl/nccl_process_group.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstdio>
#include <deque>
#include <thread>

#include "cohort/config.h"
#include "collectives/backend_modules.h"
#include "collectives/checks.h"
#include "collectives/cpu/reduce_kernels.h"
#include "collectives/flight_recorder.h"
#include "collectives/group_monitor.h"
#include "core/tensor/cuda/cuda_device.h"
#include "core/util/error.h"

namespace cohort::collectives::nccl {
namespace {

using core::DType;
using core::Tensor;
using Clock = std::chrono::steady_clock;
using core::cuda::DeviceGuard;

void check_cuda(cudaError_t rc, const char* call) {
  if (rc != cudaSuccess) COHORT_THROW(CudaError, call, " failed: ", cudaGetErrorString(rc));
}

// NCCL calls on a non-blocking communicator return ncclInProgress while they are being set up.
bool nccl_ok(ncclResult_t rc) { return rc == ncclSuccess || rc == ncclInProgress; }

std::string nccl_error(ncclComm_t comm, ncclResult_t rc) {
  std::string msg = ncclGetErrorString(rc);
  if (comm) {
    const char* last = ncclGetLastError(comm);
    if (last && *last) msg += std::string(" (") + last + ")";
  }
  return msg;
}

ncclDataType_t nccl_type(DType d) {
  switch (d) {
    case DType::kFloat32:
      return ncclFloat32;
    case DType::kFloat64:
      return ncclFloat64;
    case DType::kFloat16:
      return ncclFloat16;
    case DType::kBFloat16:
      return ncclBfloat16;
    case DType::kInt32:
      return ncclInt32;
    case DType::kInt64:
      return ncclInt64;
    case DType::kUInt8:
    case DType::kBool:
      return ncclUint8;
  }
  return ncclUint8;
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return ncclSum;
    case ReduceOp::kAvg:
      return ncclAvg;
    case ReduceOp::kProduct:
      return ncclProd;
    case ReduceOp::kMin:
      return ncclMin;
    case ReduceOp::kMax:
      return ncclMax;
  }
  return ncclSum;
}

std::string hex(const void* data, size_t n) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < n; ++i) {
    const auto b = static_cast<const uint8_t*>(data)[i];
    out += digits[b >> 4];
    out += digits[b & 15];
  }
  return out;
}

void unhex(const std::string& text, void* data, size_t n) {
  COHORT_CHECK(text.size() == 2 * n, "the NCCL id in the store has ", text.size(),
               " hex digits, expected ", 2 * n);
  auto digit = [](char c) { return c <= '9' ? c - '0' : c - 'a' + 10; };
  for (size_t i = 0; i < n; ++i)
    static_cast<uint8_t*>(data)[i] =
        static_cast<uint8_t>(digit(text[2 * i]) * 16 + digit(text[2 * i + 1]));
}

class NcclProcessGroup final : public ProcessGroup {
 public:
  NcclProcessGroup(std::shared_ptr<Store> store, int rank, int size, ProcessGroupOptions options)
      : ProcessGroup(rank, size), store_(std::move(store)), options_(std::move(options)) {
    monitor_ = std::make_unique<GroupMonitor>(store_, rank, size);
    flight_group_ = FlightRecorder::get().next_group();
    watchdog_ = std::thread([this] { watchdog_loop(); });
  }
  ~NcclProcessGroup() override;
  std::string backend_name() const override { return "nccl"; }
  std::string allreduce_algorithm(size_t) const override { return "NCCL's (NCCL_ALGO)"; }

  std::shared_ptr<Work> allreduce(Tensor& t, const AllreduceOptions& o) override {
    check_tensor(t, "allreduce", "nccl");
    cpu::check_reducible(t.dtype(), o.op, "allreduce");
    Tensor x = t;
    return enqueue("allreduce", o.timeout, true, x, {x}, [x, o](ncclComm_t c, cudaStream_t s) {
      return ncclAllReduce(x.raw_data(), x.raw_data(), static_cast<size_t>(x.numel()),
                           nccl_type(x.dtype()), nccl_op(o.op), c, s);
    });
  }

  std::shared_ptr<Work> broadcast(Tensor& t, const BroadcastOptions& o) override {
    check_tensor(t, "broadcast", "nccl");
    check_root(o.root, size_, "broadcast");
    Tensor x = t;
    return enqueue("broadcast", o.timeout, true, x, {x}, [x, o](ncclComm_t c, cudaStream_t s) {
      return ncclBroadcast(x.raw_data(), x.raw_data(), x.nbytes(), ncclUint8, o.root, c, s);
    });
  }

  std::shared_ptr<Work> reduce(Tensor& t, const ReduceOptions& o) override {
    check_tensor(t, "reduce", "nccl");
    cpu::check_reducible(t.dtype(), o.op, "reduce");
    check_root(o.root, size_, "reduce");
    Tensor x = t;
    return enqueue("reduce", o.timeout, true, x, {x}, [x, o](ncclComm_t c, cudaStream_t s) {
      return ncclReduce(x.raw_data(), x.raw_data(), static_cast<size_t>(x.numel()),
                        nccl_type(x.dtype()), nccl_op(o.op), o.root, c, s);
    });
  }

  std::shared_ptr<Work> allgather(Tensor& out, const Tensor& in,
                                  const CollectiveOptions& o) override {
    check_tensor(out, "allgather", "nccl");
    check_tensor(in, "allgather", "nccl");
    check_allgather(out, in, size_);
    Tensor y = out, x = in;
    return enqueue("allgather", o.timeout, true, y, {y, x}, [x, y](ncclComm_t c, cudaStream_t s) {
      return ncclAllGather(x.raw_data(), y.raw_data(), x.nbytes(), ncclUint8, c, s);
    });
  }

  std::shared_ptr<Work> reduce_scatter(Tensor& out, const Tensor& in,
                                       const ReduceScatterOptions& o) override {
    check_tensor(out, "reduce_scatter", "nccl");
    check_tensor(in, "reduce_scatter", "nccl");
    cpu::check_reducible(in.dtype(), o.op, "reduce_scatter");
    check_reduce_scatter(out, in, size_);
    Tensor y = out, x = in;
    return enqueue(
        "reduce_scatter", o.timeout, true, y, {y, x}, [x, y, o](ncclComm_t c, cudaStream_t s) {
          return ncclReduceScatter(x.raw_data(), y.raw_data(), static_cast<size_t>(y.numel()),
                                   nccl_type(x.dtype()), nccl_op(o.op), c, s);
        });
  }

  std::shared_ptr<Work> alltoall(Tensor& out, const Tensor& in,
                                 const CollectiveOptions& o) override {
    check_tensor(out, "alltoall", "nccl");
    check_tensor(in, "alltoall", "nccl");
    check_alltoall(out, in, size_);
    Tensor y = out, x = in;
    const int n = size_;
    return enqueue("alltoall", o.timeout, true, y, {y, x}, [x, y, n](ncclComm_t c, cudaStream_t s) {
      const size_t block = x.nbytes() / static_cast<size_t>(n);
      const auto* src = static_cast<const uint8_t*>(x.raw_data());
      auto* dst = static_cast<uint8_t*>(y.raw_data());
      ncclResult_t rc = ncclGroupStart();
      for (int p = 0; p < n && nccl_ok(rc); ++p) {
        rc = ncclSend(src + p * block, block, ncclUint8, p, c, s);
        if (nccl_ok(rc)) rc = ncclRecv(dst + p * block, block, ncclUint8, p, c, s);
      }
      const ncclResult_t end = ncclGroupEnd();
      return nccl_ok(rc) ? end : rc;
    });
  }

  std::shared_ptr<Work> barrier(const CollectiveOptions& o) override {
    // An all-reduce of one value on the group's device; completes when every rank has reached it.
    int device = device_;
    if (device < 0) check_cuda(cudaGetDevice(&device), "cudaGetDevice");
    Tensor token = core::empty(
        {1}, core::TensorOptions(DType::kFloat32).with_device(core::Device::cuda(device)));
    return enqueue(
        "barrier", o.timeout, true, token, {token}, [token](ncclComm_t c, cudaStream_t s) {
          return ncclAllReduce(token.raw_data(), token.raw_data(), 1, ncclFloat32, ncclSum, c, s);
        });
  }

  // NCCL has no tags: sends and receives between two ranks match in issue order.
  std::shared_ptr<Work> send(const Tensor& t, int dst, int) override {
    check_tensor(t, "send", "nccl");
    check_peer(dst, rank_, size_, "send", "destination");
    Tensor x = t;
    return enqueue(
        "send", Millis(0), false, x, {x},
        [x, dst](ncclComm_t c, cudaStream_t s) {
          return ncclSend(x.raw_data(), x.nbytes(), ncclUint8, dst, c, s);
        },
        dst);
  }

  std::shared_ptr<Work> recv(Tensor& t, int src, int) override {
    check_tensor(t, "recv", "nccl");
    check_peer(src, rank_, size_, "recv", "source");
    Tensor x = t;
    return enqueue(
        "recv", Millis(0), false, x, {x},
        [x, src](ncclComm_t c, cudaStream_t s) {
          return ncclRecv(x.raw_data(), x.nbytes(), ncclUint8, src, c, s);
        },
        src);
  }

 private:
  using Issue = std::function<ncclResult_t(ncclComm_t, cudaStream_t)>;
  struct Pending {
    std::shared_ptr<Work> work;
    cudaEvent_t done = nullptr;
    std::vector<Tensor> keep;  // alive until the kernel that uses them has finished
    const char* name = "";
    bool collective = true;
    uint64_t seq = 0;
    int peer = -1;
    Millis timeout{0};
    Clock::time_point issued, deadline;
    uint64_t flight = 0;  // its flight-recorder entry
  };

  std::shared_ptr<Work> enqueue(const char* name, Millis timeout, bool collective, const Tensor& on,
                                std::vector<Tensor> keep, const Issue& issue, int peer = -1);
  void init_comm(int device, uint64_t seq, Clock::time_point deadline);
  // Polls a non-blocking communicator until its last call has been set up.
  void settle(const char* what, uint64_t seq, Clock::time_point deadline);
  [[noreturn]] void throw_timeout(const std::string& what, bool collective, uint64_t seq, int peer,
                                  Millis timeout);
  // Aborts the communicator and fails every pending operation with `error` (mu_ held).
  void fail_all(std::exception_ptr error);
  void watchdog_loop();

  std::shared_ptr<Store> store_;
  ProcessGroupOptions options_;
  std::unique_ptr<GroupMonitor> monitor_;
  int flight_group_ = 0;  // this group's number in the flight recorder
  std::mutex mu_;         // guards everything below
  std::condition_variable cv_;
  ncclComm_t comm_ = nullptr;
  int device_ = -1;
  cudaStream_t stream_ = nullptr;
  uint64_t next_seq_ = 0;
  std::deque<Pending> pending_;
  std::exception_ptr broken_;
  bool stopping_ = false;
  std::thread watchdog_;
};

NcclProcessGroup::~NcclProcessGroup() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  watchdog_.join();  // it finishes (or times out) what is pending first
  if (comm_) {
    DeviceGuard guard(device_);
    ncclResult_t rc = ncclCommFinalize(comm_);
    const auto give_up = Clock::now() + std::chrono::seconds(30);
    while (rc == ncclInProgress && Clock::now() < give_up) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      ncclCommGetAsyncError(comm_, &rc);
    }
    if (rc == ncclSuccess) {
      ncclCommDestroy(comm_);
    } else {
      ncclCommAbort(comm_);
    }
  }
  if (stream_) cudaStreamDestroy(stream_);
}

void NcclProcessGroup::throw_timeout(const std::string& what, bool collective, uint64_t seq,
                                     int peer, Millis timeout) {
  char secs[32];
  std::snprintf(secs, sizeof secs, "%.1f", static_cast<double>(timeout.count()) / 1000.0);
  std::string msg = what + " timed out after " + secs + " s on rank " + std::to_string(rank_);
  if (peer >= 0) msg += " waiting for rank " + std::to_string(peer);
  if (collective) msg += monitor_->who_never_entered(seq);
  COHORT_THROW(TimeoutError, msg);
}

void NcclProcessGroup::settle(const char* what, uint64_t seq, Clock::time_point deadline) {
  ncclResult_t rc = ncclInProgress;
  while (true) {
    ncclCommGetAsyncError(comm_, &rc);
    if (rc != ncclInProgress) break;
    if (Clock::now() > deadline) {
      ncclCommAbort(comm_);
      comm_ = nullptr;
      throw_timeout(std::string(what) + " #" + std::to_string(seq), true, seq, -1,
                    options_.timeout);
    }
    std::this_thread::yield();
  }
  if (rc != ncclSuccess)
    COHORT_THROW(DistributedError, what, " on rank ", rank_,
                 " failed in NCCL: ", nccl_error(comm_, rc));
}

void NcclProcessGroup::init_comm(int device, uint64_t seq, Clock::time_point deadline) {
  DeviceGuard guard(device);
  ncclUniqueId id;
  if (rank_ == 0) {
    const ncclResult_t rc = ncclGetUniqueId(&id);
    if (rc != ncclSuccess)
      COHORT_THROW(DistributedError, "ncclGetUniqueId failed on rank 0: ", ncclGetErrorString(rc));
    store_->set("nccl/id", hex(&id, sizeof id));
  }
  store_->wait({"nccl/id"}, options_.timeout);
  unhex(store_->get("nccl/id"), &id, sizeof id);
  int low = 0, high = 0;
  cudaDeviceGetStreamPriorityRange(&low, &high);
  // Communication gets the highest priority so that it overlaps with compute instead of queuing
  // behind it.
  check_cuda(cudaStreamCreateWithPriority(&stream_, cudaStreamNonBlocking, high),
             "cudaStreamCreateWithPriority");
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // so that a rank that never comes is a timeout, not a hang
  const ncclResult_t rc = ncclCommInitRankConfig(&comm_, size_, id, rank_, &config);
  if (!nccl_ok(rc))
    COHORT_THROW(DistributedError, "creating the NCCL communicator on rank ", rank_,
                 " (cuda:", device, ") failed: ", ncclGetErrorString(rc));
  device_ = device;
  settle("creating the NCCL communicator for collective", seq, deadline);
}

std::shared_ptr<Work> NcclProcessGroup::enqueue(const char* name, Millis timeout, bool collective,
                                                const Tensor& on, std::vector<Tensor> keep,
                                                const Issue& issue, int peer) {
  auto work = std::make_shared<Work>();
  std::lock_guard<std::mutex> lock(mu_);
  if (broken_) {
    work->finish(GroupMonitor::failed_earlier(name, broken_));
    return work;
  }
  Pending p;
  p.work = work;
  p.keep = std::move(keep);
  p.name = name;
  p.collective = collective;
  p.peer = peer;
  p.timeout = timeout.count() > 0 ? timeout : options_.timeout;
  p.issued = Clock::now();
  p.deadline = p.issued + p.timeout;
  if (collective) {
    p.seq = next_seq_++;
    monitor_->entered(p.seq, name);
  }
  // Queued and started at once: the kernel is issued now, and runs when the stream reaches it.
  p.flight = FlightRecorder::get().queued(flight_group_, collective, name,
                                          static_cast<int64_t>(on.nbytes()), peer,
                                          core::dtype_name(on.dtype()));
  FlightRecorder::get().started(p.flight, p.seq);
  try {
    const int device = on.device().index;
    if (!comm_) init_comm(device, p.seq, p.deadline);
    COHORT_CHECK(device == device_, name, ": this group's communicator is on cuda:", device_,
                 " but the tensor is on cuda:", device, "; use one group per device");
    DeviceGuard guard(device_);
    // Ordered after the work already queued for these tensors, without blocking the host.
    cudaEvent_t ready;
    check_cuda(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming), "cudaEventCreate");
    check_cuda(
        cudaEventRecord(ready, static_cast<cudaStream_t>(core::cuda::current_stream(device_))),
        "cudaEventRecord");
    check_cuda(cudaStreamWaitEvent(stream_, ready, 0), "cudaStreamWaitEvent");
    cudaEventDestroy(ready);  // released once the wait has been satisfied
    if (on.nbytes() > 0 || std::string_view(name) == "barrier") {
      const ncclResult_t rc = issue(comm_, stream_);
      if (!nccl_ok(rc))
        COHORT_THROW(DistributedError, name, " on rank ", rank_,
                     " failed in NCCL: ", nccl_error(comm_, rc));
      if (rc == ncclInProgress) settle(name, p.seq, p.deadline);
    }
    check_cuda(cudaEventCreateWithFlags(&p.done, cudaEventDisableTiming), "cudaEventCreate");
    check_cuda(cudaEventRecord(p.done, stream_), "cudaEventRecord");
  } catch (...) {
    FlightRecorder::get().ended(p.flight, false);
    FlightRecorder::get().dump(std::current_exception());
    broken_ = monitor_->fail(std::current_exception());
    fail_all(broken_);
    work->finish(broken_);
    return work;
  }
  pending_.push_back(std::move(p));
  cv_.notify_all();
  return work;
}

void NcclProcessGroup::fail_all(std::exception_ptr error) {
  if (comm_) {
    // Makes kernels stuck waiting for a peer return, so the tensors they hold can be reused.
    ncclCommAbort(comm_);
    comm_ = nullptr;
  }
  if (!broken_) broken_ = error;
  for (auto& p : pending_) {
    if (p.done) cudaEventDestroy(p.done);
    FlightRecorder::get().ended(p.flight, false);
    p.work->finish(error);
  }
  if (!pending_.empty()) FlightRecorder::get().dump(error);
  pending_.clear();
}

void NcclProcessGroup::watchdog_loop() {
  std::unique_lock<std::mutex> lock(mu_);
  auto next_abort_check = Clock::now();
  while (true) {
    if (pending_.empty()) {
      if (stopping_) return;
      cv_.wait_for(lock, std::chrono::seconds(1));
      continue;
    }
    // One stream: operations finish in issue order.
    while (!pending_.empty()) {
      Pending& p = pending_.front();
      const cudaError_t q = cudaEventQuery(p.done);
      if (q == cudaErrorNotReady) break;
      if (q != cudaSuccess) {
        const std::string what = cudaGetErrorString(q);
        cudaGetLastError();
        fail_all(monitor_->fail(std::make_exception_ptr(
            CudaError(std::string(p.name) + " on rank " + std::to_string(rank_) +
                      " failed on the GPU: " + what))));
        break;
      }
      cudaEventDestroy(p.done);
      FlightRecorder::get().ended(p.flight, true);
      p.work->finish();
      pending_.pop_front();
    }
    if (pending_.empty()) continue;
    const auto now = Clock::now();
    Pending& front = pending_.front();
    ncclResult_t async = ncclSuccess;
    if (comm_) ncclCommGetAsyncError(comm_, &async);
    if (!nccl_ok(async)) {
      // NCCL noticed a peer's failure (e.g. its connection closed).
      fail_all(monitor_->fail(std::make_exception_ptr(
          DistributedError(std::string(front.name) + " on rank " + std::to_string(rank_) +
                           " failed in NCCL: " + nccl_error(comm_, async)))));
      continue;
    }
    if (now > front.deadline) {
      const Pending p = front;  // the diagnosis waits for the peers' reports; let callers in
      lock.unlock();
      std::exception_ptr error;
      try {
        throw_timeout(std::string(p.name) + (p.collective ? " #" + std::to_string(p.seq) : ""),
                      p.collective, p.seq, p.peer, p.timeout);
      } catch (...) {
        error = monitor_->fail(std::current_exception());
      }
      lock.lock();
      fail_all(error);
      continue;
    }
    if (now - front.issued > std::chrono::milliseconds(200) && now >= next_abort_check) {
      next_abort_check = now + std::chrono::milliseconds(500);
      const Pending p = front;
      lock.unlock();
      std::exception_ptr error;
      if (auto failure = monitor_->posted_failure()) {
        try {
          monitor_->throw_abandoned(p.name, p.seq, *failure);
        } catch (...) {
          error = std::current_exception();
        }
      }
      lock.lock();
      if (error) {
        fail_all(error);
        continue;
      }
    }
    // Completion is polled: back to back while an operation is young (small collectives take
    // microseconds), then every 100 us.
    if (now - front.issued < std::chrono::milliseconds(2)) {
      lock.unlock();
      std::this_thread::yield();
      lock.lock();
    } else {
      cv_.wait_for(lock, std::chrono::microseconds(100));
    }
  }
}

// Named apart from nccl::create in libcohort_collectives, which forwards here.
std::shared_ptr<ProcessGroup> create_group(std::shared_ptr<Store> store, int rank, int size,
                                           const ProcessGroupOptions& options) {
  return std::make_shared<NcclProcessGroup>(std::move(store), rank, size, options);
}

std::string library_version() {
  int v = 0;
  if (ncclGetVersion(&v) != ncclSuccess) return "unknown";
  // NCCL_VERSION_CODE: major*10000 + minor*100 + patch since 2.9.
  return std::to_string(v / 10000) + "." + std::to_string(v % 10000 / 100) + "." +
         std::to_string(v % 100);
}

}  // namespace

}  // namespace cohort::collectives::nccl

extern "C" const cohort::collectives::NcclModule cohort_nccl_module{
    COHORT_VERSION, &cohort::collectives::nccl::create_group,
    &cohort::collectives::nccl::library_version};
