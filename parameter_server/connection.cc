#include "parameter_server/connection.h"

#include "core/util/error.h"
#include "parameter_server/auth.h"

namespace cohort::ps::detail {

void Connection::connect() {
  const std::string address = o_.resolve(index_);
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(8 << 20);
  args.SetMaxSendMessageSize(8 << 20);
  args.SetInt(GRPC_ARG_HTTP2_MAX_FRAME_SIZE, 4 << 20);
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 16 << 20);
  args.SetInt(GRPC_ARG_HTTP2_WRITE_BUFFER_SIZE, 16 << 20);
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  auto channel = grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
  auto stub = wire::ParameterServer::NewStub(channel);
  // A short wait: a restarted server publishes a new address, and until it has, `address` may
  // be its predecessor's, where nothing will ever answer. Not answering in time is therefore
  // retryable (with_retries resolves the address again), not a timeout of the job.
  grpc::ClientContext c1;
  c1.set_deadline(deadline_in(std::chrono::seconds(2)));
  c1.set_wait_for_ready(true);
  wire::ChallengeRequest creq;
  creq.set_worker(o_.worker);
  wire::ChallengeReply challenge;
  grpc::Status cs = stub->Challenge(&c1, creq, &challenge);
  if (cs.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED)
    cs = grpc::Status(grpc::StatusCode::UNAVAILABLE, "no answer in 2 s");
  check(cs, "server " + name() + " at " + address);
  grpc::ClientContext c2;
  c2.set_deadline(deadline_in(std::chrono::seconds(10)));
  wire::AuthRequest areq;
  areq.set_worker(o_.worker);
  areq.set_nonce(challenge.nonce());
  areq.set_proof(auth_proof(o_.secret, challenge.nonce(), o_.worker));
  wire::AuthReply auth;
  grpc::Status s = stub->Authenticate(&c2, areq, &auth);
  if (s.error_code() == grpc::StatusCode::UNAUTHENTICATED ||
      s.error_code() == grpc::StatusCode::INVALID_ARGUMENT)
    COHORT_THROW(DistributedError, "parameter server ", index_, " at ", address, " refused worker ",
                 o_.worker, ": ", s.error_message());
  check(s, "server " + name() + " at " + address);
  std::lock_guard<std::mutex> lock(session_mu_);
  stub_ = std::shared_ptr<wire::ParameterServer::Stub>(std::move(stub));
  session_ = auth.session();
  // The server's mode rules; a reply naming none we know is a server we cannot work with.
  try {
    mode_ = parse_mode(auth.mode());
  } catch (const ConfigError&) {
    COHORT_THROW(DistributedError, "parameter server ", index_, " at ", address,
                 " replied with an unknown mode (", auth.mode().size(), " bytes)");
  }
  address_ = address;
}

}  // namespace cohort::ps::detail
