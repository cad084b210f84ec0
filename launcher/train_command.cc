// The worker behind `cohort train` and behind users' programs (train_main).
#include "launcher/train_command.h"

#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <optional>

#include "collectives/process_group.h"
#include "core/util/error.h"
#include "launcher/cpu_binding.h"
#include "launcher/ps_command.h"
#include "launcher/worker_env.h"
#include "trainer/config.h"
#include "trainer/estimate.h"
#include "trainer/stop.h"

namespace cohort::launcher {

int run_trainer(const trainer::Config& c, const trainer::Distributed& dist,
                const trainer::Extensions& ext, const TrainFlags& flags, int rank);

int train_command(const std::string& config, const std::vector<std::string>& overrides,
                  const TrainFlags& flags, const trainer::Extensions& ext) {
  trainer::Config c = trainer::load_config(config, overrides);
  trainer::check_extensions(c, ext);
  if (flags.print_model) {
    std::fputs(trainer::describe_model(c, ext).c_str(), stdout);
    return 0;
  }
  if (flags.estimate_memory) {
    const int world =
        flags.world_size > 0 ? flags.world_size : launcher::detect_worker_env().world_size;
    std::fputs(trainer::estimate_memory(c, world, ext).c_str(), stdout);
    return 0;
  }
  // `cohort launch --ps-servers` starts the servers as the same command.
  if (launcher::process_role() == "server") return launcher::serve_parameter_server(c, {});
  launcher::WorkerEnv env = launcher::detect_worker_env();
  trainer::JobPlace place{env.rank, env.world_size, env.local_rank, env.local_world_size};
  std::shared_ptr<collectives::Store> store;
  std::optional<ps::ClientOptions> ps;
  const auto timeout = collectives::Millis(static_cast<int64_t>(c.distributed.timeout_s * 1000));
  if (c.distributed.strategy == trainer::Strategy::kParameterServer) {
    if (!env.store.empty() || env.store_through_mpi) store = launcher::connect_store(env, timeout);
    ps = launcher::ps_client_options(c, env, store);
  } else if (env.world_size > 1) {
    store = launcher::connect_store(env, timeout);
  }
  trainer::Distributed dist = trainer::join_job(c, place, store, ps);
  dist.placement = launcher::describe_binding();
  // Running out of memory names the rank (the others then stop as its job ends) and the way out.
  auto out_of_memory = [&](const std::string& what) {
    COHORT_THROW(OutOfMemoryError, "rank ", env.rank, " ran out of memory (", what,
                 ") under distributed.strategy ", trainer::strategy_name(c.distributed.strategy),
                 "; `cohort train CONFIG --estimate-memory --world-size ", env.world_size,
                 "` shows what each strategy needs: fsdp or zero2 need less per rank, as do more "
                 "ranks or a smaller data.batch_size");
  };
  try {
    return run_trainer(c, dist, ext, flags, env.rank);
  } catch (const OutOfMemoryError& e) {
    out_of_memory(e.what());
  } catch (const std::bad_alloc&) {
    out_of_memory("an allocation failed");
  }
  return 1;
}

int run_trainer(const trainer::Config& c, const trainer::Distributed& dist,
                const trainer::Extensions& ext, const TrainFlags& flags, int rank) {
  trainer::Trainer t(c, dist, ext);
  if (flags.eval_only) {
    const trainer::EvalResult r = t.evaluate();
    if (rank == 0)
      std::printf(
          "eval: test_acc %.4f test_loss %.9f (%s)\n", r.accuracy, r.loss,
          c.model.init_from.empty() ? "the seed's initial weights" : c.model.init_from.c_str());
    return 0;
  }
  t.run();
  return 0;
}

int report_and_exit_code(const std::exception& e) {
  if (const auto* stop = dynamic_cast<const trainer::Stopped*>(&e)) {
    std::fprintf(stderr, "cohort: %s\n", e.what());
    if (stop->signal() == trainer::kStopForMembership) return trainer::kExitMembership;
    return 128 + stop->signal();
  }
  if (!dynamic_cast<const Error*>(&e)) {
    std::fprintf(stderr, "cohort: unexpected error: %s\n", e.what());
    return 1;
  }
  std::fprintf(stderr, "cohort: %s\n", e.what());
  if (dynamic_cast<const ConfigError*>(&e)) return 2;
  if (dynamic_cast<const IoError*>(&e)) return 3;
  if (dynamic_cast<const AuthError*>(&e)) return 5;
  if (dynamic_cast<const OutOfMemoryError*>(&e)) return 6;
  if (dynamic_cast<const DistributedError*>(&e) || dynamic_cast<const TimeoutError*>(&e)) return 4;
  return 1;
}

int train_main(int argc, char** argv, const trainer::Extensions& ext) {
  std::string config;
  std::vector<std::string> overrides;
  TrainFlags flags;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--print-model") {
      flags.print_model = true;
    } else if (a == "--eval-only") {
      flags.eval_only = true;
    } else if (a == "--estimate-memory") {
      flags.estimate_memory = true;
    } else if (a.rfind("--world-size=", 0) == 0) {
      try {
        flags.world_size = std::stoi(a.substr(13));
      } catch (const std::exception&) {
        flags.world_size = 0;
      }
      if (flags.world_size < 1) {
        std::fprintf(stderr, "cohort: %s is not a world size (1 or more)\n", a.c_str());
        return 2;
      }
    } else if (a == "-h" || a == "--help") {
      std::printf(
          "usage: %s CONFIG [key.path=value ...] [--print-model] [--eval-only]\n"
          "       [--estimate-memory [--world-size=N]]\n"
          "Trains like `cohort train` (alone, or as one rank under cohort launch,\n"
          "mpirun or srun) with this program's model and data.\n",
          argv[0]);
      return 0;
    } else if (a.rfind("--", 0) == 0) {
      std::fprintf(stderr,
                   "cohort: unknown option %s (--print-model, --eval-only, --estimate-memory, "
                   "--world-size=N)\n",
                   a.c_str());
      return 2;
    } else if (config.empty()) {
      config = a;
    } else {
      overrides.push_back(a);
    }
  }
  if (config.empty()) {
    std::fprintf(stderr,
                 "usage: %s CONFIG [key.path=value ...] [--print-model] [--eval-only]\n"
                 "       [--estimate-memory [--world-size=N]]\n",
                 argv[0]);
    return 2;
  }
  try {
    return train_command(config, overrides, flags, ext);
  } catch (const std::exception& e) {
    return report_and_exit_code(e);
  }
}

}  // namespace cohort::launcher
