// The TcpStore as an attacker on the same network meets it: every connection must prove the job's
// token before anything else, workers cannot touch the agents' keys, and nothing a peer sends
// (huge length prefixes, half-sent requests, waits it abandons, floods of idle connections) makes
// the server hold more memory or descriptors than its limits allow.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <thread>

#include "collectives/store/tcp_store.h"
#include "collectives/store/tcp_store_protocol.h"
#include "core/util/error.h"

namespace cohort::collectives {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

const JobToken& job() {
  static const JobToken token = JobToken::generate();
  return token;
}

TcpStoreServerOptions server_options(TcpStoreLimits limits = {}) {
  TcpStoreServerOptions o;
  o.token = job();
  o.limits = limits;
  return o;
}

TcpStoreOptions client_options(uint16_t port, JobToken token = job(),
                               StoreRole role = StoreRole::kWorker) {
  TcpStoreOptions o;
  o.port = port;
  o.token = std::move(token);
  o.role = role;
  o.timeout = 60s;
  return o;
}

// A client that speaks the wire format by hand, so a test can send what no TcpStore would.
class Raw {
 public:
  explicit Raw(uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  }
  ~Raw() {
    if (fd_ >= 0) ::close(fd_);
  }
  Raw(const Raw&) = delete;
  Raw& operator=(const Raw&) = delete;
  bool connected() const { return connected_; }

  void send(const std::string& bytes) {
    size_t off = 0;
    while (off < bytes.size()) {
      const ssize_t n = ::send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return;
      off += static_cast<size_t>(n);
    }
  }
  // Exactly n bytes within the limit; fewer when the peer closes first.
  std::string receive(size_t n, std::chrono::seconds limit = 60s) {
    std::string out;
    const auto end = Clock::now() + limit;
    while (out.size() < n && Clock::now() < end) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) continue;
      char buf[4096];
      const ssize_t got = ::recv(fd_, buf, std::min(sizeof buf, n - out.size()), 0);
      if (got <= 0) break;
      out.append(buf, static_cast<size_t>(got));
    }
    return out;
  }
  // True once the server has closed the connection (within the limit).
  bool closed_by_server(std::chrono::seconds limit = 60s) {
    const auto end = Clock::now() + limit;
    while (Clock::now() < end) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) continue;
      char buf[4096];
      const ssize_t got = ::recv(fd_, buf, sizeof buf, 0);
      if (got <= 0) return true;
    }
    return false;
  }
  // True when the server has closed the connection already (no waiting).
  bool closed_now() {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, 0) <= 0) return false;
    char buf[4096];
    return ::recv(fd_, buf, sizeof buf, MSG_DONTWAIT) <= 0;
  }
  // The handshake with `token` in `role`; returns the verdict byte (0 accepted), or -1.
  int handshake(const JobToken& token, StoreRole role) {
    const std::string challenge = receive(wire::kChallengeBytes);
    if (challenge.size() != wire::kChallengeBytes) return -1;
    const std::string server_nonce = challenge.substr(sizeof wire::kMagic);
    const std::string client_nonce(wire::kNonceBytes, 'n');
    std::string response(wire::kMagic, sizeof wire::kMagic);
    response += static_cast<char>(role);
    response += client_nonce;
    response += wire::client_proof(token.role_key(role), server_nonce, client_nonce, role);
    send(response);
    const std::string verdict = receive(wire::kVerdictBytes);
    return verdict.size() == wire::kVerdictBytes ? verdict[0] : -1;
  }
  // One request; returns the reply's body ("" when the connection closed instead).
  std::string request(uint8_t op, const wire::Fields& fields) {
    send(wire::encode(op, fields));
    const std::string header = receive(4);
    if (header.size() != 4) return "";
    uint32_t n;
    std::memcpy(&n, header.data(), 4);
    return receive(n);
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
};

int open_descriptors() {
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
    (void)e;
    ++n;
  }
  return n;
}

long resident_kib() {
  std::ifstream f("/proc/self/status");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  return -1;
}

