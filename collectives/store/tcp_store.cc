// The TcpStore client: synchronous calls built from asynchronous operations run against a
// deadline, the way Asio gives blocking I/O a timeout. A connection is authenticated once, when it
// opens; a lost one is reopened (and authenticated again) by the next call.
#include "collectives/store/tcp_store.h"

#include <sys/socket.h>

#include <array>
#include <cstring>
#include <thread>
#include <utility>  // Boost 1.74's asio uses std::exchange without including it

#include <boost/asio.hpp>

#include "collectives/store/tcp_store_protocol.h"
#include "core/util/error.h"

namespace cohort::collectives {

namespace asio = boost::asio;
using asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using wire::Fields;

namespace {

// A reply's largest frame under the default limits: one value and the header.
constexpr uint32_t kMaxReplyFrame = TcpStoreLimits::kDefaultMaxValue + 64;

// Why a handshake failed: the server refused us (final) or the connection broke (retried: the
// server may be shedding connections under load).
struct Refused {
  std::string why;
};

}  // namespace

struct TcpStore::Client {
  std::string host;
  uint16_t port;
  StoreRole role;
  std::string key;  // the role's key
  asio::io_context io;
  tcp::socket socket{io};
  bool connected = false, ever_connected = false;
  std::mutex mu;

  std::string where() const { return host + ":" + std::to_string(port); }

  // Runs the io_context until `done` or the deadline; on the deadline, closes the socket so the
  // connection (which may still get a late answer) is never reused.
  bool run_until(bool& done, Clock::time_point deadline) {
    io.restart();
    io.run_until(deadline);
    if (done) return true;
    boost::system::error_code ignored;
    socket.close(ignored);
    connected = false;
    io.restart();
    io.run();  // let the cancelled handlers finish
    return false;
  }

  // Reads exactly `n` bytes by the deadline; false on a timeout or a broken connection.
  bool read_exactly(char* into, size_t n, Clock::time_point deadline,
                    boost::system::error_code& ec) {
    bool done = false;
    asio::async_read(socket, asio::buffer(into, n), [&](boost::system::error_code e, size_t) {
      ec = e;
      done = true;
    });
    return run_until(done, deadline) && !ec;
  }
  bool write_all(const std::string& bytes, Clock::time_point deadline,
                 boost::system::error_code& ec) {
    bool done = false;
    asio::async_write(socket, asio::buffer(bytes), [&](boost::system::error_code e, size_t) {
      ec = e;
      done = true;
    });
    return run_until(done, deadline) && !ec;
  }

  // One TCP connection to `ep` with a close-on-exec socket, by the deadline.
  bool open(const tcp::endpoint& ep, Clock::time_point deadline, boost::system::error_code& ec) {
    socket = tcp::socket(io);
    const int fd = ::socket(ep.protocol().family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      ec = boost::system::error_code(errno, boost::system::system_category());
      return false;
    }
    socket.assign(ep.protocol(), fd, ec);
    if (ec) {
      ::close(fd);
      return false;
    }
    bool done = false;
    socket.async_connect(ep, [&](boost::system::error_code e) {
      ec = e;
      done = true;
    });
    if (!run_until(done, deadline) || ec) return false;
    // Before the handshake: its three small messages must not wait on Nagle's algorithm.
    socket.set_option(tcp::no_delay(true), ec);
    return true;
  }

  // The handshake of tcp_store_protocol.h. Returns "" when the server accepted us and proved it
  // holds the token; throws Refused when it refused us; otherwise describes the failure (retried).
  std::string authenticate(Clock::time_point deadline) {
    boost::system::error_code ec;
    std::array<char, wire::kChallengeBytes> challenge{};
    if (!read_exactly(challenge.data(), challenge.size(), deadline, ec))
      return "the connection closed before the server's challenge";
    if (std::memcmp(challenge.data(), wire::kMagic, sizeof wire::kMagic) != 0)
      throw Refused{"the program listening there is not a Cohort store"};
    const std::string server_nonce(challenge.data() + sizeof wire::kMagic, wire::kNonceBytes);
    const std::string client_nonce = random_bytes(wire::kNonceBytes);
    std::string response(wire::kMagic, sizeof wire::kMagic);
    response += static_cast<char>(role);
    response += client_nonce;
    response += wire::client_proof(key, server_nonce, client_nonce, role);
    if (!write_all(response, deadline, ec)) return "the connection closed during the handshake";
    std::array<char, wire::kVerdictBytes> verdict{};
    if (!read_exactly(verdict.data(), verdict.size(), deadline, ec))
      return "the connection closed before the server's verdict";
    if (verdict[0] != 0)
      throw Refused{std::string("it refused this process's ") + role_name(role) +
                    " token: the store belongs to another job, or this job's processes were "
                    "given different tokens (COHORT_TOKEN, COHORT_TOKEN_FILE)"};
    const std::string proof(verdict.data() + 1, wire::kMacBytes);
    if (!equal_in_constant_time(proof, wire::server_proof(key, server_nonce, client_nonce, role)))
      throw Refused{
          "it did not prove that it holds this job's token: another program may be "
          "listening on that port"};
    return "";
  }

