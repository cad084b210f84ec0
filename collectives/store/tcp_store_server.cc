// The TcpStore server. One io thread owns all state, so there are no locks. Every connection is
// read continuously from accept to close, whatever it is doing: that is how a parked GET/WAIT
// learns at once that its client went away, and how a connection that sends half a request and
// stops is timed out. Nothing a peer says is allocated for before it is checked against the
// limits, and a peer gets no request served before its handshake proves the job's token.
#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <list>
#include <map>
#include <set>
#include <thread>
#include <utility>  // Boost 1.74's asio uses std::exchange without including it

#include <boost/asio.hpp>

#include "collectives/store/store_state.h"
#include "collectives/store/tcp_store.h"
#include "collectives/store/tcp_store_protocol.h"
#include "core/util/error.h"

namespace cohort::collectives {

namespace asio = boost::asio;
using asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using wire::Fields;

namespace {

std::string peer_of(const tcp::socket& s) {
  boost::system::error_code ec;
  const auto ep = s.remote_endpoint(ec);
  if (ec) return "an unknown peer";
  return ep.address().to_string() + ":" + std::to_string(ep.port());
}

}  // namespace

struct TcpStoreServer::Impl {
  struct Session : std::enable_shared_from_this<Session> {
    enum class State { kHandshake, kIdle, kBusy, kClosed };
    Session(Impl& s, tcp::socket sock) : server(s), socket(std::move(sock)), timer(s.io) {}
    Impl& server;
    tcp::socket socket;
    asio::steady_timer timer;
    uint64_t timer_generation = 0;
    State state = State::kHandshake;
    StoreRole role = StoreRole::kWorker;
    std::string peer, server_nonce;
    std::array<char, 16384> chunk{};
    std::string in;  // received, not yet a whole frame (or the handshake response)
    std::string out;
    bool close_after_reply = false;
    bool frame_timed = false;  // the frame timeout runs: part of a request has arrived
    bool refunded = false;     // its accept token went back (its first request was served)
    bool listed = false;       // in server.handshakes, at `in_handshakes`
    std::list<std::weak_ptr<Session>>::iterator in_handshakes;
    // A parked GET/WAIT: the keys still missing, and what to answer once they exist.
    std::set<std::string> missing;
    uint8_t parked_op = 0;
    std::string parked_key;

    void start() {
      peer = peer_of(socket);
      server_nonce = random_bytes(wire::kNonceBytes);
      out.assign(wire::kMagic, sizeof wire::kMagic);
      out += server_nonce;
      arm_timer(server.o.limits.handshake_timeout);
      auto self = shared_from_this();
      asio::async_write(socket, asio::buffer(out), [self](boost::system::error_code ec, size_t) {
        if (ec) self->close();
      });
      read_more();
    }

    void arm_timer(Millis after) {
      const uint64_t generation = ++timer_generation;
      timer.expires_after(after);
      auto self = shared_from_this();
      timer.async_wait([self, generation](boost::system::error_code ec) {
        if (ec || generation != self->timer_generation || self->state == State::kClosed) return;
        if (self->state == State::kHandshake)
          self->server.refuse(self->peer, "no handshake in time");
        self->close();
      });
    }
    void disarm_timer() {
      ++timer_generation;
      frame_timed = false;
      timer.cancel();
    }
    // From the first byte of a request, not the latest: a peer trickling a byte at a time still
    // runs out of time.
    void time_frame() {
      if (frame_timed) return;
      arm_timer(server.o.limits.frame_timeout);
      frame_timed = true;
    }

    void read_more() {
      auto self = shared_from_this();
      socket.async_read_some(asio::buffer(chunk), [self](boost::system::error_code ec, size_t n) {
        if (self->state == State::kClosed) return;
        if (ec) return self->close();
        self->in.append(self->chunk.data(), n);
        if (!self->process_input()) return;
        self->read_more();
      });
    }

