// libcohort_mpi.so: the mpi process-group backend (collectives/backend_modules.h).
#include "collectives/mpi/mpi_process_group.h"

#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <mutex>
#include <set>
#include <thread>

#include "cohort/config.h"
#include "collectives/backend_modules.h"
#include "collectives/checks.h"
#include "collectives/cpu/reduce_kernels.h"
#include "collectives/flight_recorder.h"
#include "collectives/group_monitor.h"
#include "collectives/op_runner.h"
#include "collectives/store/tcp_store.h"
#include "core/autograd/grad_mode.h"
#include "core/ops/ops.h"
#include "core/util/env.h"
#include "core/util/error.h"

namespace cohort::collectives::mpi {
namespace {

using core::DType;
using core::Tensor;
using Clock = std::chrono::steady_clock;

// MPI_THREAD_SERIALIZED: every MPI call in the process takes this lock, whichever group's thread
// makes it. Calls made under it never block (requests are polled), except group creation.
std::mutex& mpi_lock() {
  static auto* mu = new std::mutex();  // used by the exit handler, after static destructors ran
  return *mu;
}

// Requests of operations that failed (timed out, or abandoned after a peer's failure) stay
// pending inside MPI, with the buffers they may still write. They are kept here until they
// complete; MPI_Finalize would wait for them, so at exit it runs only once they have.
struct Abandoned {
  MPI_Request request;
  std::vector<Tensor> buffers;
};
std::vector<Abandoned>& abandoned() {                // guarded by mpi_lock()
  static auto* list = new std::vector<Abandoned>();  // outlives every static destructor
  return *list;
}

void finalize_at_exit() {
  std::lock_guard<std::mutex> lock(mpi_lock());
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  // A late peer may still complete them; without that, leave without MPI_Finalize and let mpirun
  // end the job.
  auto& list = abandoned();
  const auto give_up = Clock::now() + std::chrono::seconds(5);
  while (!list.empty() && Clock::now() < give_up) {
    int done = 0;
    MPI_Test(&list.back().request, &done, MPI_STATUS_IGNORE);
    if (done) {
      list.pop_back();
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  if (list.empty()) MPI_Finalize();
}

std::string mpi_error(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) return "MPI error " + std::to_string(code);
  return std::string(text, static_cast<size_t>(len));
}

void check_mpi(int rc, const char* call) {
  if (rc != MPI_SUCCESS) COHORT_THROW(DistributedError, call, " failed: ", mpi_error(rc));
}

// MPI's start-up (MPI_Init, and the broadcasts that follow it) blocks until every rank of the job
// takes part, with no timeout of its own: a rank that never started, died before MPI_Init or was
// stopped would leave the others waiting forever. While one lives, a watchdog thread ends the
// process after `timeout`, but never before kStartupFloor (MPI_Init alone took seconds on a fresh
// machine, and a job's short collective timeout is no reason to fail its start), with a sentence
// saying so (exit code 4, as any collective timeout).
constexpr Millis kStartupFloor{std::chrono::seconds(60)};

class StartupWatchdog {
 public:
  StartupWatchdog(const char* what, Millis timeout_in)
      : thread_([this, what, timeout = std::max(timeout_in, kStartupFloor)] {
          std::unique_lock<std::mutex> lock(mu_);
          if (cv_.wait_for(lock, timeout, [this] { return done_; })) return;
          std::fprintf(stderr,
                       "cohort: %s did not complete within %.0f s: a rank of this mpirun job never "
                       "started, stopped or died before it (see mpirun's output for which)\n",
                       what, static_cast<double>(timeout.count()) / 1000.0);
          std::fflush(stderr);
          std::_Exit(4);
        }) {}
  ~StartupWatchdog() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

void ensure_mpi(Millis timeout) {
  static std::once_flag once;
  std::call_once(once, [timeout] {
    int initialized = 0;
    MPI_Initialized(&initialized);
    int provided = 0;
    if (!initialized) {
      const StartupWatchdog watchdog("MPI_Init", timeout);
      check_mpi(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided),
                "MPI_Init_thread");
      std::atexit(finalize_at_exit);
    } else {
      MPI_Query_thread(&provided);
    }
    if (provided < MPI_THREAD_SERIALIZED)
      COHORT_THROW(DistributedError, "MPI was initialised with thread level ", provided,
                   " but the mpi backend needs MPI_THREAD_SERIALIZED (", MPI_THREAD_SERIALIZED,
                   ") or more");
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  });
}

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

bool is_half(DType d) { return d == DType::kFloat16 || d == DType::kBFloat16; }

// The MPI type a reduction runs on; float16 and bfloat16 are reduced as float32 copies.
MPI_Datatype reduce_type(DType d) {
  switch (d) {
    case DType::kFloat32:
    case DType::kFloat16:
    case DType::kBFloat16:
      return MPI_FLOAT;
    case DType::kFloat64:
      return MPI_DOUBLE;
    case DType::kInt32:
      return MPI_INT32_T;
    case DType::kInt64:
      return MPI_INT64_T;
    case DType::kUInt8:
      return MPI_UINT8_T;
    case DType::kBool:
      break;
  }
  COHORT_THROW(InvalidArgument, "the mpi backend cannot reduce ", core::dtype_name(d), " tensors");
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg:  // sum, then divide
      return MPI_SUM;
    case ReduceOp::kProduct:
      return MPI_PROD;
    case ReduceOp::kMin:
      return MPI_MIN;
    case ReduceOp::kMax:
      return MPI_MAX;
  }
  return MPI_SUM;
}

int mpi_count(size_t n, const char* what) {
  if (n > static_cast<size_t>(INT_MAX))
    COHORT_THROW(InvalidArgument, what, ": ", n,
                 " elements is more than one MPI call takes (INT_MAX); split the tensor");
  return static_cast<int>(n);
}

// A tensor as MPI sees it for a reduction: itself, or a float32 copy of a half-precision tensor
// that is copied back afterwards.
struct ReduceBuffer {
  Tensor user, mpi;
  explicit ReduceBuffer(const Tensor& t)
      : user(t), mpi(is_half(t.dtype()) ? t.to(DType::kFloat32) : t) {}
  void* data() const { return mpi.raw_data(); }
  void write_back() {
    if (mpi.raw_data() == user.raw_data()) return;
    core::autograd::NoGradGuard no_grad;
    user.copy_(mpi);
  }
};

std::string host_for_peers() {
  const char* local = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
  const char* size = std::getenv("OMPI_COMM_WORLD_SIZE");
  if (local && size && std::strcmp(local, size) == 0) return "127.0.0.1";
  char name[256] = {};
  if (gethostname(name, sizeof name - 1) != 0) return "127.0.0.1";
  return name;
}

class MpiProcessGroup final : public ProcessGroup {
 public:
  MpiProcessGroup(std::shared_ptr<Store> store, int rank, int size, ProcessGroupOptions options);
  ~MpiProcessGroup() override;
  std::string backend_name() const override { return "mpi"; }
  std::string allreduce_algorithm(size_t) const override { return "Open MPI's (tuned coll)"; }

