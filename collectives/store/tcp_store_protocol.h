// TcpStore's wire format. Everything a peer sends is checked against the limits before it is used:
// this is the part of Cohort that listens on the network.
//
// A connection opens with the handshake (fixed sizes, nothing parsed before it succeeds):
//   server -> client  magic (8) | server nonce (32)
//   client -> server  magic (8) | role (1) | client nonce (32) | HMAC(role key, client context)
//   server -> client  verdict (1: 0 accepted, 1 refused) | HMAC(role key, server context)
// so the client proves it holds the role's key and the server proves it holds the job's token
// (a program squatting on the port cannot pose as the store). Then requests and replies, both
// directions framed the same: u32 body length, then the body: u8 code (request: the op; reply: 0
// ok / 1 error), u32 field count, and each field as u32 length + bytes (little-endian).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "collectives/store/token.h"

namespace cohort::collectives::wire {

enum Op : uint8_t { kSet = 1, kGet, kAdd, kCompareSet, kCheck, kWait, kDelete, kNumKeys };

inline constexpr char kMagic[8] = {'C', 'O', 'H', 'S', 'T', 'O', 'R', '1'};
inline constexpr size_t kNonceBytes = 32;
inline constexpr size_t kMacBytes = 32;
inline constexpr size_t kChallengeBytes = sizeof kMagic + kNonceBytes;
inline constexpr size_t kResponseBytes = sizeof kMagic + 1 + kNonceBytes + kMacBytes;
inline constexpr size_t kVerdictBytes = 1 + kMacBytes;

using Fields = std::vector<std::string>;

// The client's proof and the server's, over both nonces and the role.
std::string client_proof(const std::string& role_key, const std::string& server_nonce,
                         const std::string& client_nonce, StoreRole role);
std::string server_proof(const std::string& role_key, const std::string& server_nonce,
                         const std::string& client_nonce, StoreRole role);

// A whole frame (length prefix included).
std::string encode(uint8_t code, const Fields& fields);
// Parses a frame's body; false when it is malformed (a length past the end, trailing bytes, more
// fields than the body could hold).
bool decode(const char* body, size_t size, uint8_t& code, Fields& fields);

}  // namespace cohort::collectives::wire