    // Returns false once the session is closed.
    bool process_input() {
      if (state == State::kHandshake) {
        if (in.size() < wire::kResponseBytes) return true;
        if (in.size() > wire::kResponseBytes) {
          server.refuse(peer, "it sent more than the handshake");
          close();
          return false;
        }
        return finish_handshake();
      }
      if (close_after_reply) {
        in.clear();
        return true;
      }
      if (state == State::kBusy) {
        // The next request may arrive before our reply's completion has run; it waits in `in`,
        // but no more than one frame of it.
        if (in.size() > 4 + server.max_frame()) {
          close();
          return false;
        }
        return true;
      }
      if (state != State::kIdle || in.empty()) return state != State::kClosed;
      if (in.size() < 4) {
        time_frame();
        return true;
      }
      uint32_t n;
      std::memcpy(&n, in.data(), 4);
      if (n > server.max_frame()) {
        ++server.refused;
        close_after_reply = true;
        in.clear();
        disarm_timer();
        reply(1, {"request of " + std::to_string(n) + " bytes exceeds the store's limit of " +
                  std::to_string(server.max_frame()) + " bytes (keys up to " +
                  std::to_string(server.o.limits.max_key_bytes) + " bytes, values up to " +
                  std::to_string(server.o.limits.max_value_bytes) + ")"});
        return true;
      }
      if (in.size() < 4 + size_t{n}) {
        time_frame();
        return true;
      }
      if (in.size() > 4 + size_t{n}) {  // a second request before the first was answered
        close();
        return false;
      }
      disarm_timer();
      state = State::kBusy;
      std::string frame = std::move(in);
      in.clear();
      server.handle(shared_from_this(), frame.data() + 4, n);
      return state != State::kClosed;
    }

    bool finish_handshake() {
      const std::string response = std::move(in);
      in.clear();
      const char* p = response.data();
      const auto role_byte = static_cast<uint8_t>(p[sizeof wire::kMagic]);
      const std::string client_nonce(p + sizeof wire::kMagic + 1, wire::kNonceBytes);
      const std::string proof(p + sizeof wire::kMagic + 1 + wire::kNonceBytes, wire::kMacBytes);
      const char* reason = nullptr;
      std::string key;
      if (std::memcmp(p, wire::kMagic, sizeof wire::kMagic) != 0) {
        reason = "not a Cohort store client";
      } else if (role_byte != static_cast<uint8_t>(StoreRole::kAgent) &&
                 role_byte != static_cast<uint8_t>(StoreRole::kWorker)) {
        reason = "unknown role";
      } else {
        role = static_cast<StoreRole>(role_byte);
        if (!server.o.token.holds(role)) {
          reason = "this store admits workers only";
        } else {
          key = server.role_key(role);
          if (!equal_in_constant_time(proof,
                                      wire::client_proof(key, server_nonce, client_nonce, role)))
            reason = "wrong token";
        }
      }
      server.end_handshake(this);
      disarm_timer();
      if (reason) {
        server.refuse(peer, std::string(reason) + " (role " +
                                (role_byte == 1   ? "agent"
                                 : role_byte == 2 ? "worker"
                                                  : "?") +
                                ")");
        out.assign(wire::kVerdictBytes, '\0');
        out[0] = 1;
        close_after_reply = true;
      } else {
        out = std::string(1, '\0') + wire::server_proof(key, server_nonce, client_nonce, role);
      }
      state = State::kBusy;
      auto self = shared_from_this();
      asio::async_write(socket, asio::buffer(out),
                        [self](boost::system::error_code ec, size_t) { self->after_write(ec); });
      return state != State::kClosed;
    }

    void reply(uint8_t code, const Fields& fields) {
      if (state == State::kClosed) return;
      // The connection's accept token comes back with its first request served: a stranger, or a
      // token holder that only opens connections to abandon them, keeps using the budget up.
      if (code == 0 && !refunded) {
        refunded = true;
        server.refund_accept_token();
      }
      out = wire::encode(code, fields);
      state = State::kBusy;
      auto self = shared_from_this();
      asio::async_write(socket, asio::buffer(out),
                        [self](boost::system::error_code ec, size_t) { self->after_write(ec); });
    }

    void after_write(boost::system::error_code ec) {
      if (state == State::kClosed) return;
      if (ec || close_after_reply) return close();
      out.clear();
      out.shrink_to_fit();
      state = State::kIdle;
      process_input();
    }

