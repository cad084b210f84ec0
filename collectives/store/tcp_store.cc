// Wire format, both directions: u32 body length, then the body: u8 code (request: the op;
// response: 0 ok / 1 error), u32 field count, and each field as u32 length + bytes. A client has at
// most one request in flight per connection, so a waiting request (GET, WAIT) simply parks its
// session until the keys exist; a client that gives up closes the connection.
#include "collectives/store/tcp_store.h"

#include <array>
#include <utility>  // Boost 1.74's asio uses std::exchange without including it

#include <boost/asio.hpp>
#include <cstring>
#include <map>
#include <set>
#include <thread>

#include "core/util/error.h"

namespace cohort::collectives {

namespace asio = boost::asio;
using asio::ip::tcp;
using Clock = std::chrono::steady_clock;

namespace {

enum Op : uint8_t { kSet = 1, kGet, kAdd, kCompareSet, kCheck, kWait, kDelete, kNumKeys };
constexpr uint32_t kMaxFrame = 1u << 30;

using Fields = std::vector<std::string>;

std::string encode(uint8_t code, const Fields& fields) {
  size_t n = 1 + 4;
  for (const auto& f : fields) n += 4 + f.size();
  std::string out;
  out.reserve(4 + n);
  auto u32 = [&](uint32_t v) { out.append(reinterpret_cast<const char*>(&v), 4); };
  u32(static_cast<uint32_t>(n));
  out.push_back(static_cast<char>(code));
  u32(static_cast<uint32_t>(fields.size()));
  for (const auto& f : fields) {
    u32(static_cast<uint32_t>(f.size()));
    out += f;
  }
  return out;
}

// Returns false on a malformed body.
bool decode(const std::string& body, uint8_t& code, Fields& fields) {
  if (body.size() < 5) return false;
  code = static_cast<uint8_t>(body[0]);
  uint32_t n;
  std::memcpy(&n, body.data() + 1, 4);
  size_t p = 5;
  fields.clear();
  for (uint32_t i = 0; i < n; ++i) {
    if (p + 4 > body.size()) return false;
    uint32_t len;
    std::memcpy(&len, body.data() + p, 4);
    p += 4;
    if (p + len > body.size()) return false;
    fields.emplace_back(body.substr(p, len));
    p += len;
  }
  return p == body.size();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Server: one io thread owns all state, so there are no locks.

struct TcpStoreServer::Impl {
  struct Session : std::enable_shared_from_this<Session> {
    Session(Impl& s, tcp::socket sock) : server(s), socket(std::move(sock)) {}
    Impl& server;
    tcp::socket socket;
    std::array<char, 4> header{};
    std::string body, out;
    // A parked GET/WAIT: the keys still missing, and what to answer once they exist.
    std::set<std::string> missing;
    uint8_t parked_op = 0;
    std::string parked_key;

    void read_header() {
      auto self = shared_from_this();
      asio::async_read(socket, asio::buffer(header), [self](boost::system::error_code ec, size_t) {
        if (ec) return self->close();
        uint32_t n;
        std::memcpy(&n, self->header.data(), 4);
        if (n > kMaxFrame) return self->close();
        self->body.resize(n);
        asio::async_read(self->socket, asio::buffer(self->body),
                         [self](boost::system::error_code ec2, size_t) {
                           if (ec2) return self->close();
                           self->server.handle(self);
                         });
      });
    }
    void reply(uint8_t code, const Fields& fields) {
      out = encode(code, fields);
      auto self = shared_from_this();
      asio::async_write(socket, asio::buffer(out), [self](boost::system::error_code ec, size_t) {
        if (ec) return self->close();
        self->read_header();
      });
    }
    void close() {
      for (const auto& k : missing) server.forget_waiter(k, this);
      missing.clear();
      boost::system::error_code ignored;
      socket.close(ignored);
    }
  };

  asio::io_context io;
  tcp::acceptor acceptor{io};
  std::thread thread;
  std::map<std::string, std::string> data;
  std::map<std::string, std::set<std::shared_ptr<Session>>> waiters;

  void accept() {
    acceptor.async_accept([this](boost::system::error_code ec, tcp::socket sock) {
      if (ec == asio::error::operation_aborted) return;
      if (!ec) {
        boost::system::error_code ignored;
        sock.set_option(tcp::no_delay(true), ignored);
        std::make_shared<Session>(*this, std::move(sock))->read_header();
      }
      accept();
    });
  }

  void forget_waiter(const std::string& key, Session* s) {
    auto it = waiters.find(key);
    if (it == waiters.end()) return;
    for (auto w = it->second.begin(); w != it->second.end(); ++w)
      if (w->get() == s) {
        it->second.erase(w);
        break;
      }
    if (it->second.empty()) waiters.erase(it);
  }

  void stored(const std::string& key) {
    auto it = waiters.find(key);
    if (it == waiters.end()) return;
    auto ready = std::move(it->second);
    waiters.erase(it);
    for (const auto& s : ready) {
      s->missing.erase(key);
      if (s->missing.empty()) answer_parked(s);
    }
  }

  void answer_parked(const std::shared_ptr<Session>& s) {
    if (s->parked_op == kGet) {
      s->reply(0, {data[s->parked_key]});
    } else {
      s->reply(0, {});
    }
  }

  void park(const std::shared_ptr<Session>& s, uint8_t op, const Fields& keys) {
    s->parked_op = op;
    s->parked_key = keys.empty() ? "" : keys[0];
    s->missing.clear();
    for (const auto& k : keys)
      if (!data.count(k)) s->missing.insert(k);
    if (s->missing.empty()) return answer_parked(s);
    for (const auto& k : s->missing) waiters[k].insert(s);
  }

  void handle(const std::shared_ptr<Session>& s) {
    uint8_t op;
    Fields f;
    if (!decode(s->body, op, f)) return s->close();
    auto need = [&](size_t n) {
      if (f.size() == n) return true;
      s->reply(1, {"malformed request"});
      return false;
    };
    try {
      switch (op) {
        case kSet:
          if (!need(2)) return;
          data[f[0]] = f[1];
          s->reply(0, {});
          stored(f[0]);
          return;
        case kGet:
          if (!need(1)) return;
          return park(s, kGet, f);
        case kWait:
          return park(s, kWait, f);
        case kAdd: {
          if (!need(2)) return;
          auto it = data.find(f[0]);
          int64_t v = (it == data.end() ? 0 : parse_stored_int(f[0], it->second)) +
                      parse_stored_int("delta", f[1]);
          data[f[0]] = std::to_string(v);
          s->reply(0, {std::to_string(v)});
          stored(f[0]);
          return;
        }
        case kCompareSet: {
          if (!need(3)) return;
          auto it = data.find(f[0]);
          if (it == data.end()) {
            if (!f[1].empty()) return s->reply(0, {f[1]});
            data[f[0]] = f[2];
            s->reply(0, {f[2]});
            stored(f[0]);
            return;
          }
          if (it->second == f[1]) {
            it->second = f[2];
            s->reply(0, {f[2]});
            stored(f[0]);
            return;
          }
          return s->reply(0, {it->second});
        }
        case kCheck: {
          bool all = true;
          for (const auto& k : f) all = all && data.count(k);
          return s->reply(0, {all ? "1" : "0"});
        }
        case kDelete:
          if (!need(1)) return;
          return s->reply(0, {data.erase(f[0]) ? "1" : "0"});
        case kNumKeys:
          return s->reply(0, {std::to_string(data.size())});
        default:
          return s->reply(1, {"unknown request " + std::to_string(op)});
      }
    } catch (const std::exception& e) {
      s->reply(1, {e.what()});
    }
  }
};

TcpStoreServer::TcpStoreServer(uint16_t port) : impl_(std::make_unique<Impl>()) {
  boost::system::error_code ec;
  tcp::endpoint ep(tcp::v4(), port);
  impl_->acceptor.open(ep.protocol(), ec);
  if (!ec) impl_->acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) impl_->acceptor.bind(ep, ec);
  if (!ec) impl_->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec)
    COHORT_THROW(DistributedError, "TcpStore server cannot listen on port ", port, ": ",
                 ec.message());
  impl_->accept();
  impl_->thread = std::thread([this] { impl_->io.run(); });
}

TcpStoreServer::~TcpStoreServer() {
  impl_->io.stop();
  impl_->thread.join();
}

uint16_t TcpStoreServer::port() const { return impl_->acceptor.local_endpoint().port(); }

// ---------------------------------------------------------------------------------------------
// Client: synchronous calls built from asynchronous operations run against a deadline, the way
// Asio gives blocking I/O a timeout.

struct TcpStore::Client {
  std::string host;
  uint16_t port;
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
        bool done = false;
        boost::system::error_code cec;
        socket = tcp::socket(io);
        asio::async_connect(socket, results,
                            [&](boost::system::error_code e, const tcp::endpoint&) {
                              cec = e;
                              done = true;
                            });
        if (run_until(done, std::min(deadline, Clock::now() + std::chrono::seconds(5))) && !cec) {
          socket.set_option(tcp::no_delay(true), ec);
          connected = ever_connected = true;
          return;
        }
        // An attempt cut short by the deadline says less than the one before it.
        if (done && cec != asio::error::operation_aborted) {
          last = cec.message();
        } else if (last == "no attempt finished") {
          last = "connect timed out";
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
    std::string req = encode(op, fields);
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
        if (n > kMaxFrame) {
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
    if (!decode(body, code, out))
      COHORT_THROW(DistributedError, "malformed reply from the TcpStore server at ", where());
    if (code != 0)
      COHORT_THROW(DistributedError, "TcpStore server at ", where(), ": ",
                   out.empty() ? "error" : out[0]);
    return out;
  }
};

TcpStore::TcpStore(std::string host, uint16_t port, bool is_server, Millis timeout)
    : host_(std::move(host)), port_(port) {
  timeout_ = timeout;
  if (is_server) {
    server_ = std::make_unique<TcpStoreServer>(port);
    port_ = server_->port();
  }
  client_ = std::make_unique<Client>();
  client_->host = is_server ? "127.0.0.1" : host_;
  client_->port = port_;
  std::lock_guard<std::mutex> lock(client_->mu);
  client_->connect(Clock::now() + timeout_);
}

TcpStore::~TcpStore() {
  client_.reset();  // close our connection before the server (if ours) stops
  server_.reset();
}

void TcpStore::set(const std::string& key, const std::string& value) {
  client_->call(kSet, {key, value}, timeout_, "setting key '" + key + "'");
}

std::string TcpStore::get(const std::string& key) {
  return client_->call(kGet, {key}, timeout_, "waiting for key '" + key + "'").at(0);
}

int64_t TcpStore::add(const std::string& key, int64_t delta) {
  auto r =
      client_->call(kAdd, {key, std::to_string(delta)}, timeout_, "adding to key '" + key + "'");
  return parse_stored_int(key, r.at(0));
}

std::string TcpStore::compare_set(const std::string& key, const std::string& expected,
                                  const std::string& desired) {
  return client_
      ->call(kCompareSet, {key, expected, desired}, timeout_, "in compare_set of key '" + key + "'")
      .at(0);
}

bool TcpStore::check(const std::vector<std::string>& keys) {
  return client_->call(kCheck, keys, timeout_, "checking keys " + describe_keys(keys)).at(0) == "1";
}

void TcpStore::wait(const std::vector<std::string>& keys, Millis timeout) {
  client_->call(kWait, keys, timeout, "waiting for keys " + describe_keys(keys));
}

bool TcpStore::delete_key(const std::string& key) {
  return client_->call(kDelete, {key}, timeout_, "deleting key '" + key + "'").at(0) == "1";
}

int64_t TcpStore::num_keys() {
  return parse_stored_int("num_keys", client_->call(kNumKeys, {}, timeout_, "counting keys").at(0));
}

std::string TcpStore::local_address() {
  std::lock_guard<std::mutex> lock(client_->mu);
  if (!client_->connected) client_->connect(Clock::now() + timeout_);
  return client_->socket.local_endpoint().address().to_string();
}

}  // namespace cohort::collectives

namespace cohort::collectives {

std::shared_ptr<Store> TcpStore::clone() {
  return std::make_shared<TcpStore>(host_, port_, false, timeout_);
}

}  // namespace cohort::collectives