  std::shared_ptr<Work> allreduce(Tensor& tensor, const AllreduceOptions& o) override;
  std::shared_ptr<Work> broadcast(Tensor& tensor, const BroadcastOptions& o) override;
  std::shared_ptr<Work> reduce(Tensor& tensor, const ReduceOptions& o) override;
  std::shared_ptr<Work> allgather(Tensor& output, const Tensor& input,
                                  const CollectiveOptions& o) override;
  std::shared_ptr<Work> reduce_scatter(Tensor& output, const Tensor& input,
                                       const ReduceScatterOptions& o) override;
  std::shared_ptr<Work> alltoall(Tensor& output, const Tensor& input,
                                 const CollectiveOptions& o) override;
  std::shared_ptr<Work> barrier(const CollectiveOptions& o) override;
  std::shared_ptr<Work> send(const Tensor& tensor, int dst, int tag) override;
  std::shared_ptr<Work> recv(Tensor& tensor, int src, int tag) override;

  // Small operations run inline; MPI's own latency is a few microseconds.
  static constexpr size_t kInlineBytes = 64 << 10;

 private:
  struct Op {
    const char* name;
    bool collective;
    uint64_t seq;
    Millis timeout;
    Clock::time_point deadline;
    int peer = -1;             // send/recv: the other rank
    std::vector<Tensor> keep;  // buffers MPI may still write into if the operation is abandoned
    MPI_Request request = MPI_REQUEST_NULL;
    int64_t bytes = 0;
    int64_t dtype = -1;  // the first tensor's, as an integer (-1: none)
  };
  using Start = std::function<void(Op&, MPI_Request*)>;
  // Queues an operation: `start` issues one non-blocking MPI call (under the MPI lock) and `done`
  // runs after it completes.
  std::shared_ptr<Work> enqueue(const char* name, Millis timeout, bool collective, size_t bytes,
                                std::vector<Tensor> keep, Start start,
                                std::function<void()> done = {}, int peer = -1);
  void run(Op& op, const Start& start, const std::function<void()>& done);
  // Polls op.request until it completes, a peer's failure is posted or op's deadline passes.
  void poll(Op& op);
  // Before a collective: every rank's {operation, bytes, dtype}, which must agree. Given
  // mismatched counts, MPI does not fail cleanly (Open MPI's non-blocking collectives were seen to
  // write past the shorter buffer and corrupt the heap), so a rank that skipped a collective or
  // disagrees on a size is stopped here with a sentence naming them. One small allgather per
  // collective; COHORT_MPI_CHECK_COLLECTIVES=0 leaves it out.
  void check_agreement(Op& op, const Start& start);
  [[noreturn]] void timed_out(const Op& op);

