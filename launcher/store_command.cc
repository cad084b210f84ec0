#include "launcher/store_command.h"

#include <charconv>
#include <cstdio>

#include "collectives/store/tcp_store.h"
#include "core/util/error.h"
#include "launcher/worker_env.h"

namespace cohort::launcher {

int store_command(const StoreCommandOptions& o) {
  const std::string address = !o.address.empty()    ? o.address
                              : var("COHORT_STORE") ? var("COHORT_STORE")
                                                    : "";
  if (address.empty())
    COHORT_THROW(ConfigError,
                 "cohort store needs the store's address: --address HOST:PORT or "
                 "COHORT_STORE");
  // n == 0: one or more.
  const auto expect = [&](size_t n, const char* form) {
    if (n == 0 ? o.args.empty() : o.args.size() != n)
      COHORT_THROW(ConfigError, "usage: cohort store ", o.op, " ", form);
  };
  auto token = collectives::JobToken::from_environment();
  if (!token)
    COHORT_THROW(AuthError,
                 "cohort store needs the job's token: set COHORT_TOKEN or "
                 "COHORT_TOKEN_FILE (a worker of cohort launch has COHORT_TOKEN)");
  const HostPort at = parse_host_port(address, "store address");
  collectives::TcpStoreOptions so;
  so.host = at.host;
  so.port = at.port;
  so.token = *token;
  so.timeout = collectives::Millis(static_cast<int64_t>(o.timeout_s * 1000));
  collectives::TcpStore store(so);
  if (o.op == "get") {
    expect(1, "KEY");
    std::printf("%s\n", store.get(o.args[0]).c_str());
  } else if (o.op == "set") {
    expect(2, "KEY VALUE");
    store.set(o.args[0], o.args[1]);
  } else if (o.op == "add") {
    expect(2, "KEY DELTA");
    int64_t delta = 0;
    const auto& d = o.args[1];
    auto [end, ec] = std::from_chars(d.data(), d.data() + d.size(), delta);
    if (ec != std::errc() || end != d.data() + d.size())
      COHORT_THROW(ConfigError, "cohort store add: DELTA '", d, "' is not an integer");
    std::printf("%lld\n", static_cast<long long>(store.add(o.args[0], delta)));
  } else if (o.op == "check") {
    expect(0, "KEY...");
    const bool all = store.check(o.args);
    std::printf("%d\n", all ? 1 : 0);
    return all ? 0 : 1;
  } else if (o.op == "wait") {
    expect(0, "KEY...");
    store.wait(o.args, so.timeout);
  } else if (o.op == "delete") {
    expect(1, "KEY");
    std::printf("%d\n", store.delete_key(o.args[0]) ? 1 : 0);
  } else {
    COHORT_THROW(ConfigError, "cohort store: unknown operation '", o.op,
                 "' (get, set, add, check, wait, delete)");
  }
  return 0;
}

}  // namespace cohort::launcher