  void connect(Clock::time_point deadline) {
    auto pause = std::chrono::milliseconds(10);
    std::string last = "no attempt finished";
    // After a lost connection, a server that is gone should be reported soon, not at the deadline.
    if (ever_connected) deadline = std::min(deadline, Clock::now() + std::chrono::seconds(5));
    while (true) {
      tcp::resolver resolver(io);
      boost::system::error_code ec;
      auto results = resolver.resolve(host, std::to_string(port), ec);
      if (!ec) {
        const auto attempt_end = std::min(deadline, Clock::now() + std::chrono::seconds(5));
        for (const auto& entry : results) {
          if (!open(entry.endpoint(), attempt_end, ec)) {
            // An attempt cut short by the deadline says less than the one before it.
            if (ec && ec != asio::error::operation_aborted) {
              last = ec.message();
            } else if (last == "no attempt finished") {
              last = "connect timed out";
            }
            continue;
          }
          try {
            last = authenticate(attempt_end);
          } catch (const Refused& r) {
            boost::system::error_code ignored;
            socket.close(ignored);
            COHORT_THROW(AuthError, "the TcpStore at ", where(), " cannot be used: ", r.why);
          }
          if (last.empty()) {
            connected = ever_connected = true;
            return;
          }
        }
      } else {
        last = ec.message();
      }
      boost::system::error_code ignored;
      socket.close(ignored);
      const auto now = Clock::now();
      if (now >= deadline)
        COHORT_THROW(TimeoutError, "cannot reach the TcpStore server at ", where(), " (", last, ")",
                     ever_connected ? "; it was reachable before, so it has probably exited" : "");
      // The last wait ends at the deadline, with one more try there: callers report the whole
      // timeout as waited.
      std::this_thread::sleep_for(
          std::min<Clock::duration>(pause, deadline - now + std::chrono::milliseconds(1)));
      pause = std::min(pause * 2, std::chrono::milliseconds(1000));
    }
  }

