// The `cohort` executable. Subcommands: train (one worker; alone, single-process training),
// launch (start and supervise the workers of a job), ps (one parameter server), bench collectives.
// Exit codes: 0 success, 1 training error, 2 usage or config error, 3 a data or checkpoint file
// that cannot be read or written, 4 a distributed failure (a peer died or a wait timed out), 5 a
// token that is missing or refused, 128 + signal when SIGTERM or SIGUSR1 stopped training (after
// writing a checkpoint).
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "cohort/config.h"
#include "collectives/flight_recorder.h"
#include "core/util/error.h"
#include "launcher/bench_collectives.h"
#include "launcher/bench_gemm.h"
#include "launcher/bench_ps.h"
#include "launcher/bench_rendezvous.h"
#include "launcher/bench_store.h"
#include "launcher/checkpoint_command.h"
#include "launcher/env_command.h"
#include "launcher/generate_command.h"
#include "launcher/launch.h"
#include "launcher/ps_command.h"
#include "launcher/slurm_submit.h"
#include "launcher/store_command.h"
#include "launcher/train_command.h"
#include "launcher/worker_env.h"
#include "trainer/config.h"
#include "trainer/trainer.h"

namespace {

constexpr int kExitUsage = 2;

// --nnodes N or MIN:MAX (torchrun's spelling).
void parse_nnodes(const std::string& text, cohort::launcher::LaunchOptions& lo) {
  const auto number = [&](const std::string& v) {
    if (v.empty() || v.size() > 7 || v.find_first_not_of("0123456789") != std::string::npos)
      COHORT_THROW(cohort::ConfigError, "--nnodes '", text,
                   "' is not a node count (4) or a range MIN:MAX (2:4)");
    return std::stoi(v);
  };
  const size_t colon = text.find(':');
  if (colon == std::string::npos) {
    lo.nnodes = number(text);
    lo.min_nnodes = 0;
    return;
  }
  lo.min_nnodes = number(text.substr(0, colon));
  lo.nnodes = number(text.substr(colon + 1));
  if (lo.min_nnodes < 1 || lo.min_nnodes > lo.nnodes)
    COHORT_THROW(cohort::ConfigError, "--nnodes ", text,
                 ": MIN must be at least 1 and no larger than MAX");
  if (lo.min_nnodes == lo.nnodes) lo.min_nnodes = 0;
}

}  // namespace

namespace {

// Start-up measurement (scripts/bench/launch.sh): a caller that puts CLOCK_MONOTONIC's
// nanoseconds, read just before exec, in COHORT_EXEC_NS learns how long the dynamic loader and the
// static initialisers took to reach main.
void report_exec_to_main() {
  const char* t = std::getenv("COHORT_EXEC_NS");
  if (!t) return;
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  const double ns = static_cast<double>(now.tv_sec) * 1e9 + static_cast<double>(now.tv_nsec);
  std::fprintf(stderr, "cohort: exec to main %.2f ms\n", (ns - std::strtod(t, nullptr)) / 1e6);
}

}  // namespace

