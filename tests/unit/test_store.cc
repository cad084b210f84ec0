// Stores: the same contract checked on HashStore, FileStore and TcpStore, then what only a
// networked store can get wrong (a server that starts late or disappears, many concurrent clients).
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <functional>
#include <thread>

#include "collectives/store/file_store.h"
#include "collectives/store/tcp_store.h"
#include "core/util/error.h"

namespace cohort::collectives {
namespace {

using namespace std::chrono_literals;

// One token for every store of this test program, as one job has.
const JobToken& test_token() {
  static const JobToken token = JobToken::generate();
  return token;
}

TcpStoreServerOptions server_options(uint16_t port = 0) {
  TcpStoreServerOptions o;
  o.port = port;
  o.token = test_token();
  return o;
}

TcpStoreOptions client_options(uint16_t port, Millis timeout, bool is_server = false) {
  TcpStoreOptions o;
  o.port = port;
  o.token = test_token();
  o.timeout = timeout;
  o.is_server = is_server;
  return o;
}

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() /
          ("cohort_store_" + name + "_" + std::to_string(::getpid())))
      .string();
}

struct Kind {
  std::string name;
  // Returns a pair of handles on one store, as two ranks would hold them.
  std::function<std::pair<std::shared_ptr<Store>, std::shared_ptr<Store>>()> make;
};

void PrintTo(const Kind& k, std::ostream* os) { *os << k.name; }

class StoreContract : public ::testing::TestWithParam<Kind> {};

TEST_P(StoreContract, SetGetAddCompareSetCheckDelete) {
  auto [a, b] = GetParam().make();
  a->set("k", std::string("v\0x", 3));
  EXPECT_EQ(b->get("k"), std::string("v\0x", 3));  // values are bytes, not C strings
  EXPECT_EQ(a->add("n", 5), 5);
  EXPECT_EQ(b->add("n", -2), 3);
  EXPECT_EQ(a->get("n"), "3");
  EXPECT_THROW(a->add("k", 1), DistributedError);        // not an integer
  EXPECT_EQ(a->compare_set("c", "", "first"), "first");  // missing + empty expected: set
  EXPECT_EQ(b->compare_set("c", "wrong", "second"), "first");
  EXPECT_EQ(b->compare_set("c", "first", "second"), "second");
  EXPECT_EQ(a->compare_set("absent", "x", "y"), "x");  // missing + expected: unchanged
  EXPECT_FALSE(a->check({"absent"}));
  EXPECT_TRUE(b->check({"k", "n", "c"}));
  EXPECT_FALSE(b->check({"k", "absent"}));
  const int64_t before = a->num_keys();
  EXPECT_TRUE(b->delete_key("c"));
  EXPECT_FALSE(b->delete_key("c"));
  EXPECT_EQ(a->num_keys(), before - 1);
  EXPECT_FALSE(a->check({"c"}));
}

TEST_P(StoreContract, GetAndWaitBlockUntilAnotherRankSets) {
  auto [a, b] = GetParam().make();
  std::thread setter([b = b] {
    std::this_thread::sleep_for(50ms);
    b->set("late1", "x");
    b->set("late2", "y");
  });
  EXPECT_EQ(a->get("late1"), "x");
  a->wait({"late1", "late2"}, 60s);
  setter.join();
}

TEST_P(StoreContract, TimeoutsNameTheKeys) {
  auto [a, b] = GetParam().make();
  try {
    a->wait({"never", "nor_this"}, 100ms);
    FAIL() << "wait returned";
  } catch (const TimeoutError& e) {
    EXPECT_NE(std::string(e.what()).find("'never', 'nor_this'"), std::string::npos) << e.what();
  }
  a->set_timeout(100ms);
  EXPECT_THROW(a->get("never"), TimeoutError);
}

// A clone sees the same keys and is not held up by a blocking call on the original: how a group's
// progress reports keep flowing while the program waits on the store.
TEST_P(StoreContract, ClonesShareKeysButNotBlockingCalls) {
  auto [a, b] = GetParam().make();
  auto prefixed = std::make_shared<PrefixStore>("g", a);
  auto clone = prefixed->clone();
  std::thread waiter([prefixed] { prefixed->wait({"released"}, 60s); });
  std::this_thread::sleep_for(50ms);  // let the waiter block first (the test holds either way)
  clone->set("from_clone", "1");      // would queue behind the wait on a shared connection
  EXPECT_EQ(b->get("g/from_clone"), "1");
  clone->set("released", "1");
  waiter.join();
  EXPECT_TRUE(prefixed->check({"from_clone", "released"}));
}

