// The environment variables Cohort's library code reads, named in one place. Each is read once
// where it is used (a function-local static), and a value that does not parse is a ConfigError
// naming the variable, never silently ignored. (The launcher's job variables — rank, world size,
// the store's address, torchrun's, MPI's and Slurm's — are read by launcher/worker_env.h.)
#pragma once

#include <cstdint>

namespace cohort::env {

// Bytes of freed CPU blocks the allocator keeps for reuse, in MiB (default 1024).
inline constexpr const char* kCpuCacheMb = "COHORT_CPU_CACHE_MB";
// The cpu backend's shared-memory ring per peer, in bytes: a power of two >= 4096 (default 1 MiB).
inline constexpr const char* kShmRingBytes = "COHORT_SHM_RING_BYTES";
// 0: float32 matmuls and convolutions on a GPU without TF32 (default 1).
inline constexpr const char* kAllowTf32 = "COHORT_ALLOW_TF32";
// Set by `cohort launch`: which attempt of the job this is (0 first).
inline constexpr const char* kRestartCount = "COHORT_RESTART_COUNT";
// The job's run id (cohort launch, --run-id); torchrun's equivalent.
inline constexpr const char* kRunId = "COHORT_RUN_ID";
inline constexpr const char* kTorchRunId = "TORCHELASTIC_RUN_ID";
inline constexpr const char* kSlurmJobId = "SLURM_JOB_ID";
// Set by `cohort launch --nnodes MIN:MAX` for its workers: the world size data.batch_size was
// given for (the job's first round's); at another world size the trainer keeps the global batch.
inline constexpr const char* kBatchWorld = "COHORT_BATCH_WORLD";
// Set by `cohort launch --heal`: data-parallel ranks heal in place when one dies (trainer/heal.h);
// COHORT_HEAL_JOIN=1 marks a replacement rank, which joins the running job.
inline constexpr const char* kHeal = "COHORT_HEAL";
inline constexpr const char* kHealJoin = "COHORT_HEAL_JOIN";
// Set by `cohort launch` for its workers: the node's index in the job (for messages).
inline constexpr const char* kNodeRank = "COHORT_NODE_RANK";
// The cpu backend's all-reduce algorithm (auto, ring, recursive_doubling, hierarchical) where
// ProcessGroupOptions does not set one, as NCCL_ALGO does for NCCL. Every rank must set the same.
inline constexpr const char* kAllreduceAlgorithm = "COHORT_ALLREDUCE_ALGORITHM";
// Parameter servers' shared secret when the user gives one (else derived from the job's token).
inline constexpr const char* kPsSecret = "COHORT_PS_SECRET";
// The flight recorder (collectives/flight_recorder.h): operations kept per process (default
// 2048, 0 off), and where ranks write their dumps (default: the trainer's RUN_DIR/flight_recorder).
inline constexpr const char* kFlightRecorderSize = "COHORT_FLIGHT_RECORDER_SIZE";
inline constexpr const char* kFlightRecorderDir = "COHORT_FLIGHT_RECORDER_DIR";
// Set by `cohort launch`: a file where each node's first worker writes the directory its ranks
// dump into, so that the launcher can diagnose a job that timed out.
inline constexpr const char* kFlightRecorderNote = "COHORT_FLIGHT_RECORDER_NOTE";
// The mpi backend checks that every rank issues the same collective with the same size before
// each one (default on; 0 leaves the check out).
inline constexpr const char* kMpiCheckCollectives = "COHORT_MPI_CHECK_COLLECTIVES";
// Set by `cohort launch` for its workers: how it placed them ("cores", "numa"; "none" when it
// left them unbound, by request or because the ranks outnumber the cores).
inline constexpr const char* kCpuBind = "COHORT_CPU_BIND";
// Drills: RANK:STEP kills that rank after STEP on the first attempt; RANK:MS slows it per step.
inline constexpr const char* kKillAtStep = "COHORT_KILL_AT_STEP";
// RANK:STEP kills that rank while it writes the checkpoint of STEP (first attempt only).
inline constexpr const char* kKillInCheckpoint = "COHORT_KILL_IN_CHECKPOINT";
inline constexpr const char* kTestStepDelayMs = "COHORT_TEST_STEP_DELAY_MS";
// RANK:STEP: that rank stops itself (SIGSTOP) after STEP, as a frozen process would.
inline constexpr const char* kTestStopAtStep = "COHORT_TEST_STOP_AT_STEP";
// RANK:STEP: that rank skips the stop vote after STEP (a collective one rank never issues).
inline constexpr const char* kTestSkipCollective = "COHORT_TEST_SKIP_COLLECTIVE";

// The variable's value; null when unset or empty.
const char* get(const char* name);
// An integer in [min, max], or `fallback` when unset; ConfigError naming the variable otherwise.
int64_t integer(const char* name, int64_t fallback, int64_t min, int64_t max);
// 0/1, false/true, no/yes, off/on; `fallback` when unset; ConfigError otherwise.
bool flag(const char* name, bool fallback);
// "A:B" as two integers (COHORT_KILL_AT_STEP's RANK:STEP); false when unset; ConfigError naming
// the variable and `form` when malformed.
bool integer_pair(const char* name, const char* form, int64_t& a, int64_t& b);

}  // namespace cohort::env
