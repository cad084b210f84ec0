// Point-to-point byte channels of the cpu backend, and the mesh that connects a group's ranks:
// shared-memory rings between processes of one node, TCP sockets between nodes. Channels never
// block; the backend's progress loop drives many of them at once and sleeps in Mesh::idle.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "collectives/store/store.h"

namespace cohort::collectives::cpu {

// A non-owning reference to a callable taking (bytes, count): the progress loop passes a fresh
// lambda on every call, and std::function would allocate for each one on the hot path.
class Sink {
 public:
  template <typename F>
  requires(!std::is_same_v<std::remove_cvref_t<F>, Sink>)
      Sink(F&& f)  // NOLINT(google-explicit-constructor): used like a function parameter
      : obj_(const_cast<void*>(static_cast<const void*>(std::addressof(f)))),
        call_([](void* o, const uint8_t* p, size_t n) {
          (*static_cast<std::remove_reference_t<F>*>(o))(p, n);
        }) {}
  void operator()(const uint8_t* p, size_t n) const { call_(obj_, p, n); }

 private:
  void* obj_;
  void (*call_)(void*, const uint8_t*, size_t);
};

class Channel {
 public:
  explicit Channel(int peer) : peer_(peer) {}
  virtual ~Channel() = default;
  // Accepts up to n bytes; returns how many (0 when the channel is full). Throws
  // DistributedError naming the peer when the connection is gone.
  virtual size_t send_some(const uint8_t* data, size_t n) = 0;
  // Hands up to n received bytes to sink, in one or more contiguous pieces; returns how many.
  virtual size_t recv_some(size_t n, const Sink& sink) = 0;
  virtual int fd() const { return -1; }
  virtual const char* kind() const = 0;
  int peer() const { return peer_; }

 private:
  int peer_;
};

struct PeerInfo {
  std::string host;     // hostname
  std::string node_id;  // hostname + boot id: same value means same node
  int pid = 0;
  std::string address;  // ip:port of the rank's TCP listener
};

class Mesh {
 public:
  // Connects this rank to every other rank of the group through `store` (collective: every rank
  // must construct its Mesh). transport: "auto", "tcp" or "shm".
  Mesh(std::shared_ptr<Store> store, int rank, int size, const std::string& transport,
       const std::string& address, std::chrono::milliseconds timeout);
  ~Mesh();
  Mesh(const Mesh&) = delete;
  Mesh& operator=(const Mesh&) = delete;

  Channel& send_channel(int peer) { return *send_[peer]; }
  Channel& recv_channel(int peer) { return *recv_[peer]; }
  bool is_shm(int peer) const { return shm_peer_[peer]; }
  const PeerInfo& peer(int r) const { return peers_[r]; }
  std::string describe(int r) const;  // "rank 3 (pid 123 on host)"

  // Called by the progress loop when a pass made no progress: spins briefly, then yields, then
  // sleeps until a peer rings this rank's doorbell or a socket is ready (bounded, so a lost
  // wake-up costs milliseconds, never a hang). Also checks that shared-memory peers are alive.
  void idle(const std::vector<int>& active_peers);
  // Call when a pass made progress, to reset the back-off.
  void busy() { idle_rounds_ = 0; }

 private:
  struct Shm;
  int rank_, size_;
  std::vector<PeerInfo> peers_;
  std::vector<std::shared_ptr<Channel>> send_, recv_;
  std::vector<bool> shm_peer_;
  std::unique_ptr<Shm> shm_;
  struct Tcp;
  std::unique_ptr<Tcp> tcp_;
  uint64_t idle_rounds_ = 0;
  uint32_t bell_seen_ = 0;       // this rank's doorbell count when idle() last looked
  bool oversubscribed_ = false;  // more ranks on this node than cores we may run on
  std::chrono::steady_clock::time_point last_liveness_check_{};
};

}  // namespace cohort::collectives::cpu
