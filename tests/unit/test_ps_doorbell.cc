// The doorbell (parameter_server/doorbell.h): a worker's step calls to a parameter server on its
// node, through shared memory. Calls in order, errors as statuses, and each side noticing that the
// other gave up, stopped or died.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <string>
#include <thread>

#include "core/util/error.h"
#include "parameter_server/auth.h"
#include "parameter_server/doorbell.h"

namespace {

using namespace cohort;
using namespace cohort::ps;
using std::chrono::milliseconds;

std::string doorbell_name(const char* tag) {
  return "/cohort-test-bell-" + std::to_string(::getpid()) + "-" + tag + "-" +
         to_hex(random_bytes(4));
}

DoorbellRequest request(DoorbellCall call, int64_t step) {
  DoorbellRequest r;
  r.call = call;
  r.step = step;
  return r;
}

// Polls `done` for up to a minute (a loaded machine may be slow, never that slow).
bool eventually(const std::function<bool()>& done) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(milliseconds(1));
  }
  return true;
}

// A handler that waits until its call is cancelled (at most a minute), and says it saw that.
DoorbellServer::Handler wait_for_cancel(std::atomic<int>& started, std::atomic<int>& cancelled) {
  return [&](const DoorbellRequest&, const std::function<bool()>& is_cancelled) {
    ++started;
    if (eventually(is_cancelled)) ++cancelled;
    return DoorbellReply{grpc::StatusCode::CANCELLED, "cancelled"};
  };
}

TEST(Doorbell, EachRequestGetsItsOwnReplyInOrder) {
  DoorbellServer server(doorbell_name("order"), [](const DoorbellRequest& r, const auto&) {
    DoorbellReply rep;
    rep.version = 2 * r.step;
    rep.samples = r.samples + static_cast<int64_t>(r.lr);
    rep.pulled = r.call == DoorbellCall::kPushThenPull;
    rep.message = "step " + std::to_string(r.step);
    return rep;
  });
  DoorbellClient client(server.name());
  for (int64_t step = 0; step < 300; ++step) {
    DoorbellRequest req =
        request(step % 2 ? DoorbellCall::kPull : DoorbellCall::kPushThenPull, step);
    req.lr = 3;
    req.samples = step;
    const DoorbellReply rep = client.call(req, std::chrono::seconds(60));
    ASSERT_EQ(rep.code, grpc::StatusCode::OK) << rep.message;
    EXPECT_EQ(rep.version, 2 * step);
    EXPECT_EQ(rep.samples, step + 3);
    EXPECT_EQ(rep.pulled, step % 2 == 0);
    EXPECT_EQ(rep.message, "step " + std::to_string(step));
  }
  // The worker unlinked the name: no other process can open the segment now.
  EXPECT_THROW(collectives::map_segment(server.name(), 64, false), DistributedError);
}