    void close() {
      if (state == State::kClosed) return;
      if (state == State::kHandshake) server.end_handshake(this);
      state = State::kClosed;
      disarm_timer();
      for (const auto& k : missing) server.forget_waiter(k, this);
      if (!missing.empty()) --server.waiting;
      missing.clear();
      boost::system::error_code ignored;
      socket.close(ignored);
      --server.connections;
    }
  };

  explicit Impl(TcpStoreServerOptions options)
      : o(std::move(options)), state(o.limits, o.agent_prefix) {
    if (o.token.empty())
      COHORT_THROW(AuthError, "a TcpStore server needs the job's token, and none was given");
    if (o.token.holds(StoreRole::kAgent)) agent_key = o.token.role_key(StoreRole::kAgent);
    accept_tokens = static_cast<double>(o.limits.accept_burst);
    worker_key = o.token.role_key(StoreRole::kWorker);
  }

  TcpStoreServerOptions o;
  std::string agent_key, worker_key;
  asio::io_context io;
  tcp::acceptor acceptor{io};
  asio::steady_timer accept_pause{io};
  std::thread thread;
  StoreState state;
  std::map<std::string, std::set<std::shared_ptr<Session>>> waiters;
  std::list<std::weak_ptr<Session>> handshakes;  // oldest first
  std::atomic<int> connections{0}, waiting{0};
  std::atomic<int64_t> refused{0};
  Clock::time_point last_report{};
  int64_t unreported = 0;

  size_t max_frame() const { return state.max_frame(); }
  const std::string& role_key(StoreRole role) const {
    return role == StoreRole::kAgent ? agent_key : worker_key;
  }

  // One line per refusal, at most one a second: a flood of strangers cannot flood the log.
  void refuse(const std::string& peer, const std::string& reason) {
    ++refused;
    const auto now = Clock::now();
    if (now - last_report < std::chrono::seconds(1)) {
      ++unreported;
      return;
    }
    std::fprintf(
        stderr, "cohort store: refused a connection from %s: %s%s\n", peer.c_str(), reason.c_str(),
        unreported
            ? (" (and " + std::to_string(unreported) + " more refusals since the last report)")
                  .c_str()
            : "");
    last_report = now;
    unreported = 0;
  }

  void end_handshake(Session* s) {
    if (!s->listed) return;
    handshakes.erase(s->in_handshakes);
    s->listed = false;
  }

  // New connections are taken at most at limits.accept_rate a second (a token bucket holding up to
  // accept_burst), and a connection gives its token back when its first request is served: only
  // strangers and connections opened to be abandoned use the bucket up, and their flood then waits
  // in the kernel's backlog instead of taking the io thread from the job's connections.
  double accept_tokens = 0;
  Clock::time_point accept_refilled = Clock::now();
  bool take_accept_token() {
    const auto now = Clock::now();
    const double rate = static_cast<double>(o.limits.accept_rate);
    accept_tokens = std::min<double>(
        static_cast<double>(o.limits.accept_burst),
        accept_tokens + rate * std::chrono::duration<double>(now - accept_refilled).count());
    accept_refilled = now;
    if (accept_tokens < 1) return false;
    accept_tokens -= 1;
    return true;
  }
  void refund_accept_token() {
    accept_tokens = std::min<double>(static_cast<double>(o.limits.accept_burst), accept_tokens + 1);
  }
  void pause_accepting(Clock::duration d) {
    accept_pause.expires_after(d);
    accept_pause.async_wait([this](boost::system::error_code e) {
      if (!e) accept();
    });
  }

