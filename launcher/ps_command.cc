#include "launcher/ps_command.h"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <thread>

#include "core/util/env.h"
#include "core/util/error.h"
#include "parameter_server/auth.h"
#include "parameter_server/server.h"

namespace cohort::launcher {
namespace {

// COHORT_PS_SECRET when given, else derived from the job's token (what `cohort launch` does), so
// that the secret itself is never published anywhere.
std::string job_secret() {
  if (const char* s = env::get(env::kPsSecret)) return s;
  if (auto token = collectives::JobToken::from_environment())
    return token->derive_secret(ps::kSecretLabel);
  COHORT_THROW(
      AuthError,
      "neither COHORT_PS_SECRET nor COHORT_TOKEN is set: parameter servers and their workers prove "
      "the job's secret to each other (cohort launch sets both; started by hand, give every "
      "process of the job the same COHORT_TOKEN, e.g. from `openssl rand -hex 32`)");
}

std::string server_key(int index) { return "ps/server/" + std::to_string(index); }

collectives::Millis millis(double s) { return collectives::Millis(static_cast<int64_t>(s * 1000)); }

}  // namespace

std::string process_role() {
  const char* r = var("COHORT_ROLE");
  if (!r || std::string(r) == "worker") return "worker";
  if (std::string(r) == "server") return "server";
  COHORT_THROW(ConfigError, "COHORT_ROLE='", r, "' is not worker or server");
}

int serve_parameter_server(const trainer::Config& c, const PsServeOptions& o) {
  // Signals are taken synchronously below; blocked before gRPC starts its threads, so that none of
  // them receives one.
  sigset_t stop_set;
  sigemptyset(&stop_set);
  sigaddset(&stop_set, SIGTERM);
  sigaddset(&stop_set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_set, nullptr);

  const auto& p = c.parameter_server;
  const int servers = int_var("COHORT_PS_SERVERS", static_cast<int>(p.servers));
  const int index = o.index >= 0 ? o.index : int_var("COHORT_PS_SERVER_RANK", -1);
  if (index < 0 || index >= servers)
    COHORT_THROW(ConfigError, "parameter server index ", index, " is outside 0..", servers - 1,
                 " (COHORT_PS_SERVER_RANK, or cohort ps --index)");
  const int workers = o.workers > 0 ? o.workers : int_var("COHORT_WORLD_SIZE", 1);
  ps::ServerOptions so;
  so.secret = job_secret();
  so.port = o.port;
  so.bind = !o.bind.empty()         ? o.bind
            : !p.bind.empty()       ? p.bind
            : var("COHORT_PS_BIND") ? var("COHORT_PS_BIND")
                                    : "127.0.0.1";
  ps::ShardOptions& sh = so.shard;
  sh.server = index;
  sh.mode = p.mode;
  sh.staleness = p.staleness;
  sh.workers = workers;
  sh.worker_timeout = millis(p.worker_timeout_s);
  sh.optimizer = c.optimizer;
  sh.checkpoint_dir = p.checkpoint_dir + "/server_" + std::to_string(index);
  sh.checkpoint_every = p.checkpoint_every;
  const std::string log_dir = c.logging.dir + "/ps";
  std::error_code ec;
  std::filesystem::create_directories(log_dir, ec);
  if (ec) COHORT_THROW(IoError, "cannot create ", log_dir, ": ", ec.message());
  sh.clock_log = log_dir + "/server_" + std::to_string(index) + "_clocks.jsonl";

  // Test hook: a restarted server that is slow to come back, so that workers first find its
  // predecessor's address in the store (they must keep resolving it, not give up).
  if (const int delay = int_var("COHORT_PS_TEST_RESTART_DELAY_MS", 0);
      delay > 0 && int_var("COHORT_RESTART_COUNT", 0) > 0)
    std::this_thread::sleep_for(std::chrono::milliseconds(delay));
  ps::Server server(so);
  std::printf(
      "parameter server %d of %d (pid %d) listening on %s: mode %s%s, %d workers%s\n", index,
      servers, static_cast<int>(::getpid()), server.address().c_str(), ps::mode_name(p.mode),
      p.mode == ps::Mode::kBounded ? (" (staleness " + std::to_string(p.staleness) + ")").c_str()
                                   : "",
      workers,
      server.shard().restored()
          ? (", restored at version " + std::to_string(server.shard().version())).c_str()
          : "");
  std::fflush(stdout);
  // Held until the server stops: a FileStore's file goes with its last user, so a server that let
  // go right after publishing, before its workers had opened the store, took its address with it
  // and left them waiting on a new, empty file.
  std::shared_ptr<collectives::Store> store;
  if (const char* store_addr = var("COHORT_STORE")) {
    WorkerEnv env;
    env.store = store_addr;
    if (const char* prefix = var("COHORT_STORE_PREFIX")) env.store_prefix = prefix;
    store = connect_store(env, millis(c.distributed.timeout_s));
    store->set(server_key(index), server.address());
  }
  // Test hook, as COHORT_KILL_AT_STEP for workers: "INDEX:VERSION" kills this server (first start
  // only) once it has applied that many updates.
  std::thread killer;
  std::atomic<bool> done{false};
  if (const char* spec = var("COHORT_PS_KILL_AT_VERSION");
      spec && int_var("COHORT_RESTART_COUNT", 0) == 0) {
    int victim = -1;
    long long at = -1;
    if (std::sscanf(spec, "%d:%lld", &victim, &at) != 2)
      COHORT_THROW(ConfigError, "COHORT_PS_KILL_AT_VERSION='", spec, "' is not INDEX:VERSION");
    if (victim == index)
      killer = std::thread([&server, &done, at] {
        while (!done.load()) {
          if (server.shard().version() >= at) ::raise(SIGKILL);
          std::this_thread::sleep_for(std::chrono::milliseconds(2));
        }
      });
  }
  int sig = 0;
  sigwait(&stop_set, &sig);
  done.store(true);
  if (killer.joinable()) killer.join();
  server.shutdown();
  std::printf("parameter server %d: stopped by %s after %lld updates\n", index,
              sig == SIGTERM ? "SIGTERM" : "SIGINT",
              static_cast<long long>(server.shard().version()));
  std::fflush(stdout);
  return 0;
}

ps::ClientOptions ps_client_options(const trainer::Config& c, const WorkerEnv& env,
                                    std::shared_ptr<collectives::Store> store) {
  const auto& p = c.parameter_server;
  ps::ClientOptions o;
  o.servers = int_var("COHORT_PS_SERVERS", static_cast<int>(p.servers));
  if (o.servers != p.servers)
    COHORT_THROW(ConfigError, "parameter_server.servers is ", p.servers, " but the job has ",
                 o.servers, " servers (COHORT_PS_SERVERS); make them agree");
  o.secret = job_secret();
  o.worker = env.rank;
  o.compression = p.compression;
  o.shared_memory = p.transport == trainer::PsTransport::kAuto;
  // Whether aliasing applies is the servers' mode, which they report (client.h).
  o.alias_values = o.shared_memory;
  o.timeout = millis(c.distributed.timeout_s);
  o.heartbeat_s = p.heartbeat_s;
  if (!store)
    COHORT_THROW(ConfigError,
                 "parameter-server workers find their servers in the job's store; set COHORT_STORE "
                 "or start the job with cohort launch --ps-servers");
  auto mu = std::make_shared<std::mutex>();
  const auto timeout = o.timeout;
  o.resolve = [store, mu, timeout](int index) {
    std::lock_guard<std::mutex> lock(*mu);
    try {
      store->wait({server_key(index)}, timeout);
    } catch (const TimeoutError&) {
      COHORT_THROW(TimeoutError, "parameter server ", index, " did not publish its address in ",
                   timeout.count() / 1000.0, " s (distributed.timeout_s)");
    }
    return store->get(server_key(index));
  };
  return o;
}

}  // namespace cohort::launcher