TEST_P(StoreContract, PrefixStoresAreDisjoint) {
  auto [a, b] = GetParam().make();
  PrefixStore p1("g1", a), p2("g2", b);
  p1.set("x", "1");
  p2.set("x", "2");
  EXPECT_EQ(p1.get("x"), "1");
  EXPECT_EQ(p2.get("x"), "2");
  EXPECT_EQ(a->get("g1/x"), "1");
  EXPECT_FALSE(p2.check({"y"}));
}

std::vector<Kind> kinds() {
  return {
      {"hash",
       [] {
         auto s = std::make_shared<HashStore>();
         return std::make_pair<std::shared_ptr<Store>, std::shared_ptr<Store>>(s, s);
       }},
      {"file",
       [] {
         const std::string p = temp_path("contract");
         std::filesystem::remove(p);
         return std::make_pair<std::shared_ptr<Store>, std::shared_ptr<Store>>(
             std::make_shared<FileStore>(p, 60s), std::make_shared<FileStore>(p, 60s));
       }},
      {"tcp",
       [] {
         auto server = std::make_shared<TcpStore>(client_options(0, 60s, true));
         auto client = std::make_shared<TcpStore>(client_options(server->port(), 60s));
         return std::make_pair<std::shared_ptr<Store>, std::shared_ptr<Store>>(client, server);
       }},
  };
}

INSTANTIATE_TEST_SUITE_P(All, StoreContract, ::testing::ValuesIn(kinds()),
                         [](const auto& info) { return info.param.name; });

TEST(FileStore, LastClientRemovesTheFile) {
  const std::string p = temp_path("cleanup");
  {
    FileStore a(p, 10s);
    {
      FileStore b(p, 10s);
      b.set("x", "y");
    }
    EXPECT_TRUE(std::filesystem::exists(p));
    EXPECT_EQ(a.get("x"), "y");
    EXPECT_EQ(a.num_keys(), 1);
  }
  EXPECT_FALSE(std::filesystem::exists(p));
}

// A port the OS considers free right now.
uint16_t free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

TEST(TcpStore, ClientsRetryUntilTheServerStarts) {
  const uint16_t port = free_port();
  std::unique_ptr<TcpStore> client;
  std::thread t([&] { client = std::make_unique<TcpStore>(client_options(port, 60s)); });
  std::this_thread::sleep_for(300ms);
  TcpStoreServer server(server_options(port));
  t.join();
  client->set("a", "b");
  EXPECT_EQ(client->get("a"), "b");
}

TEST(TcpStore, NoServerIsATimeoutNamingTheAddress) {
  const uint16_t port = free_port();
  try {
    TcpStore client(client_options(port, 300ms));
    FAIL() << "connected to nothing";
  } catch (const TimeoutError& e) {
    EXPECT_NE(std::string(e.what()).find("127.0.0.1:" + std::to_string(port)), std::string::npos)
        << e.what();
  }
}

TEST(TcpStore, ServerThatDisappearsIsAnErrorNamingIt) {
  auto server = std::make_unique<TcpStoreServer>(server_options());
  const uint16_t port = server->port();
  TcpStore client(client_options(port, 120s));
  client.set("x", "1");
  std::thread killer([&] {
    std::this_thread::sleep_for(100ms);
    server.reset();
  });
  const auto t0 = std::chrono::steady_clock::now();
  try {
    client.wait({"never"}, 120s);
    FAIL() << "wait returned";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("127.0.0.1:" + std::to_string(port)), std::string::npos)
        << e.what();
  }
  killer.join();
  // Long before the 120 s timeout: the lost connection itself is the error.
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 60s);
}

TEST(TcpStore, SoakManyConcurrentClientsLoseNothing) {
  TcpStoreServer server(server_options());
  constexpr int kClients = 256, kOps = 1000;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int c = 0; c < kClients; ++c)
    threads.emplace_back([&, c] {
      try {
        TcpStore s(client_options(server.port(), 300s));
        for (int i = 0; i < kOps; ++i) {
          switch (i % 4) {
            case 0:
              s.add("counter", 1);
              break;
            case 1:
              s.set("c" + std::to_string(c) + "/" + std::to_string(i), std::to_string(i * c));
              break;
            case 2:
              if (s.get("c" + std::to_string(c) + "/" + std::to_string(i - 1)) !=
                  std::to_string((i - 1) * c))
                ++failures;
              break;
            default:
              s.compare_set("cas", "", "x");
          }
        }
      } catch (const std::exception& e) {
        ++failures;
        ADD_FAILURE() << "client " << c << ": " << e.what();
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  TcpStore check(client_options(server.port(), 60s));
  EXPECT_EQ(check.get("counter"), std::to_string(kClients * kOps / 4));
  EXPECT_EQ(check.num_keys(), 2 + kClients * kOps / 4);
}

}  // namespace
}  // namespace cohort::collectives
