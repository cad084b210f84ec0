// `cohort launch`: torchrun's role. One agent per node: alone (standalone) it hosts the rendezvous
// TcpStore on a port the OS picks, so two jobs on one machine never collide; with --nnodes, node
// 0's agent hosts it on --rdzv-endpoint and the agents agree through it on global ranks. Each agent
// starts --nproc-per-node workers with the contract's environment, prefixes their output and
// supervises them. When any worker on any node fails, every agent stops its workers (SIGTERM, then
// SIGKILL after the grace period) and either all start again (--max-restarts,
// COHORT_RESTART_COUNT incremented) or every agent exits non-zero after a summary naming the rank,
// node, pid, exit code or signal and the last lines of that worker's output. Agents publish
// heartbeats, so one that disappears is noticed within --rdzv-timeout.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace cohort::launcher {

struct LaunchOptions {
  int nproc_per_node = 1;
  // Several nodes: one agent per node, each given the same --nnodes and --rdzv-endpoint and its
  // own --node-rank; node 0's agent hosts the store on the endpoint's port.
  int nnodes = 1;
  // Elastic (--nnodes MIN:MAX): the fewest nodes the job runs on (0: nnodes, a fixed size). Node
  // ranks then follow arrival order (node 0 hosts the store); a node lost ends the round and the
  // others meet again and go on from the newest checkpoint; a node that arrives later is admitted
  // when the workers next make room (cohort's trainer: at its next checkpoint).
  int min_nnodes = 0;
  double rdzv_last_call_s = 3;      // elastic: once MIN nodes are in, how long more may still join
  double heartbeat_timeout_s = 30;  // an agent silent this long is taken for lost
  int node_rank = 0;
  std::string rdzv_endpoint;    // host:port; empty: one node, a port the OS picks
  double rdzv_timeout_s = 300;  // waiting for the other agents, and for their heartbeats
  int max_restarts = 0;
  // In-place healing (trainer/heal.h): a worker other than rank 0 killed by a signal does not
  // stop the others, which heal without it; a replacement starts in its place and joins them
  // (each replacement counts against --max-restarts). Workers that cannot heal (another strategy
  // or backend) exit, and the job takes the restart path.
  bool heal = false;
  double monitor_interval_s = 0.1;  // how often exits are checked between output
  double grace_period_s = 10;       // SIGTERM to SIGKILL when stopping workers
  // Per-rank log files DIR/rank_N.log. Alone, --log-dir sends both streams of every rank there
  // instead of the console; --redirects and --tee choose per stream and local rank, as torchrun's
  // do, and without --log-dir they write into a new temporary directory.
  std::string log_dir;
  std::string redirects;     // streams to the file instead of the console
  std::string tee;           // streams to the file and the console
  std::string ranks_filter;  // "0,3": only these global ranks print to the console
  std::string run_id;        // shown to workers as COHORT_RUN_ID; default: random, one per launch
  // Parameter-server mode: this many servers on this node (the same on every node), started with
  // COHORT_ROLE=server beside the workers. A server that exits is restarted (up to
  // --max-restarts times each) and resumes from its checkpoint; a worker other than rank 0 that
  // fails is reported and the others go on; when the workers are done the servers are stopped.
  int ps_servers = 0;
  // torchrun's spellings: -m runs PROGRAM as a Python module (python3 -m PROGRAM ARGS); a PROGRAM
  // ending in .py runs with the python3 on PATH unless --no-python.
  bool module = false, no_python = false;
  // One node: the workers' MASTER_PORT (torchrun's --master-port); 0: a free port. PyTorch's
  // TCPStore binds it in rank 0, so it is never the rendezvous store's.
  int master_port = 0;
  // Where local ranks run: "cores" (a share of the node's cores each, the default), "numa" (a
  // NUMA node each) or "none" (anywhere the launcher may); see cpu_binding.h.
  std::string cpu_bind = "cores";
  std::vector<std::vector<int>> binding;  // per local rank, planned by launch()
  bool gpu_placed = false;                // ranks were placed near their GPUs
  std::string flight_note;           // COHORT_FLIGHT_RECORDER_NOTE for the workers, set by launch()
  std::vector<std::string> program;  // PROGRAM ARGS...
};

// The command line a worker runs for `o.program`: python3 for a .py script or -m, else as given.
// Throws ConfigError when there is no program.
std::vector<std::string> worker_command(const LaunchOptions& o);

// A TCP port that is free on this machine now (the OS picks it; nothing holds it afterwards).
uint16_t free_port();

// A torchrun stream spec: "3" for every local rank, or "0:1,2:3" for some; 0 neither stream, 1
// stdout, 2 stderr, 3 both. Returns the bits for local ranks 0 to nproc-1 (unlisted ones: 0).
// Throws ConfigError naming `option` for anything else.
std::vector<int> parse_stream_spec(const std::string& option, const std::string& spec, int nproc);

// Returns the launcher's exit code: 0 when every worker succeeded; else the first failed worker's
// code (128 + signal for a signal); 128 + the signal that stopped the launcher. Throws
// ConfigError for bad options or a program that cannot be executed.
int launch(const LaunchOptions& options);

}  // namespace cohort::launcher
