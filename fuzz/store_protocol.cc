// The TcpStore server's request path (wire::decode and StoreState), as an authenticated peer
// drives it: the first byte picks the role, the rest is a stream of length-prefixed requests
// against one store with small limits, so that the limits themselves are reached.
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "collectives/store/store_state.h"

using namespace cohort::collectives;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const StoreRole role = data[0] & 1 ? StoreRole::kAgent : StoreRole::kWorker;
  TcpStoreLimits limits;
  limits.max_key_bytes = 64;
  limits.max_value_bytes = 256;
  limits.max_total_bytes = 4096;
  StoreState state(limits, "launch/");
  const char* p = reinterpret_cast<const char*>(data) + 1;
  size_t left = size - 1;
  while (left >= 4) {
    uint32_t n;
    std::memcpy(&n, p, 4);
    p += 4;
    left -= 4;
    // The server closes a connection whose frame is over max_frame() before reading it.
    if (n > state.max_frame() || n > left) break;
    const StoreOutcome r = state.execute(role, p, n);
    if (r.kind == StoreOutcome::Kind::kClose) break;
    // The store never holds more than its limit, and a worker never changes an agent's key.
    if (state.bytes() > limits.max_total_bytes) __builtin_trap();
    if (role == StoreRole::kWorker && r.changed.rfind("launch/", 0) == 0) __builtin_trap();
    p += n;
    left -= n;
  }
  return 0;
}