  void accept() {
    acceptor.async_wait(tcp::acceptor::wait_read, [this](boost::system::error_code ec) {
      if (ec == asio::error::operation_aborted) return;
      for (int i = 0; i < 64; ++i) {
        if (!take_accept_token())
          return pause_accepting(std::chrono::duration_cast<Clock::duration>(
              std::chrono::duration<double>(1.0 / static_cast<double>(o.limits.accept_rate))));
        // accept4: the descriptor is close-on-exec from its first instant, so a worker forked at
        // that moment cannot inherit it.
        const int fd =
            ::accept4(acceptor.native_handle(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd >= 0) {
          admit(fd);
          continue;
        }
        accept_tokens += 1;  // nothing was taken
        if (errno == EINTR || errno == ECONNABORTED) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        // Out of descriptors or memory: waiting on the listening socket again would return at
        // once, forever. Pause instead; the connections already open go on.
        return pause_accepting(std::chrono::milliseconds(100));
      }
      accept();
    });
  }

  void admit(int fd) {
    if (connections.load() >= o.limits.max_connections + o.limits.max_handshakes) {
      ++refused;
      ::close(fd);
      return;
    }
    boost::system::error_code ec;
    tcp::socket sock(io);
    sockaddr_storage addr{};
    socklen_t len = sizeof addr;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    sock.assign(addr.ss_family == AF_INET6 ? tcp::v6() : tcp::v4(), fd, ec);
    if (ec) {
      ::close(fd);
      return;
    }
    sock.set_option(tcp::no_delay(true), ec);
    sock.set_option(asio::socket_base::keep_alive(true), ec);
    ++connections;
    auto s = std::make_shared<Session>(*this, std::move(sock));
    if (static_cast<int>(handshakes.size()) >= o.limits.max_handshakes) {
      if (auto oldest = handshakes.front().lock()) {
        refuse(oldest->peer, "the handshake queue is full and this was its oldest connection");
        oldest->close();
      } else {
        handshakes.pop_front();
      }
    }
    handshakes.push_back(s);
    s->in_handshakes = std::prev(handshakes.end());
    s->listed = true;
    s->start();
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
      if (s->missing.empty()) {
        --waiting;
        answer_parked(s);
      }
    }
  }

  void answer_parked(const std::shared_ptr<Session>& s) {
    s->reply(0, state.answer_parked(s->parked_op, s->parked_key));
  }

  void handle(const std::shared_ptr<Session>& s, const char* body, size_t size) {
    StoreOutcome r = state.execute(s->role, body, size);
    switch (r.kind) {
      case StoreOutcome::Kind::kClose:
        return s->close();
      case StoreOutcome::Kind::kAnswer:
        s->reply(r.code, r.fields);
        if (!r.changed.empty()) stored(r.changed);
        return;
      case StoreOutcome::Kind::kPark: {
        s->parked_op = r.op;
        // A GET has one key, the one missing; its value is the answer.
        s->parked_key = r.op == wire::kGet ? r.fields.front() : "";
        s->missing = std::set<std::string>(r.fields.begin(), r.fields.end());
        ++waiting;
        for (const auto& k : s->missing) waiters[k].insert(s);
        return;
      }
    }
  }
};

TcpStoreServer::TcpStoreServer(TcpStoreServerOptions options)
    : impl_(std::make_unique<Impl>(std::move(options))) {
  const auto& o = impl_->o;
  boost::system::error_code ec;
  asio::ip::address address = asio::ip::address_v4::any();
  if (!o.bind.empty()) {
    tcp::resolver resolver(impl_->io);
    auto results = resolver.resolve(o.bind, std::to_string(o.port), ec);
    if (ec || results.empty())
      COHORT_THROW(DistributedError, "TcpStore server cannot resolve '", o.bind,
                   "' to listen on: ", ec ? ec.message() : "no address");
    address = results.begin()->endpoint().address();
  }
  const tcp::endpoint ep(address, o.port);
  auto& acceptor = impl_->acceptor;
  acceptor.open(ep.protocol(), ec);
  if (!ec) {
    ::fcntl(acceptor.native_handle(), F_SETFD, FD_CLOEXEC);
    acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  }
  if (!ec) acceptor.bind(ep, ec);
  if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (!ec) acceptor.non_blocking(true, ec);
  if (ec)
    COHORT_THROW(DistributedError, "TcpStore server cannot listen on ", ep.address().to_string(),
                 ":", o.port, ": ", ec.message(),
                 ec.value() == EADDRNOTAVAIL ? " (not an address of this host)" : "");
  impl_->accept();
  impl_->thread = std::thread([this] { impl_->io.run(); });
}

TcpStoreServer::~TcpStoreServer() {
  impl_->io.stop();
  impl_->thread.join();
}

uint16_t TcpStoreServer::port() const { return impl_->acceptor.local_endpoint().port(); }

TcpStoreServer::Stats TcpStoreServer::stats() const {
  return {impl_->connections.load(), impl_->waiting.load(), impl_->refused.load()};
}

}  // namespace cohort::collectives