int main(int argc, char** argv) {
  report_exec_to_main();
  CLI::App app{"cohort: distributed training without Python"};
  app.set_version_flag("--version", std::string("cohort ") + COHORT_VERSION);
  app.require_subcommand(1);
  std::string config;
  std::vector<std::string> overrides;
  auto* train =
      app.add_subcommand("train", "train a model described by a YAML config (one worker)");
  train->add_option("config", config, "the experiment's YAML file")->required();
  train->add_option("overrides", overrides, "key.path=value overrides of config keys");
  cohort::launcher::TrainFlags train_flags;
  train->add_flag("--print-model", train_flags.print_model,
                  "print each layer, its output shape and parameter count, then exit");
  train->add_flag(
      "--eval-only", train_flags.eval_only,
      "evaluate the model (model.init_from's weights) on the evaluation set, then exit");
  train->add_flag("--estimate-memory", train_flags.estimate_memory,
                  "print each strategy's model state per rank (parameters, gradients, optimizer) "
                  "at --world-size ranks, then exit");
  train
      ->add_option("--world-size", train_flags.world_size,
                   "ranks for --estimate-memory (default: this job's, else 1)")
      ->check(CLI::Range(1, 1 << 20));

  std::string gen_config;
  std::vector<std::string> gen_args;
  auto* generate =
      app.add_subcommand("generate", "sample text (or tokens) from a language model's checkpoint");
  generate->add_option("config", gen_config, "the experiment's YAML file")->required();
  generate->add_option("args", gen_args,
                       "checkpoint=PATH (default: the newest in checkpoint.dir), prompt=TEXT or "
                       "prompt_tokens=ID,ID,..., max_new_tokens=200, temperature=0.8, top_k=40, "
                       "seed=0, and key.path=value config overrides");

  auto* ps = app.add_subcommand(
      "ps",
      "serve one shard of a parameter-server job until SIGTERM (cohort launch --ps-servers "
      "starts these for you)");
  cohort::launcher::PsServeOptions pso;
  ps->add_option("config", config, "the experiment's YAML file")->required();
  ps->add_option("overrides", overrides, "key.path=value overrides of config keys");
  ps->add_option("--index", pso.index, "this server's index (default COHORT_PS_SERVER_RANK)");
  ps->add_option("--workers", pso.workers, "the job's workers (default COHORT_WORLD_SIZE)");
  ps->add_option("--bind", pso.bind,
                 "address to listen on (default parameter_server.bind, COHORT_PS_BIND, 127.0.0.1)");
  ps->add_option("--port", pso.port, "port to listen on (default: a free one)");

  auto* launch = app.add_subcommand(
      "launch", "start --nproc-per-node workers of PROGRAM on this node and supervise them");
  cohort::launcher::LaunchOptions lo;
  launch->add_option("--nproc-per-node,--nproc_per_node", lo.nproc_per_node, "workers on this node")
      ->capture_default_str();
  std::string nnodes = "1";
  launch
      ->add_option("--nnodes", nnodes,
                   "nodes in the job (one agent each), or MIN:MAX for an elastic job that goes on "
                   "without a lost node and admits nodes that arrive later")
      ->capture_default_str();
  launch
      ->add_option("--rdzv-last-call", lo.rdzv_last_call_s,
                   "elastic: seconds more nodes may still join once MIN are in")
      ->capture_default_str();
  launch
      ->add_option("--heartbeat-timeout", lo.heartbeat_timeout_s,
                   "seconds without an agent's heartbeat before it is taken for lost")
      ->capture_default_str();
  launch->add_option("--node-rank,--node_rank", lo.node_rank, "this node's index, 0 to nnodes-1")
      ->capture_default_str();
  launch->add_option("--rdzv-endpoint,--rdzv_endpoint", lo.rdzv_endpoint,
                     "HOST:PORT of node 0's store (node 0 listens on PORT)");
  launch
      ->add_option("--rdzv-timeout,--rdzv_timeout", lo.rdzv_timeout_s,
                   "seconds to wait for the other nodes, and for their heartbeats")
      ->capture_default_str();
  launch
      ->add_option("--max-restarts,--max_restarts", lo.max_restarts,
                   "times all workers start again after a failure")
      ->capture_default_str();
  launch->add_flag("--heal", lo.heal,
                   "a worker killed by a signal (not rank 0) does not stop the others: they heal "
                   "in place and a replacement joins them (cohort train, ddp, cpu backend)");
  launch
      ->add_option("--monitor-interval,--monitor_interval", lo.monitor_interval_s,
                   "seconds between checks of the workers")
      ->capture_default_str();
  launch
      ->add_option("--grace-period", lo.grace_period_s,
                   "seconds from SIGTERM to SIGKILL when stopping workers")
      ->capture_default_str();
  launch->add_option("--log-dir,--log_dir", lo.log_dir,
                     "write each rank's output to DIR/rank_N.log instead of the console");
  launch->add_option("-r,--redirects", lo.redirects,
                     "streams sent to the log file instead of the console: 1 stdout, 2 stderr, 3 "
                     "both, per local rank as 0:1,1:3 (default with --log-dir: 3)");
  // A bare --tee (the flag of earlier releases) means both streams of every rank.
  launch->add_flag("-t,--tee{3}", lo.tee,
                   "streams sent to the log file and the console, as --redirects: --tee=1, "
                   "--tee=0:3; bare --tee: 3");
  launch->add_option("--ranks-filter,--local-ranks-filter,--local_ranks_filter", lo.ranks_filter,
                     "only these ranks print to the console, e.g. 0,3 (logs keep every rank)");
  launch->add_option("--run-id,--rdzv-id,--rdzv_id", lo.run_id,
                     "job id shown to workers (COHORT_RUN_ID, TORCHELASTIC_RUN_ID)");
  launch
      ->add_option("--ps-servers", lo.ps_servers,
                   "parameter servers on this node (distributed.strategy parameter_server)")
      ->capture_default_str();
  bool standalone = true;
  launch
      ->add_option("--cpu-bind,--cpu_bind", lo.cpu_bind,
                   "place each local rank on its share of the node's cores (cores), on a NUMA "
                   "node (numa), or anywhere (none); its thread pool follows")
      ->capture_default_str();
  launch->add_flag("--standalone", standalone, "one node, store on a free port (the default)");
  // torchrun's other spellings, so that its command lines run unchanged.
  launch->add_flag("-m,--module", lo.module,
                   "run PROGRAM as a Python module: python3 -m PROGRAM ARGS (as torchrun -m)");
  launch->add_flag("--no-python,--no_python", lo.no_python,
                   "run a PROGRAM ending in .py directly instead of with python3");
  std::string rdzv_backend, rdzv_conf, master_addr;
  int master_port = 0;
  launch->add_option("--rdzv-backend,--rdzv_backend", rdzv_backend,
                     "accepted for torchrun's command lines (c10d, static); Cohort's agents always "
                     "meet through node 0's store");
  launch->add_option("--rdzv-conf,--rdzv_conf", rdzv_conf, "accepted for torchrun's command lines");
  launch->add_option("--master-addr,--master_addr", master_addr,
                     "with --nnodes > 1 and no --rdzv-endpoint: node 0's address (torchrun's "
                     "static rendezvous)");
  launch
      ->add_option("--master-port,--master_port", master_port,
                   "one node: the workers' MASTER_PORT; several: with --master-addr, the "
                   "rendezvous port")
      ->check(CLI::Range(1, 65535));
  launch->footer(
      "\nPROGRAM runs on every rank: cohort launch [OPTIONS] PROGRAM [ARGS...], or, so that no\n"
      "argument of PROGRAM is read as an option of cohort launch, cohort launch [OPTIONS] --\n"
      "PROGRAM [ARGS...]. A PROGRAM ending in .py runs with the python3 on PATH; -m MODULE runs\n"
      "python3 -m MODULE. Examples:\n"
      "  cohort launch --nproc-per-node 2 -- cohort train configs/fashion_mnist_mlp.yaml\n"
      "  cohort launch --nproc_per_node=2 train_ddp.py --epochs 3      (a PyTorch script)\n"
      "Workers get COHORT_RANK, RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, ...");
  // Everything from the program on belongs to the program, options included.
  launch->prefix_command();
  launch->allow_extras();

  auto* slurm = app.add_subcommand("slurm", "Slurm batch jobs");
  slurm->require_subcommand(1);
  auto* submit = slurm->add_subcommand(
      "submit", "submit `cohort train CONFIG` as an sbatch job, one srun task per rank");
  cohort::launcher::SlurmSubmitOptions so;
  submit->add_option("config", so.config, "the experiment's YAML file")->required();
  submit->add_option("overrides", so.overrides, "key.path=value overrides of config keys");
  submit->add_option("--nodes", so.nodes, "nodes")->capture_default_str();
  submit->add_option("--ntasks-per-node", so.ntasks_per_node, "ranks per node")
      ->capture_default_str();
  submit->add_option("--partition", so.partition, "Slurm partition");
  submit->add_option("--time", so.time, "time limit, e.g. 2:00:00");
  submit->add_option("--gpus-per-node", so.gpus_per_node, "GPUs per node")->capture_default_str();
  submit->add_option("--cpus-per-task", so.cpus_per_task,
                     "CPUs per rank (default: the config's threads)");
  submit->add_option("--account", so.account, "Slurm account to charge");
  submit->add_option("--qos", so.qos, "Slurm quality of service");
  submit->add_option("--mem", so.mem, "memory per node, e.g. 64G");
  submit->add_option("--constraint", so.constraint, "node features, e.g. a100");
  submit
      ->add_option("--sbatch-arg", so.sbatch_args,
                   "any other sbatch option, passed as written (repeatable): "
                   "--sbatch-arg=--exclusive")
      ->allow_extra_args(false);
  submit->add_flag("--dry-run", so.dry_run, "print the sbatch script instead of submitting it");

  auto* store = app.add_subcommand(
      "store", "one request to a job's store as one of its workers (COHORT_STORE, COHORT_TOKEN)");
  cohort::launcher::StoreCommandOptions sto;
  store->add_option("op", sto.op, "get, set, add, check, wait or delete")->required();
  store->add_option("args", sto.args, "KEY [VALUE | DELTA], or KEY... for check and wait");
  store->add_option("--address", sto.address, "HOST:PORT (default COHORT_STORE)");
  store->add_option("--timeout", sto.timeout_s, "seconds")->capture_default_str();

  std::string diagnose_dir;
  auto* diagnose = app.add_subcommand(
      "diagnose",
      "say what a job that hung or failed was doing: lines up its ranks' flight-recorder dumps");
  diagnose
      ->add_option("dir", diagnose_dir,
                   "the run directory (its flight_recorder/) or a directory of rank_N.json dumps")
      ->required();
  auto* env_cmd = app.add_subcommand("env",
                                     "what this build has and this machine offers (versions, GPUs, "
                                     "CPU, BLAS, job), for bug reports");

  auto* ckpt = app.add_subcommand("checkpoint", "inspect and convert checkpoints");
  ckpt->require_subcommand(1);
  cohort::launcher::CheckpointCommandOptions cko;
  auto* consolidate = ckpt->add_subcommand(
      "consolidate", "write the whole model of a checkpoint (any format) as one safetensors file");
  consolidate->add_option("dir", cko.dir, "the checkpoint (checkpoints/step_N)")->required();
  consolidate->add_option("-o,--output", cko.output, "the file (default DIR/model.safetensors)");
  auto* info = ckpt->add_subcommand("info", "what a checkpoint holds (verifies its checksums)");
  info->add_option("dir", cko.dir, "the checkpoint (checkpoints/step_N)")->required();

  auto* bench = app.add_subcommand("bench", "benchmarks");
  bench->require_subcommand(1);
  auto* bench_gemm = bench->add_subcommand(
      "gemm", "the CPU's GEMM rate: float32 (OpenBLAS) against bfloat16 operands (AVX512-BF16)");
  auto* bench_coll = bench->add_subcommand(
      "collectives", "time one collective over a range of sizes (run by every rank of a job)");
  cohort::launcher::BenchCollectivesOptions bo;
  std::string min_b = "4K", max_b = "64M";
  bench_coll->add_option("--backend", bo.backend, "cpu, mpi or nccl")->capture_default_str();
  bench_coll
      ->add_option("--op", bo.op,
                   "allreduce, broadcast, allgather, reduce_scatter, alltoall or barrier")
      ->capture_default_str();
  bench_coll->add_option("--transport", bo.transport, "cpu backend: auto, shm or tcp")
      ->capture_default_str();
  bench_coll->add_option("--algorithm", bo.algorithm,
                         "cpu backend's all-reduce: auto, ring, recursive_doubling or hierarchical "
                         "(default: COHORT_ALLREDUCE_ALGORITHM, else auto)");
  bench_coll->add_option("-b,--min-bytes", min_b, "smallest size")->capture_default_str();
  bench_coll->add_option("-e,--max-bytes", max_b, "largest size")->capture_default_str();
  bench_coll->add_option("-f,--factor", bo.factor, "size multiplier")->capture_default_str();
  bench_coll->add_option("--iters", bo.iters, "timed iterations (0: 200 below 1 MiB, else 20)")
      ->capture_default_str();
  bench_coll->add_option("--warmup", bo.warmup, "untimed iterations")->capture_default_str();
  bench_coll->add_option("--timeout", bo.timeout_s, "seconds before a collective fails")
      ->capture_default_str();
  auto* bench_ps = bench->add_subcommand(
      "ps",
      "time a push plus pull of a model's gradients (run as the program of cohort launch "
      "--ps-servers)");
  cohort::launcher::BenchPsOptions bpo;
  bench_ps->add_option("config", bpo.config, "the experiment's YAML file")->required();
  bench_ps->add_option("overrides", bpo.overrides, "key.path=value overrides of config keys");
  bench_ps->add_option("--iters", bpo.iters, "timed iterations")->capture_default_str();
  bench_ps->add_option("--warmup", bpo.warmup, "untimed iterations")->capture_default_str();
  bench_ps->add_flag("--copy-gradients", bpo.copy_gradients,
                     "start the gradients in tensors of their own, not where backward writes them");
  auto* bench_store = bench->add_subcommand(
      "store", "the rendezvous store under load and under attack, and the cost of its handshake");
  cohort::launcher::BenchStoreOptions bso;
  bench_store->add_option("--clients", bso.clients, "honest clients")->capture_default_str();
  bench_store->add_option("--attackers", bso.attackers, "attacking threads")->capture_default_str();
  bench_store->add_option("--seconds", bso.seconds, "length of each phase")->capture_default_str();
  bench_store->add_option("--connects", bso.connects, "connections timed")->capture_default_str();
  auto* bench_rdzv = bench->add_subcommand(
      "rendezvous",
      "simulated agents (threads) through the launcher's rendezvous, heartbeats and a failure "
      "broadcast on a real store");
  cohort::launcher::BenchRendezvousOptions bro;
  bench_rdzv->add_option("--agents", bro.agents, "simulated agents (nodes)")->capture_default_str();
  bench_rdzv->add_option("--beat-seconds", bro.beat_seconds, "length of the heartbeat phase")
      ->capture_default_str();
  // `cohort launch [options] -- PROGRAM ARGS...`: what follows "--" is the program's; CLI11 would
  // hand it to the parent command.
  std::vector<std::string> args(argv + 1, argv + argc);
  std::vector<std::string> after_dashes;
  if (!args.empty() && args[0] == "launch") {
    auto dashes = std::find(args.begin(), args.end(), "--");
    if (dashes != args.end()) {
      after_dashes.assign(dashes + 1, args.end());
      args.erase(dashes, args.end());
    }
  }
  // An unknown command is named, with the list, rather than CLI11's "A subcommand is required".
  if (!args.empty() && !args[0].empty() && args[0][0] != '-') {
    std::string names;
    bool known = false;
    for (const auto* sub : app.get_subcommands([](const CLI::App*) { return true; })) {
      names += (names.empty() ? "" : ", ") + sub->get_name();
      known = known || sub->get_name() == args[0];
    }
    if (!known) {
      std::fprintf(stderr, "cohort: unknown command '%s' (commands: %s; cohort --help)\n",
                   args[0].c_str(), names.c_str());
      return kExitUsage;
    }
  }
  std::reverse(args.begin(), args.end());  // CLI11 takes the arguments in reverse order
  try {
    app.parse(args);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : kExitUsage;
  }
  try {
    if (*train) return cohort::launcher::train_command(config, overrides, train_flags);
    if (*ps)
      return cohort::launcher::serve_parameter_server(
          cohort::trainer::load_config(config, overrides), pso);
    if (*launch) {
      parse_nnodes(nnodes, lo);
      lo.program = launch->remaining();
      lo.program.insert(lo.program.end(), after_dashes.begin(), after_dashes.end());
      if (!rdzv_backend.empty() && rdzv_backend != "c10d" && rdzv_backend != "static")
        COHORT_THROW(cohort::ConfigError, "--rdzv-backend ", rdzv_backend,
                     " is not supported: cohort launch meets through node 0's store (c10d and "
                     "static are accepted and mean that)");
      if (lo.nnodes > 1 && lo.rdzv_endpoint.empty() && !master_addr.empty())
        lo.rdzv_endpoint = master_addr + ":" + std::to_string(master_port ? master_port : 29500);
      else if (lo.nnodes == 1 && master_port)
        lo.master_port = master_port;
      return cohort::launcher::launch(lo);
    }
    if (*submit) {
      so.cohort_binary = std::filesystem::canonical("/proc/self/exe").string();
      return cohort::launcher::slurm_submit(so);
    }
    if (*store) return cohort::launcher::store_command(sto);
    if (*env_cmd) return cohort::launcher::env_command();
    if (*diagnose) {
      std::printf("%s\n", cohort::collectives::diagnose_flight_dumps(diagnose_dir).c_str());
      return 0;
    }
    if (*consolidate) return cohort::launcher::checkpoint_consolidate(cko);
    if (*info) return cohort::launcher::checkpoint_info(cko);
    if (*generate) return cohort::launcher::generate_command(gen_config, gen_args);
    if (*bench_ps) return cohort::launcher::bench_ps(bpo);
    if (*bench_store) return cohort::launcher::bench_store(bso);
    if (*bench_rdzv) return cohort::launcher::bench_rendezvous(bro);
    if (*bench_gemm) return cohort::launcher::bench_gemm();
    if (*bench_coll) {
      bo.min_bytes = cohort::launcher::parse_bytes("-b", min_b);
      bo.max_bytes = cohort::launcher::parse_bytes("-e", max_b);
      return cohort::launcher::bench_collectives(bo);
    }
  } catch (const std::exception& e) {
    return cohort::launcher::report_and_exit_code(e);
  }
  return 0;
}