TEST(Doorbell, ErrorsBecomeStatusesAndAnUnknownCallIsRefused) {
  DoorbellServer server(doorbell_name("errors"), [](const DoorbellRequest& r, const auto&) {
    if (r.step == 0) COHORT_THROW(InvalidArgument, "step 0 is refused");
    if (r.step == 1) COHORT_THROW(TimeoutError, "step 1 waited too long");
    if (r.step == 2) throw std::runtime_error("step 2 broke");
    return DoorbellReply{};
  });
  DoorbellClient client(server.name());
  const auto minute = std::chrono::seconds(60);
  DoorbellReply r = client.call(request(DoorbellCall::kPull, 0), minute);
  EXPECT_EQ(r.code, grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(r.message.find("step 0 is refused"), std::string::npos) << r.message;
  EXPECT_EQ(client.call(request(DoorbellCall::kPull, 1), minute).code,
            grpc::StatusCode::DEADLINE_EXCEEDED);
  r = client.call(request(DoorbellCall::kPull, 2), minute);
  EXPECT_EQ(r.code, grpc::StatusCode::INTERNAL);
  EXPECT_NE(r.message.find("step 2 broke"), std::string::npos) << r.message;
  r = client.call(request(static_cast<DoorbellCall>(7), 3), minute);
  EXPECT_EQ(r.code, grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(r.message.find("unknown call 7"), std::string::npos) << r.message;
  EXPECT_EQ(client.call(request(DoorbellCall::kPull, 3), minute).code, grpc::StatusCode::OK);
}

TEST(Doorbell, AWorkerThatGivesUpCancelsTheServersWait) {
  std::atomic<int> started{0}, cancelled{0};
  auto wait = wait_for_cancel(started, cancelled);
  DoorbellServer server(doorbell_name("give-up"), [&](const DoorbellRequest& r, const auto& c) {
    if (r.step == 0) return wait(r, c);
    return DoorbellReply{grpc::StatusCode::OK, "step " + std::to_string(r.step)};
  });
  DoorbellClient client(server.name());
  EXPECT_EQ(client.call(request(DoorbellCall::kPull, 0), milliseconds(200)).code,
            grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(eventually([&] { return cancelled == 1; }));
  // The next call gets its own reply, not the abandoned one's.
  EXPECT_EQ(client.call(request(DoorbellCall::kPull, 1), std::chrono::seconds(60)).message,
            "step 1");
}

TEST(Doorbell, AStoppedServerEndsTheCallInProgressAndRefusesTheNext) {
  std::atomic<int> started{0}, cancelled{0};
  auto server =
      std::make_unique<DoorbellServer>(doorbell_name("stop"), wait_for_cancel(started, cancelled));
  DoorbellClient client(server->name());
  DoorbellReply in_progress;
  std::thread t([&] {
    in_progress = client.call(request(DoorbellCall::kPull, 0), std::chrono::seconds(120));
  });
  ASSERT_TRUE(eventually([&] { return started == 1; }));
  server.reset();
  t.join();
  EXPECT_EQ(cancelled, 1);
  EXPECT_EQ(in_progress.code, grpc::StatusCode::CANCELLED);
  EXPECT_EQ(client.call(request(DoorbellCall::kPull, 1), std::chrono::seconds(60)).code,
            grpc::StatusCode::UNAVAILABLE);
}

// Each side watches the other's pid: a killed worker cancels what the server waits for on its
// behalf, and a killed server fails the worker's call as UNAVAILABLE, not after the timeout. Both
// are noticed before the dead process is reaped (a zombie still answers kill(pid, 0)).
TEST(Doorbell, AWorkerThatExitsCancelsItsCall) {
  std::atomic<int> started{0}, cancelled{0};
  DoorbellServer server(doorbell_name("worker-exit"), wait_for_cancel(started, cancelled));
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    DoorbellClient client(server.name());
    client.call(request(DoorbellCall::kPull, 0), std::chrono::seconds(120));
    ::_exit(0);
  }
  ASSERT_TRUE(eventually([&] { return started == 1; }));
  ::kill(pid, SIGKILL);
  EXPECT_TRUE(eventually([&] { return cancelled == 1; }));
  ::waitpid(pid, nullptr, 0);
}

TEST(Doorbell, AServerThatExitsFailsTheCallAsUnavailable) {
  const std::string name = doorbell_name("server-exit");
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::atomic<int> started{0}, cancelled{0};
    DoorbellServer server(name, wait_for_cancel(started, cancelled));
    const char c = 1;
    (void)!::write(ready[1], &c, 1);
    std::this_thread::sleep_for(std::chrono::seconds(120));  // killed long before
    ::_exit(0);
  }
  char c = 0;
  ASSERT_EQ(::read(ready[0], &c, 1), 1);
  DoorbellClient client(name);
  std::thread killer([&] {
    std::this_thread::sleep_for(milliseconds(200));  // most likely while the call waits
    ::kill(pid, SIGKILL);
  });
  const DoorbellReply r = client.call(request(DoorbellCall::kPull, 0), std::chrono::seconds(120));
  killer.join();
  EXPECT_EQ(r.code, grpc::StatusCode::UNAVAILABLE) << r.message;
  ::waitpid(pid, nullptr, 0);
  ::close(ready[0]);
  ::close(ready[1]);
}

}  // namespace