// Polls `cond` for up to a minute: the server acts on its own thread.
template <typename F>
bool eventually(F cond) {
  const auto end = Clock::now() + 60s;
  while (Clock::now() < end) {
    if (cond()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return cond();
}

TEST(StoreSecurity, AClientWithoutTheTokenGetsNothingAndChangesNothing) {
  TcpStoreServer server(server_options());
  TcpStore honest(client_options(server.port()));
  honest.set("model/secret", "weights");
  {
    // A request straight away, as to an unauthenticated store: the challenge comes, then the
    // request is taken as a malformed handshake and the connection is closed.
    Raw raw(server.port());
    ASSERT_TRUE(raw.connected());
    raw.send(wire::encode(wire::kSet, {"model/secret", std::string(100, 'x')}));
    EXPECT_TRUE(raw.closed_by_server());
  }
  {
    // A handshake under another job's token.
    Raw raw(server.port());
    EXPECT_EQ(raw.handshake(JobToken::generate(), StoreRole::kWorker), 1);
    EXPECT_TRUE(raw.closed_by_server());
  }
  EXPECT_EQ(honest.get("model/secret"), "weights");
  EXPECT_EQ(honest.num_keys(), 1);
  EXPECT_GE(server.stats().refused, 2);
}

TEST(StoreSecurity, AWrongTokenIsRefusedWithAnAuthError) {
  TcpStoreServer server(server_options());
  try {
    TcpStore stranger(client_options(server.port(), JobToken::generate()));
    FAIL() << "a stranger's token was accepted";
  } catch (const AuthError& e) {
    EXPECT_NE(std::string(e.what()).find("refused"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("127.0.0.1:" + std::to_string(server.port())),
              std::string::npos)
        << e.what();
  }
}

TEST(StoreSecurity, AServerWithoutTheTokenCannotPoseAsTheStore) {
  // A squatter that answers the handshake like a store but does not know the job's token: the
  // client must not trust it with a single request.
  TcpStoreServerOptions squatter = server_options();
  squatter.token = JobToken::generate();
  TcpStoreServer server(squatter);
  EXPECT_THROW(TcpStore(client_options(server.port())), AuthError);
}

TEST(StoreSecurity, WorkersCannotReadOrWriteTheAgentsKeys) {
  TcpStoreServer server(server_options());
  TcpStore agent(client_options(server.port(), job(), StoreRole::kAgent));
  TcpStore worker(client_options(server.port(), job().worker(), StoreRole::kWorker));
  agent.set("launch/attempt0/heartbeat/0", "7");
  for (auto attempt : std::vector<std::function<void()>>{
           [&] { worker.set("launch/attempt0/failed", "the attacker's text"); },
           [&] { worker.compare_set("launch/attempt0/failed", "", "x"); },
           [&] { worker.add("launch/attempt0/heartbeat/0", 1); },
           [&] { worker.get("launch/attempt0/heartbeat/0"); },
           [&] {
             worker.check({"attempt0/x", "launch/attempt0/heartbeat/0"});
           },
           [&] { worker.delete_key("launch/attempt0/heartbeat/0"); }}) {
    try {
      attempt();
      ADD_FAILURE() << "a worker used an agent's key";
    } catch (const DistributedError& e) {
      EXPECT_NE(std::string(e.what()).find("belongs to the launcher's agents"), std::string::npos)
          << e.what();
    }
  }
  EXPECT_EQ(agent.get("launch/attempt0/heartbeat/0"), "7");
  EXPECT_FALSE(agent.check({"launch/attempt0/failed"}));
  // Workers' own keys are theirs and the agents'.
  worker.set("attempt0/rank/1", "ok");
  EXPECT_EQ(agent.get("attempt0/rank/1"), "ok");
}

TEST(StoreSecurity, AWorkersTokenCannotActAsAnAgent) {
  TcpStoreServer server(server_options());
  EXPECT_THROW(TcpStore(client_options(server.port(), job().worker(), StoreRole::kAgent)),
               AuthError);
  // Nor can a raw client claim the agent role with the worker key.
  Raw raw(server.port());
  const std::string challenge = raw.receive(wire::kChallengeBytes);
  ASSERT_EQ(challenge.size(), wire::kChallengeBytes);
  const std::string nonce(wire::kNonceBytes, 'x');
  std::string response(wire::kMagic, sizeof wire::kMagic);
  response += static_cast<char>(StoreRole::kAgent);
  response += nonce;
  response += wire::client_proof(job().role_key(StoreRole::kWorker),
                                 challenge.substr(sizeof wire::kMagic), nonce, StoreRole::kAgent);
  raw.send(response);
  const std::string verdict = raw.receive(wire::kVerdictBytes);
  ASSERT_FALSE(verdict.empty());
  EXPECT_EQ(verdict[0], 1);
}

TEST(StoreSecurity, AHugeLengthPrefixCostsNoMemory) {
  TcpStoreServer server(server_options());
  const long before = resident_kib();
  for (int i = 0; i < 64; ++i) {
    // Unauthenticated: four bytes claiming 1 GiB are just a short handshake.
    Raw stranger(server.port());
    const uint32_t huge = 1u << 30;
    stranger.send(std::string(reinterpret_cast<const char*>(&huge), 4));
    // Authenticated: the claim is refused with the limit, and the connection closed.
    Raw member(server.port());
    ASSERT_EQ(member.handshake(job(), StoreRole::kWorker), 0);
    member.send(std::string(reinterpret_cast<const char*>(&huge), 4));
    const std::string header = member.receive(4);
    ASSERT_EQ(header.size(), 4u);
    uint32_t n;
    std::memcpy(&n, header.data(), 4);
    const std::string body = member.receive(n);
    EXPECT_NE(body.find("exceeds the store's limit"), std::string::npos) << body;
    EXPECT_TRUE(member.closed_by_server());
  }
  // 64 GiB claimed in all; a few MiB of growth is the allocator's noise.
  EXPECT_LT(resident_kib() - before, 32 * 1024);
  TcpStore honest(client_options(server.port()));
  honest.set("still", "works");
  EXPECT_EQ(honest.get("still"), "works");
}

TEST(StoreSecurity, KeysAndValuesBeyondTheLimitsAreErrorsNamingThem) {
  TcpStoreLimits limits;
  limits.max_value_bytes = 1000;
  limits.max_total_bytes = 5000;
  TcpStoreServer server(server_options(limits));
  TcpStore client(client_options(server.port()));
  try {
    client.set("big", std::string(2000, 'v'));
    FAIL() << "a value over the limit was stored";
  } catch (const DistributedError& e) {
    EXPECT_NE(std::string(e.what()).find("limit of 1000 bytes"), std::string::npos) << e.what();
  }
  for (int i = 0; i < 4; ++i) client.set("k" + std::to_string(i), std::string(1000, 'v'));
  try {
    client.set("k4", std::string(1000, 'v'));
    FAIL() << "the store grew past its total limit";
  } catch (const DistributedError& e) {
    EXPECT_NE(std::string(e.what()).find("limit is 5000"), std::string::npos) << e.what();
  }
  // Replacing and deleting give the room back.
  client.set("k0", "small");
  EXPECT_TRUE(client.delete_key("k1"));
  client.set("k4", std::string(1000, 'v'));
  // The client refuses what no default server would take, before sending it.
  EXPECT_THROW(client.set(std::string(TcpStoreLimits::kDefaultMaxKey + 1, 'k'), "v"),
               InvalidArgument);
  EXPECT_THROW(client.set("v", std::string(TcpStoreLimits::kDefaultMaxValue + 1, 'v')),
               InvalidArgument);
}

TEST(StoreSecurity, AThousandAbandonedWaitsLeaveTheDescriptorsFlat) {
  TcpStoreServer server(server_options());
  TcpStore honest(client_options(server.port()));
  const int before = open_descriptors();
  for (int batch = 0; batch < 10; ++batch) {
    std::vector<std::unique_ptr<Raw>> waiters;
    for (int i = 0; i < 100; ++i) {
      waiters.push_back(std::make_unique<Raw>(server.port()));
      ASSERT_EQ(waiters.back()->handshake(job(), StoreRole::kWorker), 0);
      waiters.back()->send(
          wire::encode(i % 2 ? wire::kWait : wire::kGet, {"never/" + std::to_string(i)}));
    }
    ASSERT_TRUE(eventually([&] { return server.stats().waiting == 100; }))
        << server.stats().waiting;
    // The clients go away without a word: their waits must go with them at once.
  }
  EXPECT_TRUE(eventually([&] { return server.stats().waiting == 0; })) << server.stats().waiting;
  EXPECT_TRUE(eventually([&] { return server.stats().connections == 1; }))
      << server.stats().connections;
  EXPECT_TRUE(eventually([&] { return open_descriptors() <= before; }))
      << open_descriptors() << " descriptors, " << before << " before";
  honest.set("never/0", "now");
  EXPECT_EQ(honest.get("never/0"), "now");
}

TEST(StoreSecurity, IdleAndHalfSentConnectionsTimeOut) {
  TcpStoreLimits limits;
  limits.handshake_timeout = 300ms;
  limits.frame_timeout = 300ms;
  TcpStoreServer server(server_options(limits));
  Raw silent(server.port());  // never answers the challenge
  Raw half(server.port());
  ASSERT_EQ(half.handshake(job(), StoreRole::kWorker), 0);
  half.send(std::string("\x20\x00", 2));  // two bytes of a length prefix, then nothing
  Raw trickle(server.port());
  ASSERT_EQ(trickle.handshake(job(), StoreRole::kWorker), 0);
  const std::string request = wire::encode(wire::kSet, {"k", std::string(100, 'v')});
  trickle.send(request.substr(0, 10));
  EXPECT_TRUE(silent.closed_by_server());
  EXPECT_TRUE(half.closed_by_server());
  // A byte now and then does not keep a request alive: its time runs from its first byte, so the
  // server closes the connection while the bytes still trickle in.
  bool closed = false;
  for (size_t i = 10; i + 1 < request.size() && !closed; ++i) {
    trickle.send(request.substr(i, 1));
    std::this_thread::sleep_for(50ms);
    closed = trickle.closed_now();
  }
  EXPECT_TRUE(closed);
  // An authenticated client that is idle between requests keeps its connection.
  TcpStore honest(client_options(server.port()));
  std::this_thread::sleep_for(600ms);
  honest.set("a", "b");
  EXPECT_EQ(honest.get("a"), "b");
}

TEST(StoreSecurity, AFloodOfIdleConnectionsDoesNotLockOutTheJob) {
  TcpStoreLimits limits;
  limits.max_handshakes = 8;
  TcpStoreServer server(server_options(limits));
  std::vector<std::unique_ptr<Raw>> idle;
  for (int i = 0; i < 64; ++i) idle.push_back(std::make_unique<Raw>(server.port()));
  // The oldest idle ones are dropped to make room; the job's processes get in.
  TcpStore honest(client_options(server.port()));
  honest.set("a", "b");
  EXPECT_EQ(honest.get("a"), "b");
  EXPECT_TRUE(eventually([&] { return server.stats().connections <= 8 + 1; }))
      << server.stats().connections;
}

TEST(StoreSecurity, EveryDescriptorIsCloseOnExec) {
  TcpStoreServer server(server_options());
  TcpStore client(client_options(server.port()));
  client.set("a", "b");
  int sockets = 0;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    const auto target = std::filesystem::read_symlink(e.path(), ec).string();
    if (target.rfind("socket:", 0) != 0) continue;
    const int fd = std::stoi(e.path().filename().string());
    ++sockets;
    EXPECT_TRUE(::fcntl(fd, F_GETFD) & FD_CLOEXEC) << "socket descriptor " << fd;
  }
  EXPECT_GE(sockets, 3);  // the listener and both ends of the connection
}

TEST(StoreSecurity, AOneNodeStoreListensOnLoopbackOnly) {
  TcpStoreServer server(server_options());
  // /proc/net/tcp lists listeners as hex address:port; 0100007F is 127.0.0.1.
  std::ifstream f("/proc/net/tcp");
  char port_hex[8];
  std::snprintf(port_hex, sizeof port_hex, "%04X", server.port());
  bool found = false;
  for (std::string line; std::getline(f, line);) {
    if (line.find(std::string(":") + port_hex + " 00000000:0000 0A") == std::string::npos) continue;
    found = true;
    EXPECT_NE(line.find("0100007F:" + std::string(port_hex)), std::string::npos) << line;
  }
  EXPECT_TRUE(found) << "no listener on port " << server.port();
}

TEST(JobTokens, TheWorkerPartAndDerivedSecretsAreConsistent) {
  const JobToken t = JobToken::generate();
  EXPECT_TRUE(t.is_job());
  EXPECT_FALSE(t.worker().is_job());
  EXPECT_EQ(t.role_key(StoreRole::kWorker), t.worker().role_key(StoreRole::kWorker));
  EXPECT_NE(t.role_key(StoreRole::kAgent), t.role_key(StoreRole::kWorker));
  EXPECT_THROW(t.worker().role_key(StoreRole::kAgent), AuthError);
  // Both halves derive the parameter servers' secret alike; another job's differs.
  EXPECT_EQ(t.derive_secret("parameter server"), t.worker().derive_secret("parameter server"));
  EXPECT_NE(t.derive_secret("parameter server"),
            JobToken::generate().derive_secret("parameter server"));
  // The text round-trips; anything else is an AuthError naming where it came from.
  EXPECT_EQ(JobToken::parse(t.to_text(), "x").role_key(StoreRole::kAgent),
            t.role_key(StoreRole::kAgent));
  EXPECT_EQ(JobToken::parse(t.worker().to_text(), "x").role_key(StoreRole::kWorker),
            t.role_key(StoreRole::kWorker));
  for (const std::string& bad :
       std::vector<std::string>{"", "abc", std::string(64, 'g'), std::string(66, 'a'),
                                "worker:" + std::string(63, 'a')}) {
    try {
      JobToken::parse(bad, "COHORT_TOKEN");
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const AuthError& e) {
      EXPECT_NE(std::string(e.what()).find("COHORT_TOKEN"), std::string::npos) << e.what();
    }
  }
}

TEST(JobTokens, TokenFilesMustBePrivate) {
  const auto dir =
      std::filesystem::temp_directory_path() / ("cohort_token_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const auto path = dir / "token";
  std::ofstream(path) << JobToken::generate().to_text() << "\n";
  ::chmod(path.c_str(), 0644);
  EXPECT_THROW(read_private_file(path.string(), "COHORT_TOKEN_FILE"), AuthError);
  ::chmod(path.c_str(), 0600);
  EXPECT_EQ(read_private_file(path.string(), "COHORT_TOKEN_FILE").size(), 64u);
  // Two processes of one job derive the same token from the user's key file; another job's
  // differs. The key file is made on first use, private.
  ::setenv("COHORT_KEY_FILE", (dir / "key").c_str(), 1);
  const JobToken a = JobToken::for_job("slurm 42.0"), b = JobToken::for_job("slurm 42.0");
  EXPECT_EQ(a.role_key(StoreRole::kAgent), b.role_key(StoreRole::kAgent));
  EXPECT_NE(a.role_key(StoreRole::kAgent),
            JobToken::for_job("slurm 43.0").role_key(StoreRole::kAgent));
  EXPECT_EQ(std::filesystem::status(dir / "key").permissions() & std::filesystem::perms::all,
            std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
  ::unsetenv("COHORT_KEY_FILE");
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace cohort::collectives
