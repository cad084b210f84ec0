#include "parameter_server/doorbell.h"

#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <new>

#include "collectives/futex.h"
#include "core/util/error.h"

namespace cohort::ps {

// Each side writes its half, then publishes it with a release store of the sequence number the
// other side waits on; the other reads after an acquire load of it. The request half is written
// by a process the server does not trust beyond its authentication, so the server reads each field
// once and checks it.
struct DoorbellBlock {
  int32_t server_pid = 0;
  std::atomic<int32_t> worker_pid{0};
  std::atomic<uint32_t> closed{0};  // the server no longer answers

  alignas(64) std::atomic<uint32_t> request{0};  // the last request's sequence number
  std::atomic<uint32_t> abandoned{0};            // a request the worker stopped waiting for
  int32_t call = 0;
  int64_t step = 0;
  double lr = 0;
  int64_t samples = 0;
  int64_t timeout_ms = 0;

  alignas(64) std::atomic<uint32_t> reply{0};  // the last answered request's sequence number
  int32_t code = 0;
  int64_t version = 0;
  int64_t total_samples = 0;
  int32_t pulled = 0;
  uint32_t message_bytes = 0;
  char message[1024] = {};
};
static_assert(std::atomic<uint32_t>::is_always_lock_free &&
                  std::atomic<int32_t>::is_always_lock_free,
              "futex words in shared memory must be plain lock-free integers");

namespace {

// Sleeps are sliced so that each side looks at the other's pid now and then.
constexpr auto kSlice = std::chrono::milliseconds(100);

}  // namespace

DoorbellServer::DoorbellServer(std::string name, Handler handle)
    : name_(std::move(name)), handle_(std::move(handle)) {
  mapping_ = collectives::map_segment(name_, sizeof(DoorbellBlock), /*create=*/true);
  block_ = new (mapping_.addr()) DoorbellBlock();
  block_->server_pid = static_cast<int32_t>(::getpid());
  thread_ = std::thread([this] { serve(); });
}

DoorbellServer::~DoorbellServer() {
  stop_.store(true);
  collectives::futex_wake(&block_->request);  // a sleeping thread looks at stop_ at once
  thread_.join();
  block_->closed.store(1, std::memory_order_release);
  collectives::futex_wake(&block_->reply);
  collectives::unlink_segment(name_);  // normally gone already: the worker unlinks it
}

bool DoorbellServer::worker_gone() const {
  return collectives::process_exited(block_->worker_pid.load(std::memory_order_relaxed));
}

void DoorbellServer::serve() {
  ::pthread_setname_np(::pthread_self(), "ps-doorbell");  // not the gRPC thread that made it
  uint32_t seen = 0;
  while (!stop_.load()) {
    const uint32_t r = block_->request.load(std::memory_order_acquire);
    if (r == seen) {
      collectives::futex_wait(&block_->request, seen, kSlice);
      if (block_->request.load(std::memory_order_relaxed) == seen && worker_gone()) return;
      continue;
    }
    seen = r;
    DoorbellRequest req;
    req.call = static_cast<DoorbellCall>(block_->call);
    req.step = block_->step;
    req.lr = block_->lr;
    req.samples = block_->samples;
    req.timeout_ms = block_->timeout_ms;
    auto cancelled = [this, r] {
      return stop_.load() || block_->abandoned.load(std::memory_order_relaxed) == r ||
             worker_gone();
    };
    DoorbellReply rep;
    try {
      if (req.call != DoorbellCall::kPushThenPull && req.call != DoorbellCall::kPull &&
          req.call != DoorbellCall::kPushThenAdmit)
        COHORT_THROW(InvalidArgument, "unknown call ", static_cast<int32_t>(req.call));
      rep = handle_(req, cancelled);
    } catch (const InvalidArgument& e) {
      rep = {grpc::StatusCode::INVALID_ARGUMENT, e.what()};
    } catch (const TimeoutError& e) {
      rep = {grpc::StatusCode::DEADLINE_EXCEEDED, e.what()};
    } catch (const std::exception& e) {
      rep = {grpc::StatusCode::INTERNAL, e.what()};
    }
    block_->code = static_cast<int32_t>(rep.code);
    block_->version = rep.version;
    block_->total_samples = rep.samples;
    block_->pulled = rep.pulled;
    const size_t n = std::min(rep.message.size(), sizeof block_->message);
    std::memcpy(block_->message, rep.message.data(), n);
    block_->message_bytes = static_cast<uint32_t>(n);
    block_->reply.store(r, std::memory_order_release);
    collectives::futex_wake(&block_->reply);
  }
}

DoorbellClient::DoorbellClient(const std::string& name) {
  try {
    mapping_ = collectives::map_segment(name, sizeof(DoorbellBlock), /*create=*/false);
  } catch (...) {
    collectives::unlink_segment(name);
    throw;
  }
  collectives::unlink_segment(name);  // both sides have it: no name left behind
  block_ = static_cast<DoorbellBlock*>(mapping_.addr());
  block_->worker_pid.store(static_cast<int32_t>(::getpid()), std::memory_order_relaxed);
}

bool DoorbellClient::server_gone() const {
  return block_->closed.load(std::memory_order_acquire) != 0 ||
         collectives::process_exited(block_->server_pid);
}

void DoorbellClient::ring(const DoorbellRequest& req) {
  gone_ = server_gone();
  if (gone_) return;
  block_->call = static_cast<int32_t>(req.call);
  block_->step = req.step;
  block_->lr = req.lr;
  block_->samples = req.samples;
  block_->timeout_ms = req.timeout_ms;
  rung_ = block_->request.load(std::memory_order_relaxed) + 1;
  block_->request.store(rung_, std::memory_order_release);
  collectives::futex_wake(&block_->request);
}

DoorbellReply DoorbellClient::wait(std::chrono::milliseconds timeout) {
  if (gone_)
    return {grpc::StatusCode::UNAVAILABLE, "the server no longer answers through shared memory"};
  const uint32_t r = rung_;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    const uint32_t got = block_->reply.load(std::memory_order_acquire);
    if (got == r) break;
    if (server_gone())
      return {grpc::StatusCode::UNAVAILABLE, "the server stopped answering through shared memory"};
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) {
      block_->abandoned.store(r, std::memory_order_relaxed);
      char what[96];
      std::snprintf(what, sizeof what, "no reply through shared memory within %.1f s",
                    static_cast<double>(timeout.count()) / 1000);
      return {grpc::StatusCode::DEADLINE_EXCEEDED, what};
    }
    collectives::futex_wait(&block_->reply, got,
                            std::min<std::chrono::nanoseconds>(kSlice, deadline - now));
  }
  DoorbellReply rep;
  rep.code = static_cast<grpc::StatusCode>(block_->code);
  rep.version = block_->version;
  rep.samples = block_->total_samples;
  rep.pulled = block_->pulled != 0;
  rep.message.assign(block_->message,
                     std::min<size_t>(block_->message_bytes, sizeof block_->message));
  return rep;
}

}  // namespace cohort::ps