  std::shared_ptr<Store> store_;
  ProcessGroupOptions options_;
  MPI_Comm comm_ = MPI_COMM_NULL;
  int world_rank_ = 0;
  std::vector<int> members_;   // group rank -> MPI_COMM_WORLD rank
  std::exception_ptr broken_;  // touched only by the running operation
  std::unique_ptr<GroupMonitor> monitor_;
  int flight_group_ = 0;  // this group's number in the flight recorder
  bool check_collectives_ = true;
  std::unique_ptr<OpRunner> runner_;  // last: stopped first
};

MpiProcessGroup::MpiProcessGroup(std::shared_ptr<Store> store, int rank, int size,
                                 ProcessGroupOptions options)
    : ProcessGroup(rank, size), store_(std::move(store)), options_(std::move(options)) {
  ensure_mpi(options_.timeout);
  world_rank_ = world_rank();
  int world_size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &world_size);
  // Each member says which MPI process it is, so that any subset of the world can form a group.
  store_->set("mpi/world_rank/" + std::to_string(rank), std::to_string(world_rank_));
  members_.resize(static_cast<size_t>(size));
  std::set<int> seen;
  std::vector<std::string> keys;
  for (int r = 0; r < size; ++r) keys.push_back("mpi/world_rank/" + std::to_string(r));
  store_->wait(keys, options_.timeout);
  for (int r = 0; r < size; ++r) {
    const std::string value = store_->get(keys[r]);
    members_[r] = std::atoi(value.c_str());
    if (members_[r] < 0 || members_[r] >= world_size || !seen.insert(members_[r]).second)
      COHORT_THROW(ConfigError, "rank ", r, " of this mpi group is MPI_COMM_WORLD rank ", value,
                   ", which another rank of the group already is or which is outside the world of ",
                   world_size,
                   "; the mpi backend needs one MPI process per rank, started by "
                   "mpirun");
  }
  // Concurrent creations of different groups must not match each other: the tag comes from the
  // member list.
  uint32_t tag = 2166136261u;
  for (int m : members_) tag = (tag ^ static_cast<uint32_t>(m)) * 16777619u;
  MPI_Group world_group, group;
  {
    std::lock_guard<std::mutex> lock(mpi_lock());
    MPI_Comm_group(MPI_COMM_WORLD, &world_group);
    MPI_Group_incl(world_group, size, members_.data(), &group);
    const int rc =
        MPI_Comm_create_group(MPI_COMM_WORLD, group, static_cast<int>(tag % 32000), &comm_);
    MPI_Group_free(&group);
    MPI_Group_free(&world_group);
    check_mpi(rc, "MPI_Comm_create_group");
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  }
  monitor_ = std::make_unique<GroupMonitor>(store_, rank, size);
  flight_group_ = FlightRecorder::get().next_group();
  check_collectives_ = env::flag(env::kMpiCheckCollectives, true);
  runner_ = std::make_unique<OpRunner>(kInlineBytes);
}

MpiProcessGroup::~MpiProcessGroup() {
  runner_.reset();
  // Abandoned requests may still be pending on the communicator, and Open MPI's non-blocking
  // collectives use it while they progress: a failed group keeps it.
  if (broken_) return;
  std::lock_guard<std::mutex> lock(mpi_lock());
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

std::shared_ptr<Work> MpiProcessGroup::enqueue(const char* name, Millis timeout, bool collective,
                                               size_t bytes, std::vector<Tensor> keep, Start start,
                                               std::function<void()> done, int peer) {
  auto work = std::make_shared<Work>();
  const Millis t = timeout.count() > 0 ? timeout : options_.timeout;
  const uint64_t flight = FlightRecorder::get().queued(
      flight_group_, collective, name, static_cast<int64_t>(bytes), peer,
      keep.empty() ? std::string_view() : core::dtype_name(keep.front().dtype()));
  runner_->submit(bytes, collective,
                  [this, name, t, collective, peer, work, flight, bytes, keep = std::move(keep),
                   start = std::move(start), done = std::move(done)](uint64_t seq) mutable {
                    if (broken_) {
                      work->finish(GroupMonitor::failed_earlier(name, broken_));
                      return;
                    }
                    Op op{name, collective, seq, t, Clock::now() + t, peer, std::move(keep)};
                    op.bytes = static_cast<int64_t>(bytes);
                    op.dtype = op.keep.empty() ? -1 : static_cast<int64_t>(op.keep.front().dtype());
                    if (collective) monitor_->entered(seq, name);
                    FlightRecorder::get().started(flight, seq);
                    try {
                      run(op, start, done);
                      FlightRecorder::get().ended(flight, true);
                      work->finish();
                    } catch (...) {
                      FlightRecorder::get().ended(flight, false);
                      FlightRecorder::get().dump(std::current_exception());
                      broken_ = monitor_->fail(std::current_exception());
                      if (op.request != MPI_REQUEST_NULL) {
                        std::lock_guard<std::mutex> lock(mpi_lock());
                        abandoned().push_back({op.request, std::move(op.keep)});
                      }
                      work->finish(broken_);
                    }
                  });
  return work;
}

void MpiProcessGroup::run(Op& op, const Start& start, const std::function<void()>& done) {
  if (op.collective && check_collectives_ && size() > 1) check_agreement(op, start);
  {
    std::lock_guard<std::mutex> lock(mpi_lock());
    start(op, &op.request);
  }
  poll(op);
  if (done) done();
}

void MpiProcessGroup::check_agreement(Op& op, const Start& start) {
  static const char* const kOps[] = {"allreduce",      "broadcast", "reduce", "allgather",
                                     "reduce_scatter", "alltoall",  "barrier"};
  int64_t code = -1;
  for (size_t i = 0; i < std::size(kOps); ++i)
    if (std::strcmp(op.name, kOps[i]) == 0) code = static_cast<int64_t>(i);
  // Tensors, not locals: a check abandoned at its deadline is still written into by MPI later.
  Tensor mine = core::from_vector(std::vector<int64_t>{code, op.bytes, op.dtype}, {3});
  Tensor all = core::zeros({3 * static_cast<int64_t>(size())}, core::DType::kInt64);
  const size_t kept = op.keep.size();
  op.keep.push_back(mine);
  op.keep.push_back(all);
  {
    std::lock_guard<std::mutex> lock(mpi_lock());
    check_mpi(MPI_Iallgather(mine.data_ptr<int64_t>(), 3, MPI_INT64_T, all.data_ptr<int64_t>(), 3,
                             MPI_INT64_T, comm_, &op.request),
              "MPI_Iallgather (the collective check)");
  }
  try {
    poll(op);
  } catch (...) {
    // Given up (a timeout, or another rank's failure) before every rank arrived: post the
    // collective too and abandon both, so that a rank arriving late, whose check then completes
    // against ours and agrees, completes its collective against ours as it would without the
    // check. One that disagrees never posts its collective, so ours stays pending, harmlessly.
    Op late = op;
    late.keep.resize(kept);
    {
      std::lock_guard<std::mutex> lock(mpi_lock());
      start(late, &late.request);
      if (late.request != MPI_REQUEST_NULL)
        abandoned().push_back({late.request, std::move(late.keep)});
    }
    throw;
  }
  op.keep.resize(kept);
  const int64_t* v = all.data_ptr<int64_t>();
  bool agree = true;
  for (int r = 1; r < size(); ++r)
    agree = agree && std::equal(v, v + 3, v + 3 * static_cast<size_t>(r));
  if (agree) return;
  // Group the ranks by what they issued.
  std::vector<std::pair<std::string, std::vector<int>>> kinds;
  for (int r = 0; r < size(); ++r) {
    const int64_t* f = v + 3 * static_cast<size_t>(r);
    std::string kind = f[0] >= 0 && f[0] < static_cast<int64_t>(std::size(kOps))
                           ? kOps[f[0]]
                           : std::string("an unknown operation");
    kind += " of " + std::to_string(f[1]) + " bytes";
    if (f[2] >= 0 && f[2] <= static_cast<int64_t>(DType::kFloat16))
      kind += " of " + std::string(core::dtype_name(static_cast<DType>(f[2])));
    auto it = std::find_if(kinds.begin(), kinds.end(), [&](auto& k) { return k.first == kind; });
    if (it == kinds.end()) it = kinds.insert(kinds.end(), {kind, {}});
    it->second.push_back(r);
  }
  std::string text;
  for (const auto& [kind, ranks] : kinds) {
    std::string list;
    for (int r : ranks) list += (list.empty() ? "" : ",") + std::to_string(r);
    text += (text.empty() ? "" : "; ") + kind + " on rank" + (ranks.size() > 1 ? "s " : " ") + list;
  }
  COHORT_THROW(DistributedError, "ranks disagree on collective #", op.seq,
               " of this mpi group: ", text,
               "; every rank must issue the same collectives in the same order with the same "
               "sizes (one skipped a collective, or the ranks differ in model or batch)");
}

void MpiProcessGroup::poll(Op& op) {
  // MPI progresses only inside MPI calls: test back to back at first, then, for a peer that is
  // late, less often so that a waiting rank does not take a core from one that is working.
  const auto began = Clock::now();
  auto next_abort_check = began + std::chrono::milliseconds(200);
  while (true) {
    int complete = 0;
    {
      std::lock_guard<std::mutex> lock(mpi_lock());
      check_mpi(MPI_Test(&op.request, &complete, MPI_STATUS_IGNORE), op.name);
    }
    if (complete) break;
    const auto now = Clock::now();
    if (now >= next_abort_check) {
      next_abort_check = now + std::chrono::milliseconds(500);
      if (auto failure = monitor_->posted_failure())
        monitor_->throw_abandoned(op.name, op.seq, *failure);
    }
    if (now > op.deadline) timed_out(op);
    if (now - began < std::chrono::milliseconds(10)) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }
  op.request = MPI_REQUEST_NULL;
}

void MpiProcessGroup::timed_out(const Op& op) {
  char secs[32];
  std::snprintf(secs, sizeof secs, "%.1f", static_cast<double>(op.timeout.count()) / 1000.0);
  std::string msg = std::string(op.name) + (op.collective ? " #" + std::to_string(op.seq) : "") +
                    " timed out after " + secs + " s on rank " + std::to_string(rank_) +
                    " (MPI_COMM_WORLD rank " + std::to_string(world_rank_) + ")";
  if (op.peer >= 0) msg += " waiting for rank " + std::to_string(op.peer);
  if (op.collective) msg += monitor_->who_never_entered(op.seq);
  COHORT_THROW(TimeoutError, msg);
}

std::shared_ptr<Work> MpiProcessGroup::allreduce(Tensor& t, const AllreduceOptions& o) {
  check_tensor(t, "allreduce", "mpi");
  cpu::check_reducible(t.dtype(), o.op, "allreduce");
  auto buf = std::make_shared<ReduceBuffer>(t);
  const int count = mpi_count(static_cast<size_t>(t.numel()), "allreduce");
  const int n = size_;
  return enqueue(
      "allreduce", o.timeout, true, t.nbytes(), {buf->user, buf->mpi},
      [this, buf, count, o](Op&, MPI_Request* req) {
        check_mpi(MPI_Iallreduce(MPI_IN_PLACE, buf->data(), count, reduce_type(buf->user.dtype()),
                                 mpi_op(o.op), comm_, req),
                  "MPI_Iallreduce");
      },
      [buf, count, n, o] {
        if (o.op == ReduceOp::kAvg && count > 0)
          cpu::divide(buf->mpi.dtype(), buf->data(), static_cast<size_t>(count), n);
        buf->write_back();
      });
}

std::shared_ptr<Work> MpiProcessGroup::broadcast(Tensor& t, const BroadcastOptions& o) {
  check_tensor(t, "broadcast", "mpi");
  check_root(o.root, size_, "broadcast");
  const int bytes = mpi_count(t.nbytes(), "broadcast");
  Tensor tensor = t;
  return enqueue("broadcast", o.timeout, true, t.nbytes(), {tensor},
                 [this, tensor, bytes, o](Op&, MPI_Request* req) {
                   check_mpi(MPI_Ibcast(tensor.raw_data(), bytes, MPI_BYTE, o.root, comm_, req),
                             "MPI_Ibcast");
                 });
}

std::shared_ptr<Work> MpiProcessGroup::reduce(Tensor& t, const ReduceOptions& o) {
  check_tensor(t, "reduce", "mpi");
  cpu::check_reducible(t.dtype(), o.op, "reduce");
  check_root(o.root, size_, "reduce");
  auto buf = std::make_shared<ReduceBuffer>(t);
  const int count = mpi_count(static_cast<size_t>(t.numel()), "reduce");
  const bool root = rank_ == o.root;
  const int n = size_;
  return enqueue(
      "reduce", o.timeout, true, t.nbytes(), {buf->user, buf->mpi},
      [this, buf, count, root, o](Op&, MPI_Request* req) {
        check_mpi(
            MPI_Ireduce(root ? MPI_IN_PLACE : buf->data(), root ? buf->data() : nullptr, count,
                        reduce_type(buf->user.dtype()), mpi_op(o.op), o.root, comm_, req),
            "MPI_Ireduce");
      },
      [buf, count, n, root, o] {
        if (!root) return;
        if (o.op == ReduceOp::kAvg && count > 0)
          cpu::divide(buf->mpi.dtype(), buf->data(), static_cast<size_t>(count), n);
        buf->write_back();
      });
}

std::shared_ptr<Work> MpiProcessGroup::allgather(Tensor& out, const Tensor& in,
                                                 const CollectiveOptions& o) {
  check_tensor(out, "allgather", "mpi");
  check_tensor(in, "allgather", "mpi");
  check_allgather(out, in, size_);
  const int block = mpi_count(in.nbytes(), "allgather");
  mpi_count(out.nbytes(), "allgather");
  Tensor output = out, input = in;
  const bool in_place =
      static_cast<uint8_t*>(out.raw_data()) + static_cast<size_t>(rank_) * in.nbytes() ==
      in.raw_data();
  return enqueue("allgather", o.timeout, true, out.nbytes(), {output, input},
                 [this, output, input, block, in_place](Op&, MPI_Request* req) {
                   check_mpi(
                       MPI_Iallgather(in_place ? MPI_IN_PLACE : input.raw_data(), block, MPI_BYTE,
                                      output.raw_data(), block, MPI_BYTE, comm_, req),
                       "MPI_Iallgather");
                 });
}

std::shared_ptr<Work> MpiProcessGroup::reduce_scatter(Tensor& out, const Tensor& in,
                                                      const ReduceScatterOptions& o) {
  check_tensor(out, "reduce_scatter", "mpi");
  check_tensor(in, "reduce_scatter", "mpi");
  cpu::check_reducible(in.dtype(), o.op, "reduce_scatter");
  check_reduce_scatter(out, in, size_);
  mpi_count(static_cast<size_t>(in.numel()), "reduce_scatter");
  auto dst = std::make_shared<ReduceBuffer>(out);
  // MPI forbids overlapping send and receive buffers; the in-place form (output is the input's
  // block `rank`) reduces from a copy of the input.
  const auto* in_begin = static_cast<const uint8_t*>(in.raw_data());
  const auto* out_begin = static_cast<const uint8_t*>(dst->data());
  const bool overlap =
      out_begin < in_begin + in.nbytes() && in_begin < out_begin + dst->mpi.nbytes();
  auto src = std::make_shared<ReduceBuffer>(overlap ? in.clone() : in);
  const int count = static_cast<int>(out.numel());
  const int n = size_;
  return enqueue(
      "reduce_scatter", o.timeout, true, in.nbytes(), {src->user, src->mpi, dst->user, dst->mpi},
      [this, src, dst, count, o](Op&, MPI_Request* req) {
        check_mpi(
            MPI_Ireduce_scatter_block(src->data(), dst->data(), count,
                                      reduce_type(src->user.dtype()), mpi_op(o.op), comm_, req),
            "MPI_Ireduce_scatter_block");
      },
      [dst, count, n, o] {
        if (o.op == ReduceOp::kAvg && count > 0)
          cpu::divide(dst->mpi.dtype(), dst->data(), static_cast<size_t>(count), n);
        dst->write_back();
      });
}

std::shared_ptr<Work> MpiProcessGroup::alltoall(Tensor& out, const Tensor& in,
                                                const CollectiveOptions& o) {
  check_tensor(out, "alltoall", "mpi");
  check_tensor(in, "alltoall", "mpi");
  check_alltoall(out, in, size_);
  const int block = mpi_count(in.nbytes() / static_cast<size_t>(size_), "alltoall");
  Tensor output = out, input = in;
  return enqueue("alltoall", o.timeout, true, in.nbytes(), {output, input},
                 [this, output, input, block](Op&, MPI_Request* req) {
                   check_mpi(MPI_Ialltoall(input.raw_data(), block, MPI_BYTE, output.raw_data(),
                                           block, MPI_BYTE, comm_, req),
                             "MPI_Ialltoall");
                 });
}

std::shared_ptr<Work> MpiProcessGroup::barrier(const CollectiveOptions& o) {
  return enqueue("barrier", o.timeout, true, 0, {}, [this](Op&, MPI_Request* req) {
    check_mpi(MPI_Ibarrier(comm_, req), "MPI_Ibarrier");
  });
}

std::shared_ptr<Work> MpiProcessGroup::send(const Tensor& t, int dst, int tag) {
  check_tensor(t, "send", "mpi");
  check_peer(dst, rank_, size_, "send", "destination");
  COHORT_CHECK(tag >= 0 && tag <= 32767, "send: tag ", tag, " is outside 0..32767");
  const int bytes = mpi_count(t.nbytes(), "send");
  Tensor tensor = t;
  return enqueue(
      "send", Millis(0), false, t.nbytes(), {tensor},
      [this, tensor, bytes, dst, tag](Op&, MPI_Request* req) {
        check_mpi(MPI_Isend(tensor.raw_data(), bytes, MPI_BYTE, dst, tag, comm_, req), "MPI_Isend");
      },
      {}, dst);
}

std::shared_ptr<Work> MpiProcessGroup::recv(Tensor& t, int src, int tag) {
  check_tensor(t, "recv", "mpi");
  check_peer(src, rank_, size_, "recv", "source");
  COHORT_CHECK(tag >= 0 && tag <= 32767, "recv: tag ", tag, " is outside 0..32767");
  const int bytes = mpi_count(t.nbytes(), "recv");
  Tensor tensor = t;
  return enqueue(
      "recv", Millis(0), false, t.nbytes(), {tensor},
      [this, tensor, bytes, src, tag](Op&, MPI_Request* req) {
        check_mpi(MPI_Irecv(tensor.raw_data(), bytes, MPI_BYTE, src, tag, comm_, req), "MPI_Irecv");
      },
      {}, src);
}

// Named apart from mpi::create and mpi::bootstrap_store in libcohort_collectives, which forward
// here.
std::shared_ptr<ProcessGroup> create_group(std::shared_ptr<Store> store, int rank, int size,
                                           const ProcessGroupOptions& options) {
  return std::make_shared<MpiProcessGroup>(std::move(store), rank, size, options);
}

std::string library_version() {
  char text[MPI_MAX_LIBRARY_VERSION_STRING] = {};
  int length = 0;
  if (MPI_Get_library_version(text, &length) != MPI_SUCCESS) return "unknown";
  std::string v(text, strnlen(text, sizeof text));
  const size_t end = v.find_first_of(",\n");
  return end == std::string::npos ? v : v.substr(0, end);
}

std::shared_ptr<Store> find_store(Millis timeout) {
  ensure_mpi(timeout);
  // The address and the job's token travel by MPI broadcast, the channel mpirun already trusts:
  // rank 0 makes a fresh token unless the job was given one.
  char address[256] = {}, token_text[128] = {};
  std::shared_ptr<TcpStore> store;
  TcpStoreOptions o;
  o.timeout = timeout;
  if (world_rank() == 0) {
    const std::string host = host_for_peers();
    auto given = JobToken::from_environment();
    o.token = given ? *given : JobToken::generate();
    o.is_server = true;
    // One node: loopback only. Several: every interface, as the name peers resolve may not be
    // the one this node's resolver gives (127.0.1.1 in Debian's /etc/hosts).
    o.bind = host == "127.0.0.1" ? host : "";
    o.host = host;
    store = std::make_shared<TcpStore>(o);
    std::snprintf(address, sizeof address, "%s:%u", host.c_str(),
                  static_cast<unsigned>(store->port()));
    std::snprintf(token_text, sizeof token_text, "%s", o.token.to_text().c_str());
  }
  {
    const StartupWatchdog watchdog("MPI rank 0's broadcast of the store's address", timeout);
    std::lock_guard<std::mutex> lock(mpi_lock());
    check_mpi(MPI_Bcast(address, sizeof address, MPI_CHAR, 0, MPI_COMM_WORLD),
              "MPI_Bcast of the store address");
    check_mpi(MPI_Bcast(token_text, sizeof token_text, MPI_CHAR, 0, MPI_COMM_WORLD),
              "MPI_Bcast of the job's token");
  }
  if (store) return store;
  const std::string a(address, strnlen(address, sizeof address));
  const size_t colon = a.rfind(':');
  o.host = a.substr(0, colon);
  o.port = static_cast<uint16_t>(std::atoi(a.c_str() + colon + 1));
  o.token = JobToken::parse(std::string(token_text, strnlen(token_text, sizeof token_text)),
                            "the token broadcast by MPI rank 0");
  return std::make_shared<TcpStore>(o);
}

}  // namespace

}  // namespace cohort::collectives::mpi

extern "C" const cohort::collectives::MpiModule cohort_mpi_module{
    COHORT_VERSION, &cohort::collectives::mpi::create_group, &cohort::collectives::mpi::find_store,
    &cohort::collectives::mpi::library_version};
