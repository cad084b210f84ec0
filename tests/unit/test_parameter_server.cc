// Parameter servers without processes: placement by bytes, the wire codec, the three modes'
// rules on a Shard, checkpoint and restore, and a real gRPC server in this process refusing
// clients without the secret and malformed, oversized and mismatched messages while it keeps
// serving a good client.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <numeric>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "core/autograd/grad_mode.h"
#include "core/ops/ops.h"
#include "core/optim/optimizer.h"
#include "parameter_server/auth.h"
#include "parameter_server/client.h"
#include "parameter_server/codec.h"
#include "parameter_server/doorbell.h"
#include "parameter_server/partition.h"
#include "parameter_server/ps.grpc.pb.h"
#include "parameter_server/server.h"
#include "parameter_server/shard.h"
#include "test_util.h"
#include "unit/ps_test_util.h"

namespace {

using namespace cohort;
using namespace cohort::ps;
using namespace cohort::ps::testing;
using core::Tensor;
using std::chrono::milliseconds;

TEST(Partition, SmallTensorsWholeLargeOnesSplitByRowsBalancedByBytes) {
  // An MLP 784-512-512-10: two large weights, small biases.
  std::vector<TensorSpec> t = {{"fc1.weight", {512, 784}}, {"fc1.bias", {512}},
                               {"fc2.weight", {512, 512}}, {"fc2.bias", {512}},
                               {"fc3.weight", {10, 512}},  {"fc3.bias", {10}}};
  for (int servers : {1, 2, 3, 5}) {
    auto pieces = partition(t, {servers, 256 << 10, 4});
    std::vector<int64_t> covered(t.size(), 0), load(static_cast<size_t>(servers), 0);
    for (const auto& p : pieces) {
      ASSERT_GE(p.server, 0);
      ASSERT_LT(p.server, servers);
      // Pieces of a tensor are consecutive rows: each starts where the last ended.
      EXPECT_EQ(p.offset, covered[p.tensor]) << p.key;
      covered[p.tensor] += p.numel;
      load[static_cast<size_t>(p.server)] += p.numel;
    }
    for (size_t i = 0; i < t.size(); ++i) {
      const int64_t n =
          std::accumulate(t[i].shape.begin(), t[i].shape.end(), int64_t{1}, std::multiplies<>());
      EXPECT_EQ(covered[i], n) << t[i].name;
    }
    // Greedy placement of row-split pieces: no server holds more than the largest piece above
    // the mean.
    const int64_t total = std::accumulate(load.begin(), load.end(), int64_t{0});
    int64_t largest = 0;
    for (const auto& p : pieces) largest = std::max(largest, p.numel);
    for (int64_t l : load) EXPECT_LE(l, total / servers + largest) << servers << " servers";
    if (servers == 1) {
      EXPECT_EQ(pieces.size(), t.size());
    }
  }
  auto two = partition(t, {2, 256 << 10, 4});
  EXPECT_EQ(two[0].key, "fc1.weight#part0");
  EXPECT_EQ(two[0].shape, (std::vector<int64_t>{256, 784}));
  EXPECT_EQ(two[1].key, "fc1.weight#part1");
  EXPECT_NE(two[0].server, two[1].server);
  EXPECT_EQ(two[2].key, "fc1.bias");  // 2 KB: whole
  // The same model always gets the same placement (every worker computes it alone).
  auto again = partition(t, {2, 256 << 10, 4});
  for (size_t i = 0; i < two.size(); ++i) EXPECT_EQ(two[i].server, again[i].server);
  EXPECT_THROW(partition(t, {0, 256 << 10, 4}), InvalidArgument);
}

TEST(Codec, Float32IsExactBFloat16RoundsToEightBitsOfMantissa) {
  std::vector<float> v = {0.f, 1.f, -2.5f, 3.14159265f, 1e-30f, 65504.f, -1e20f};
  for (Compression c : {Compression::kNone, Compression::kBFloat16}) {
    std::string bytes;
    encode(v.data(), static_cast<int64_t>(v.size()), c, &bytes);
    EXPECT_EQ(bytes.size(), v.size() * element_bytes(c));
    std::vector<float> back(v.size());
    decode(bytes, c, back.data());
    for (size_t i = 0; i < v.size(); ++i) {
      if (c == Compression::kNone) {
        EXPECT_EQ(back[i], v[i]);
      } else {
        EXPECT_NEAR(back[i], v[i], std::abs(v[i]) * (1.0 / 256)) << v[i];
      }
    }
  }
  EXPECT_THROW(decoded_count(std::string(7, 'x'), Compression::kNone), InvalidArgument);
  EXPECT_THROW(parse_compression("fp8"), ConfigError);
}

TEST(Auth, ProofsDependOnSecretNonceAndWorker) {
  const std::string s = new_secret(), n = random_bytes(32);
  EXPECT_EQ(s.size(), 64u);
  EXPECT_TRUE(proofs_equal(auth_proof(s, n, 1), auth_proof(s, n, 1)));
  EXPECT_FALSE(proofs_equal(auth_proof(s, n, 1), auth_proof(s, n, 2)));
  EXPECT_FALSE(proofs_equal(auth_proof(s, n, 1), auth_proof(new_secret(), n, 1)));
  EXPECT_FALSE(proofs_equal(auth_proof(s, n, 1), auth_proof(s, random_bytes(32), 1)));
}

TEST(Shard, SyncAppliesTheAverageOnceEveryLiveWorkerHasPushed) {
  Shard s(sgd_options(Mode::kSync, 2));
  s.define("w", {2}, {1.f, 2.f});
  s.define("w", {2}, {9.f, 9.f});  // a second worker's values: the first's win
  EXPECT_THROW(s.define("w", {3}, {0, 0, 0}), InvalidArgument);
  push(s, 0, 0, 0.5, {2.f, 4.f});
  EXPECT_EQ(s.version(), 0);
  // Worker 0's next step waits for worker 1, and the timeout names it.
  try {
    s.admit(0, 1, milliseconds(50), kNever);
    FAIL() << "admitted before the step was applied";
  } catch (const TimeoutError& e) {
    EXPECT_NE(std::string(e.what()).find("worker(s) 1"), std::string::npos) << e.what();
  }
  push(s, 1, 0, 0.5, {4.f, 0.f});
  EXPECT_EQ(s.version(), 1);
  EXPECT_TRUE(s.admit(0, 1, milliseconds(50), kNever));
  // w - lr * mean(g) = [1 - 0.5*3, 2 - 0.5*2]
  EXPECT_EQ(values(s), (std::vector<float>{-0.5f, 1.f}));
}

TEST(Shard, AsyncAppliesEachPushAtOnce) {
  Shard s(sgd_options(Mode::kAsync, 2));
  s.define("w", {2}, {1.f, 2.f});
  push(s, 1, 0, 1.0, {1.f, 1.f});
  EXPECT_EQ(s.version(), 1);
  push(s, 1, 1, 1.0, {1.f, 1.f});
  EXPECT_EQ(values(s), (std::vector<float>{-1.f, 0.f}));
  EXPECT_TRUE(s.admit(1, 5, milliseconds(1), kNever));  // never waits
}

TEST(Shard, BoundedHoldsAWorkerThatWouldRunMoreThanStalenessAhead) {
  Shard s(sgd_options(Mode::kBounded, 2));  // staleness 1
  s.define("w", {1}, {0.f});
  EXPECT_TRUE(s.admit(0, 1, milliseconds(1), kNever));  // 1 - 0 <= 1
  push(s, 0, 0, 1.0, {1.f});
  push(s, 0, 1, 1.0, {1.f});
  EXPECT_THROW(s.admit(0, 2, milliseconds(50), kNever), TimeoutError);  // 2 - 0 > 1
  std::thread slow([&] {
    std::this_thread::sleep_for(milliseconds(20));
    push(s, 1, 0, 1.0, {1.f});
  });
  EXPECT_TRUE(s.admit(0, 2, std::chrono::seconds(60), kNever));  // admitted once worker 1 is at 1
  slow.join();
}

TEST(Shard, ASilentWorkerIsDroppedAndTheSyncStepCompletesWithoutIt) {
  auto o = sgd_options(Mode::kSync, 2);
  o.worker_timeout = milliseconds(100);
  Shard s(o);
  s.define("w", {1}, {0.f});
  push(s, 0, 0, 1.0, {2.f});
  EXPECT_EQ(s.version(), 0);
  std::this_thread::sleep_for(milliseconds(150));
  s.touch(0, -1);
  EXPECT_EQ(s.expire_workers(), std::vector<int>{1});
  EXPECT_EQ(s.version(), 1);
  EXPECT_EQ(values(s), std::vector<float>{-2.f});  // worker 0's gradient alone
  EXPECT_EQ(s.live_workers(), std::vector<int>{0});
  s.touch(1, 1);  // it comes back
  EXPECT_EQ(s.live_workers(), (std::vector<int>{0, 1}));
}

TEST(Shard, IncompleteOrOutOfRangePushesAreRefused) {
  Shard s(sgd_options(Mode::kAsync, 1));
  s.define("w", {4}, {0, 0, 0, 0});
  float g[4] = {1, 1, 1, 1};
  s.push_begin(0, 0, 1.0, 1);
  EXPECT_THROW(s.push_chunk(0, "w", 2, g, 4), InvalidArgument);
  EXPECT_THROW(s.push_chunk(0, "nope", 0, g, 1), InvalidArgument);
  s.push_chunk(0, "w", 0, g, 2);
  EXPECT_THROW(s.push_commit(0), InvalidArgument);  // 2 of 4 elements
  EXPECT_EQ(s.version(), 0);
  EXPECT_THROW(s.touch(7, 0), InvalidArgument);
}

TEST(Shard, APushFromASegmentEqualsAStreamedOneAndPullsCopyIntoIt) {
  Shard streamed(sgd_options(Mode::kSync, 2)), shared(sgd_options(Mode::kSync, 2));
  for (Shard* s : {&streamed, &shared}) {
    s->define("a", {3}, {1, 2, 3});
    s->define("b", {2}, {4, 5});
  }
  EXPECT_THROW(shared.push_from_segment(0, 0, 1.0, 1), InvalidArgument);  // no segment yet
  const std::vector<std::vector<float>> ga = {{1, 2, 3}, {3, 2, 1}}, gb = {{1, 1}, {3, -1}};
  std::vector<collectives::Mapping> maps;
  for (int w = 0; w < 2; ++w) {
    const Shard::SegmentLayout l = shared.attach_segment(w);
    ASSERT_EQ(l.keys, (std::vector<std::string>{"a", "b"}));
    EXPECT_EQ(l.offsets[1] % 16, 0);  // 64-byte aligned
    // As the worker does: map it, write each gradient at its offset.
    maps.push_back(collectives::map_segment(l.name, 2 * l.floats * sizeof(float), false));
    auto* g = static_cast<float*>(maps.back().addr());
    std::copy(ga[w].begin(), ga[w].end(), g + l.offsets[0]);
    std::copy(gb[w].begin(), gb[w].end(), g + l.offsets[1]);
    shared.push_from_segment(w, 0, 0.5, 1);
    // Used once, the name is gone: nothing is left in /dev/shm.
    EXPECT_FALSE(std::filesystem::exists("/dev/shm" + l.name)) << l.name;
    streamed.push_begin(w, 0, 0.5, 1);
    streamed.push_chunk(w, "a", 0, ga[w].data(), 3);
    streamed.push_chunk(w, "b", 0, gb[w].data(), 2);
    streamed.push_commit(w);
  }
  EXPECT_EQ(shared.version(), 1);
  const auto want = streamed.snapshot(), got = shared.snapshot();
  EXPECT_EQ(got.values, want.values);
  EXPECT_EQ(got.values[0], (std::vector<float>{0, 1, 2}));  // [1 2 3] - 0.5 * [2 2 2]
  EXPECT_EQ(shared.copy_to_segment(1), 1);
  const auto* v = static_cast<const float*>(maps[1].addr());
  const int64_t floats = static_cast<int64_t>(maps[1].size() / sizeof(float) / 2);
  EXPECT_EQ(std::vector<float>(v + floats, v + floats + 3), want.values[0]);
}

// The values every worker on the node reads itself: the shard's parameters live in them, an
// update holds their sequence lock odd while it writes, and a new layout retires them for good.
TEST(Shard, SharedValuesAreTheParametersUnderASequenceLock) {
  Shard shard(sgd_options(Mode::kAsync, 1));
  shard.define("w", {3}, {1, 2, 3});
  Shard::SegmentLayout l = shard.attach_segment(0);
  ASSERT_FALSE(l.values_name.empty());
  auto shared = collectives::map_segment(
      l.values_name, (Shard::kSharedValuesOffset + l.floats) * sizeof(float), false);
  auto* lock = static_cast<Shard::SharedValues*>(shared.addr());
  const float* a = static_cast<const float*>(shared.addr()) + Shard::kSharedValuesOffset;
  EXPECT_EQ(std::vector<float>(a + l.offsets[0], a + l.offsets[0] + 3),
            (std::vector<float>{1, 2, 3}));
  EXPECT_EQ(lock->seq.load(), 0u);
  push(shard, 0, 0, 1.0, {1, 1, 1});
  EXPECT_EQ(lock->seq.load(), 2u);  // one update: odd while it wrote, even again
  EXPECT_EQ(std::vector<float>(a + l.offsets[0], a + l.offsets[0] + 3),
            (std::vector<float>{0, 1, 2}));
  EXPECT_EQ(values(shard), (std::vector<float>{0, 1, 2}));
  // Another worker attaching with the same layout shares them.
  EXPECT_EQ(shard.attach_segment(0).values_name, l.values_name);
  // A new piece changes the layout: fresh values with every piece, the old ones odd for good.
  shard.define("x", {2}, {4, 5});
  const Shard::SegmentLayout l2 = shard.attach_segment(0);
  EXPECT_NE(l2.values_name, l.values_name);
  EXPECT_EQ(lock->seq.load() % 2, 1u);
  auto values2 = collectives::map_segment(
      l2.values_name, (Shard::kSharedValuesOffset + l2.floats) * sizeof(float), false);
  const float* v2 = static_cast<const float*>(values2.addr()) + Shard::kSharedValuesOffset;
  EXPECT_EQ(std::vector<float>(v2 + l2.offsets[0], v2 + l2.offsets[0] + 3),
            (std::vector<float>{0, 1, 2}));
  EXPECT_EQ(std::vector<float>(v2 + l2.offsets[1], v2 + l2.offsets[1] + 2),
            (std::vector<float>{4, 5}));
}

// A server killed by SIGKILL cannot unlink its shared values; the next server on the node does.
// So do segments whose pid now belongs to another process (another start time).
TEST(Shard, SegmentsOfAServerThatExitedAreRemovedByTheNext) {
  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  const pid_t dead = ::fork();
  ASSERT_GE(dead, 0);
  if (dead == 0) {
    // The child names a segment as its own and dies without unlinking it.
    const std::string name = collectives::owned_segment_name("ps-values-test");
    collectives::map_segment(name, 4096, true);
    (void)!::write(pipe_fds[1], name.data(), name.size());
    ::_exit(0);
  }
  ::close(pipe_fds[1]);
  char buf[256] = {};
  ASSERT_GT(::read(pipe_fds[0], buf, sizeof buf - 1), 0);
  ::close(pipe_fds[0]);
  ::waitpid(dead, nullptr, 0);
  const std::string orphan = buf;
  const std::string alive = collectives::owned_segment_name("ps-values-test");
  const std::string reused =
      "/cohort-" + std::to_string(::getpid()) + "_1-ps-values-test";  // our pid, not our start
  collectives::map_segment(alive, 4096, true);
  collectives::map_segment(reused, 4096, true);
  ASSERT_TRUE(std::filesystem::exists("/dev/shm" + orphan));
  Shard next(sgd_options(Mode::kSync, 1));
  EXPECT_FALSE(std::filesystem::exists("/dev/shm" + orphan));
  EXPECT_FALSE(std::filesystem::exists("/dev/shm" + reused));
  EXPECT_TRUE(std::filesystem::exists("/dev/shm" + alive));  // its process still runs
  collectives::unlink_segment(alive);
}

TEST(Shard, CheckpointRestoresValuesOptimiserStateAndVersion) {
  const auto dir =
      std::filesystem::temp_directory_path() / ("cohort_shard_ckpt_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  auto o = sgd_options(Mode::kAsync, 1);
  o.optimizer.momentum = 0.9;
  o.checkpoint_dir = dir.string();
  o.checkpoint_every = 2;
  std::vector<float> after_two;
  {
    Shard s(o);
    EXPECT_FALSE(s.restored());
    s.define("w", {2}, {1.f, 1.f});
    push(s, 0, 0, 0.1, {1.f, -1.f});
    push(s, 0, 1, 0.1, {1.f, -1.f});  // version 2: checkpoint
    after_two = values(s);
  }
  Shard r(o);
  EXPECT_TRUE(r.restored());
  EXPECT_EQ(r.version(), 2);
  EXPECT_EQ(values(r), after_two);
  // The momentum buffer came back too: the next step is the same as without the restart.
  auto fo = sgd_options(Mode::kAsync, 1);
  fo.optimizer.momentum = 0.9;
  Shard ref(fo);
  ref.define("w", {2}, {1.f, 1.f});
  for (int i = 0; i < 3; ++i) push(ref, 0, i, 0.1, {1.f, -1.f});
  push(r, 0, 2, 0.1, {1.f, -1.f});
  EXPECT_EQ(values(r), values(ref));
  std::filesystem::remove_all(dir);
}

// Through shared memory, backward writes a linear layer's gradients straight into the worker's
// segment (gradient destinations): the server must apply exactly those, step after step.
TEST(PsClient, GradientsWrittenIntoTheSegmentAreTheOnesApplied) {
  ServerOptions so;
  so.secret = new_secret();
  so.shard = sgd_options(Mode::kSync, 1);
  Server server(so);
  ClientOptions co = client_of(server, so.secret);
  core::Generator gen(5);
  Tensor x = core::randn({4, 5}, {}, &gen), w0 = core::randn({3, 5}, {}, &gen);
  Tensor b0 = core::randn({3}, {}, &gen);
  Tensor w = w0.clone().requires_grad_(), b = b0.clone().requires_grad_();
  Tensor w_ref = w0.clone().requires_grad_(), b_ref = b0.clone().requires_grad_();
  core::optim::SGD ref({w_ref, b_ref}, core::optim::SGDOptions{0.1, 0, 0, 0, false});
  auto loss = [&](const Tensor& wt, const Tensor& bt) {
    Tensor y = core::linear(x, wt, bt);
    return core::sum(core::mul(y, y));
  };
  PsWorker worker({w, b}, {"w", "b"}, co);
  for (int64_t step = 0; step < 5; ++step) {
    worker.pull(step);
    worker.begin_step(step, 0.1, 4, /*during_backward=*/true);
    w.set_grad(Tensor());
    b.set_grad(Tensor());
    loss(w, b).backward();
    worker.finish_step();
    ref.zero_grad();
    loss(w_ref, b_ref).backward();
    ref.step();
  }
  worker.pull(5);
  EXPECT_TRUE(core::allclose(w, w_ref, 1e-6, 1e-6));
  EXPECT_TRUE(core::allclose(b, b_ref, 1e-6, 1e-6));
}

// Async workers on the server's node copy the shared values while the other's pushes update
// them: every pull must still be one version (all elements equal here), never a mixture.
TEST(PsClient, AsyncPullsOfSharedValuesAreNeverTorn) {
  ServerOptions so;
  so.secret = new_secret();
  so.shard = sgd_options(Mode::kAsync, 2);
  Server server(so);
  constexpr int64_t kSteps = 150, kElements = 1 << 18;  // 1 MB: updates take a while
  std::atomic<int> torn{0};
  auto work = [&](int worker) {
    ClientOptions co = client_of(server, so.secret, worker);
    core::Tensor p = core::zeros({kElements});
    p.set_requires_grad(true);
    PsWorker w({p}, {"w"}, co);
    for (int64_t step = 0; step < kSteps; ++step) {
      w.pull(step);
      const float* v = p.data_ptr<float>();
      if (!std::all_of(v, v + kElements, [&](float x) { return x == v[0]; })) ++torn;
      w.begin_step(step, 1.0, 1, false);
      p.set_grad(core::ones({kElements}));
      w.finish_step();
    }
    w.leave();
  };
  std::thread other(work, 1);
  work(0);
  other.join();
  EXPECT_EQ(torn, 0);
  const Shard::Snapshot snap = server.shard().snapshot();
  EXPECT_EQ(snap.version, 2 * kSteps);
  EXPECT_EQ(snap.values.at(0).front(), -2.0f * kSteps);
  EXPECT_EQ(snap.values.at(0).back(), -2.0f * kSteps);
}

// Sync workers on the server's node compute with views of its shared values (alias_values): an
// applied step shows in the parameters before any pull copies it. What a worker writes into its
// parameters before its first pull (a checkpoint it resumes from) stays its own, and after
// leave() its parameters are its own again while the other worker goes on.
TEST(PsClient, SyncParametersViewTheSharedValuesFromTheFirstPullUntilLeaving) {
  ServerOptions so;
  so.secret = new_secret();
  so.shard = sgd_options(Mode::kSync, 2);
  Server server(so);
  constexpr int64_t kSteps = 6, kMore = 3, kElements = 1000;
  const float lr = 0.25f;
  std::atomic<int> wrong{0};
  auto work = [&](int worker, int64_t steps, float* final_value) {
    ClientOptions co = client_of(server, so.secret, worker);
    co.alias_values = true;
    core::Tensor p = core::zeros({kElements});
    p.set_requires_grad(true);
    PsWorker w({p}, {"w"}, co);
    {
      core::autograd::NoGradGuard no_grad;
      p.fill_(5.0);
    }
    for (int64_t step = 0; step < steps; ++step) {
      w.pull(step);
      if (step == 0 && p.data_ptr<float>()[0] != 0.0f) ++wrong;  // the server's, not our 5
      w.begin_step(step, lr, 1, false);
      p.set_grad(core::ones({kElements}));
      w.finish_step();
      // The step is applied when finish_step returns; a view shows it before the next pull.
      const float* v = p.data_ptr<float>();
      if (v[0] != -lr * static_cast<float>(step + 1) || v[kElements - 1] != v[0]) ++wrong;
    }
    w.leave();
    *final_value = p.data_ptr<float>()[0];
    return p;
  };
  float left_at = 0, other_at = 0;
  core::Tensor other_p;
  std::thread other([&] { other_p = work(1, kSteps + kMore, &other_at); });
  core::Tensor p = work(0, kSteps, &left_at);
  other.join();
  EXPECT_EQ(wrong, 0);
  EXPECT_EQ(left_at, -lr * kSteps);
  EXPECT_EQ(p.data_ptr<float>()[0], -lr * kSteps);  // the other's later steps did not reach it
  EXPECT_EQ(other_at, -lr * (kSteps + kMore));
  EXPECT_EQ(values(server.shard()), std::vector<float>(kElements, -lr * (kSteps + kMore)));
}

// A server on loopback and raw gRPC clients, good and bad.
class ServerSecurity : public ::testing::Test {
 protected:
  void SetUp() override {
    ServerOptions o;
    o.secret = secret_;
    o.shard = sgd_options(Mode::kAsync, 2);
    o.max_message_bytes = 2 << 20;
    server_ = std::make_unique<Server>(o);
    channel_ = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
    stub_ = wire::ParameterServer::NewStub(channel_);
  }
  // Authenticates as `worker` with `secret`; returns the session ("" when refused).
  std::string login(int worker, const std::string& secret, grpc::Status* status = nullptr) {
    grpc::ClientContext c1, c2;
    wire::ChallengeRequest creq;
    creq.set_worker(worker);
    wire::ChallengeReply ch;
    grpc::Status s = stub_->Challenge(&c1, creq, &ch);
    if (s.ok()) {
      wire::AuthRequest a;
      a.set_worker(worker);
      a.set_nonce(ch.nonce());
      a.set_proof(auth_proof(secret, ch.nonce(), worker));
      wire::AuthReply r;
      s = stub_->Authenticate(&c2, a, &r);
      if (status) *status = s;
      return s.ok() ? r.session() : "";
    }
    if (status) *status = s;
    return "";
  }
  grpc::Status init(const std::string& session, const std::string& key, std::vector<int64_t> shape,
                    std::vector<float> v) {
    grpc::ClientContext c;
    c.AddMetadata("cohort-session", session);
    wire::InitReply r;
    auto w = stub_->Init(&c, &r);
    wire::Chunk chunk;
    chunk.set_key(key);
    chunk.mutable_shape()->Assign(shape.begin(), shape.end());
    encode(v.data(), static_cast<int64_t>(v.size()), Compression::kNone, chunk.mutable_data());
    w->Write(chunk);
    w->WritesDone();
    return w->Finish();
  }
  grpc::Status push(const std::string& session, const std::vector<wire::PushMessage>& msgs) {
    grpc::ClientContext c;
    c.AddMetadata("cohort-session", session);
    wire::PushReply r;
    auto w = stub_->Push(&c, &r);
    for (const auto& m : msgs)
      if (!w->Write(m)) break;
    w->WritesDone();
    return w->Finish();
  }
  static wire::PushMessage header(int64_t step) {
    wire::PushMessage m;
    m.mutable_header()->set_step(step);
    m.mutable_header()->set_lr(1.0);
    return m;
  }
  static wire::PushMessage chunk(const std::string& key, int64_t offset, std::vector<float> v) {
    wire::PushMessage m;
    m.mutable_chunk()->set_key(key);
    m.mutable_chunk()->set_offset(offset);
    encode(v.data(), static_cast<int64_t>(v.size()), Compression::kNone,
           m.mutable_chunk()->mutable_data());
    return m;
  }
  // A good client still gets service: its push is applied.
  void expect_still_serving() {
    const int64_t before = server_->shard().version();
    EXPECT_TRUE(push(good_, {header(0), chunk("w", 0, {1.f, 1.f})}).ok());
    EXPECT_EQ(server_->shard().version(), before + 1);
  }

  std::string secret_ = new_secret();
  std::unique_ptr<Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<wire::ParameterServer::Stub> stub_;
  std::string good_;
};

TEST_F(ServerSecurity, AClientWithoutTheSecretCanNeitherPullNorPush) {
  good_ = login(0, secret_);
  ASSERT_FALSE(good_.empty());
  ASSERT_TRUE(init(good_, "w", {2}, {0.f, 0.f}).ok());
  grpc::Status s;
  EXPECT_EQ(login(1, new_secret(), &s), "");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(login(5, secret_, &s), "");  // not a worker of this job
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  // No session, or a made-up one: refused.
  for (const std::string& session : {std::string(), to_hex(random_bytes(16))}) {
    grpc::ClientContext c;
    if (!session.empty()) c.AddMetadata("cohort-session", session);
    wire::PullRequest req;
    auto reader = stub_->Pull(&c, req);
    wire::Chunk got;
    EXPECT_FALSE(reader->Read(&got));
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);
    EXPECT_EQ(push(session, {header(0), chunk("w", 0, {5.f, 5.f})}).error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
  }
  EXPECT_EQ(server_->shard().version(), 0);
  expect_still_serving();
  // The library's client says who refused it.
  ClientOptions co;
  co.secret = new_secret();
  co.worker = 1;
  co.timeout = std::chrono::seconds(30);
  co.resolve = [this](int) { return server_->address(); };
  core::Tensor p = core::zeros({2});
  try {
    PsWorker w({p}, {"w"}, co);
    FAIL() << "a worker with the wrong secret was accepted";
  } catch (const DistributedError& e) {
    EXPECT_NE(std::string(e.what()).find("refused worker 1"), std::string::npos) << e.what();
  }
}

TEST_F(ServerSecurity, SharedMemoryIsOfferedOnlyToAuthenticatedWorkersOnItsNode) {
  good_ = login(0, secret_);
  ASSERT_TRUE(init(good_, "w", {2}, {0.f, 0.f}).ok());
  auto attach = [this](const std::string& session, const std::string& node,
                       wire::AttachReply* reply) {
    grpc::ClientContext c;
    if (!session.empty()) c.AddMetadata("cohort-session", session);
    wire::AttachRequest req;
    req.set_node(node);
    return stub_->Attach(&c, req, reply);
  };
  wire::AttachReply reply;
  EXPECT_EQ(attach("", collectives::node_identity(), &reply).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  ASSERT_TRUE(attach(good_, "another-host/boot/net", &reply).ok());
  EXPECT_TRUE(reply.segment().empty());   // not on this node: gRPC carries the data
  EXPECT_TRUE(reply.doorbell().empty());  // and the calls
  // Without a segment, a push that says its data is in shared memory is refused.
  auto shared_header = header(0);
  shared_header.mutable_header()->set_shared_memory(true);
  EXPECT_EQ(push(good_, {shared_header}).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  ASSERT_TRUE(attach(good_, collectives::node_identity(), &reply).ok());
  ASSERT_FALSE(reply.segment().empty());
  ASSERT_EQ(reply.pieces_size(), 1);
  EXPECT_EQ(reply.pieces(0).key(), "w");
  // A shared-memory push carries nothing but its header.
  EXPECT_EQ(push(good_, {shared_header, chunk("w", 0, {1.f, 1.f})}).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  {
    auto m = collectives::map_segment(reply.segment(), 2 * reply.floats() * sizeof(float), false);
    auto* g = static_cast<float*>(m.addr()) + reply.pieces(0).offset();
    g[0] = 2.f;
    g[1] = 4.f;
    EXPECT_TRUE(push(good_, {shared_header}).ok());
    EXPECT_EQ(server_->shard().snapshot().values.at(0), (std::vector<float>{-2.f, -4.f}));
    // The same step through the doorbell that came with the segment, with the pull after it.
    ASSERT_FALSE(reply.doorbell().empty());
    DoorbellClient bell(reply.doorbell());
    g[0] = g[1] = 1.f;
    DoorbellRequest req;
    req.call = DoorbellCall::kPushThenPull;
    req.step = 1;
    req.lr = 1;
    const DoorbellReply r = bell.call(req, std::chrono::seconds(60));
    ASSERT_EQ(r.code, grpc::StatusCode::OK) << r.message;
    EXPECT_TRUE(r.pulled);
    EXPECT_EQ(r.version, 2);
    EXPECT_EQ(g[reply.floats()], -3.f);  // the values half holds the pull
    EXPECT_EQ(g[reply.floats() + 1], -5.f);
  }
  const auto v = server_->shard().snapshot().values.at(0);
  EXPECT_EQ(v, (std::vector<float>{-3.f, -5.f}));  // async, lr 1
  expect_still_serving();
}

TEST_F(ServerSecurity, MalformedOversizedAndMismatchedMessagesAreRefused) {
  good_ = login(0, secret_);
  const std::string other = login(1, secret_);
  ASSERT_TRUE(init(good_, "w", {2}, {0.f, 0.f}).ok());
  // Wrong shape for a known tensor; an invalid shape.
  EXPECT_EQ(init(other, "w", {3}, {0, 0, 0}).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(init(other, "x", {-1}, {}).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  // A push without a header, of an unknown tensor, outside the tensor, incomplete, ragged bytes.
  EXPECT_EQ(push(other, {chunk("w", 0, {1.f, 1.f})}).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(push(other, {header(0), chunk("nope", 0, {1.f})}).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(push(other, {header(0), chunk("w", 1, {1.f, 1.f})}).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(push(other, {header(0), chunk("w", 0, {1.f})}).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  auto ragged = chunk("w", 0, {1.f});
  ragged.mutable_chunk()->mutable_data()->push_back('x');
  EXPECT_EQ(push(other, {header(0), ragged}).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  // Over the 2 MiB limit: gRPC refuses it before we see it.
  EXPECT_EQ(push(other, {header(0), chunk("w", 0, std::vector<float>(1 << 20, 1.f))}).error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(server_->shard().version(), 0);
  expect_still_serving();
}

}  // namespace