  // One request/response. `what` describes the request for a timeout message.
  Fields call(uint8_t op, const Fields& fields, Millis timeout, const std::string& what) {
    std::lock_guard<std::mutex> lock(mu);
    const auto deadline = Clock::now() + timeout;
    if (!connected) connect(deadline);
    std::string req = wire::encode(op, fields);
    std::array<char, 4> header{};
    std::string body;
    boost::system::error_code ec;
    bool done = false;
    asio::async_write(socket, asio::buffer(req), [&](boost::system::error_code e, size_t) {
      if (e) {
        ec = e;
        done = true;
        return;
      }
      asio::async_read(socket, asio::buffer(header), [&](boost::system::error_code e2, size_t) {
        if (e2) {
          ec = e2;
          done = true;
          return;
        }
        uint32_t n;
        std::memcpy(&n, header.data(), 4);
        if (n > kMaxReplyFrame) {
          ec = asio::error::message_size;
          done = true;
          return;
        }
        body.resize(n);
        asio::async_read(socket, asio::buffer(body), [&](boost::system::error_code e3, size_t) {
          ec = e3;
          done = true;
        });
      });
    });
    if (!run_until(done, deadline))
      COHORT_THROW(TimeoutError, "TcpStore at ", where(), ": timed out after ", timeout.count(),
                   " ms ", what);
    if (ec) {
      boost::system::error_code ignored;
      socket.close(ignored);
      connected = false;
      COHORT_THROW(DistributedError, "lost the connection to the TcpStore server at ", where(),
                   " (", ec.message(), ") ", what, "; the server has probably exited");
    }
    uint8_t code;
    Fields out;
    if (!wire::decode(body.data(), body.size(), code, out))
      COHORT_THROW(DistributedError, "malformed reply from the TcpStore server at ", where());
    if (code != 0)
      COHORT_THROW(DistributedError, "TcpStore server at ", where(), ": ",
                   out.empty() ? "error" : out[0]);
    return out;
  }
};

namespace {

void check_key(const std::string& key) {
  if (key.size() > TcpStoreLimits::kDefaultMaxKey)
    COHORT_THROW(InvalidArgument, "store key '", key.substr(0, 64), "...' has ", key.size(),
                 " bytes; the TcpStore's limit is ", TcpStoreLimits::kDefaultMaxKey);
}
void check_value(const std::string& key, const std::string& value) {
  check_key(key);
  if (value.size() > TcpStoreLimits::kDefaultMaxValue)
    COHORT_THROW(InvalidArgument, "the value for store key '", key.substr(0, 64), "' has ",
                 value.size(), " bytes; the TcpStore's limit is ",
                 TcpStoreLimits::kDefaultMaxValue);
}
void check_keys(const std::vector<std::string>& keys) {
  for (const auto& k : keys) check_key(k);
}

}  // namespace

TcpStore::TcpStore(TcpStoreOptions options) : o_(std::move(options)) {
  timeout_ = o_.timeout;
  if (o_.is_server) {
    TcpStoreServerOptions so;
    so.port = o_.port;
    so.bind = o_.bind;
    so.token = o_.token;
    server_ = std::make_unique<TcpStoreServer>(std::move(so));
    o_.port = server_->port();
  }
  client_ = std::make_unique<Client>();
  // A host reaches its own server through loopback when it listens there, which needs no name
  // resolution; otherwise through the address it listens on.
  client_->host = o_.is_server ? (o_.bind.empty() ? "127.0.0.1" : o_.bind) : o_.host;
  client_->port = o_.port;
  client_->role = o_.role;
  client_->key = o_.token.role_key(o_.role);
  std::lock_guard<std::mutex> lock(client_->mu);
  client_->connect(Clock::now() + timeout_);
}

TcpStore::~TcpStore() {
  client_.reset();  // close our connection before the server (if ours) stops
  server_.reset();
}

void TcpStore::set(const std::string& key, const std::string& value) {
  check_value(key, value);
  client_->call(wire::kSet, {key, value}, timeout_, "setting key '" + key + "'");
}

std::string TcpStore::get(const std::string& key) {
  check_key(key);
  return client_->call(wire::kGet, {key}, timeout_, "waiting for key '" + key + "'").at(0);
}

int64_t TcpStore::add(const std::string& key, int64_t delta) {
  check_key(key);
  auto r = client_->call(wire::kAdd, {key, std::to_string(delta)}, timeout_,
                         "adding to key '" + key + "'");
  return parse_stored_int(key, r.at(0));
}

std::string TcpStore::compare_set(const std::string& key, const std::string& expected,
                                  const std::string& desired) {
  check_value(key, expected);
  check_value(key, desired);
  return client_
      ->call(wire::kCompareSet, {key, expected, desired}, timeout_,
             "in compare_set of key '" + key + "'")
      .at(0);
}

bool TcpStore::check(const std::vector<std::string>& keys) {
  check_keys(keys);
  return client_->call(wire::kCheck, keys, timeout_, "checking keys " + describe_keys(keys))
             .at(0) == "1";
}

void TcpStore::wait(const std::vector<std::string>& keys, Millis timeout) {
  check_keys(keys);
  client_->call(wire::kWait, keys, timeout, "waiting for keys " + describe_keys(keys));
}

bool TcpStore::delete_key(const std::string& key) {
  check_key(key);
  return client_->call(wire::kDelete, {key}, timeout_, "deleting key '" + key + "'").at(0) == "1";
}

int64_t TcpStore::num_keys() {
  return parse_stored_int("num_keys",
                          client_->call(wire::kNumKeys, {}, timeout_, "counting keys").at(0));
}

std::string TcpStore::local_address() {
  std::lock_guard<std::mutex> lock(client_->mu);
  if (!client_->connected) client_->connect(Clock::now() + timeout_);
  return client_->socket.local_endpoint().address().to_string();
}

std::shared_ptr<Store> TcpStore::clone() {
  TcpStoreOptions o = o_;
  o.is_server = false;
  o.host = client_->host;
  o.timeout = timeout_;
  return std::make_shared<TcpStore>(std::move(o));
}

}  // namespace cohort::collectives
