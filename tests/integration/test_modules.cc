// Cohort's optional modules (core/util/module.h): `cohort` and its libraries link no CUDA, NCCL or
// MPI library, a CPU job never maps one, and a job that asks for what is missing gets one
// sentence naming it.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <thread>

#include "cohort/config.h"
#include "core/tensor/cuda/cuda_device.h"
#include "core/util/module.h"
#include "test_util.h"

namespace {

namespace fs = std::filesystem;
using cohort::test::kTinyGpt;
using cohort::test::run_command;

// The vendor libraries only the modules may bring in (gRPC's for start-up time).
const char* const kVendorLibraries[] = {"libcudart", "libcublas",   "libcublasLt", "libcudnn",
                                        "libnccl",   "libmpi",      "libopen-pal", "libcuda.so",
                                        "libgrpc",   "libprotobuf", "libabsl"};

std::string vendor_library_in(const std::string& text) {
  for (const char* lib : kVendorLibraries)
    if (text.find(lib) != std::string::npos) return lib;
  return "";
}

class Modules : public cohort::test::TempDirTest {};

TEST_F(Modules, CohortAndItsLibrariesLinkNoVendorLibrary) {
  for (const std::string& file :
       {std::string(COHORT_BINARY), std::string(COHORT_LIB_DIR) + "/libcohort_core.so",
        std::string(COHORT_LIB_DIR) + "/libcohort_collectives.so",
        std::string(COHORT_LIB_DIR) + "/libcohort_ps.so"}) {
    const auto r = run_command("ldd " + file);
    ASSERT_EQ(r.code, 0) << file << ": " << r.output;
    EXPECT_EQ(vendor_library_in(r.output), "") << file << " links it:\n" << r.output;
  }
  // The check can fail: the modules this build has do link their libraries, and sit next to
  // the core where it looks for them.
  const std::pair<bool, std::pair<const char*, const char*>> modules[] = {
      {COHORT_USE_CUDA, {"cuda", "libcudart"}},
      {COHORT_USE_NCCL, {"nccl", "libnccl"}},
      {COHORT_USE_MPI, {"mpi", "libmpi"}},
      {COHORT_USE_GRPC, {"grpc", "libgrpc"}}};
  for (const auto& [built, m] : modules) {
    if (!built) continue;
    const std::string file = cohort::core::module::path(m.first);
    ASSERT_TRUE(fs::exists(file)) << file;
    EXPECT_NE(run_command("ldd " + file).output.find(m.second), std::string::npos) << file;
  }
}

TEST_F(Modules, ACpuTrainingRunMapsNoVendorLibrary) {
  // Every library the run opens (LD_DEBUG=files), and what /proc/PID/maps shows while it trains.
  const fs::path pid_file = dir_ / "pid", loader_log = dir_ / "ld";
  const std::string train =
      std::string(COHORT_BINARY) + " train " COHORT_SOURCE_DIR "/configs/tiny_gpt.yaml " +
      kTinyGpt + " device=auto train.steps=30 threads=1 logging.dir=" + (dir_ / "run").string();
  cohort::test::CommandResult result;
  std::thread runner([&] {
    result = run_command("sh -c 'LD_DEBUG=files LD_DEBUG_OUTPUT=" + loader_log.string() +
                         " COHORT_TEST_STEP_DELAY_MS=0:50 " + train + " & echo $! > " +
                         pid_file.string() + "; wait $!'");
  });
  std::set<std::string> mapped;
  bool saw_blas = false;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(5);
  while (std::chrono::steady_clock::now() < deadline) {
    std::ifstream pid_in(pid_file);
    std::string pid;
    if (pid_in >> pid) {
      std::ifstream maps("/proc/" + pid + "/maps");
      if (!maps) break;  // it has exited
      std::string line;
      while (std::getline(maps, line)) {
        const size_t slash = line.find('/');
        if (slash == std::string::npos) continue;
        mapped.insert(line.substr(slash));
        if (line.find("openblas") != std::string::npos) saw_blas = true;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  runner.join();
  ASSERT_EQ(result.code, 0) << result.output;
  // The maps were read while it computed: the BLAS is opened at the first matmul.
  EXPECT_TRUE(saw_blas) << "never saw the run's BLAS mapped; read " << mapped.size() << " paths";
  for (const std::string& path : mapped) EXPECT_EQ(vendor_library_in(path), "") << path;
  // What the loader mapped ("generating link map"); device: auto's look for the driver
  // (libcuda.so.1) may be logged as a try where there is none.
  std::string opened;
  for (const auto& entry : fs::directory_iterator(dir_)) {
    if (entry.path().filename().string().rfind("ld.", 0) != 0) continue;
    std::istringstream log(cohort::test::read_text(entry.path()));
    for (std::string line; std::getline(log, line);)
      if (line.find("generating link map") != std::string::npos) opened += line + "\n";
  }
  ASSERT_NE(opened.find("openblas"), std::string::npos) << "LD_DEBUG wrote nothing useful";
  EXPECT_EQ(vendor_library_in(opened), "") << opened;
  EXPECT_EQ(opened.find("libcohort_cuda"), std::string::npos);
}

TEST_F(Modules, CudaOrNcclWhereTheyAreMissingIsOneSentenceAndExitTwo) {
  if (cohort::core::cuda::device_count() > 0) GTEST_SKIP() << "this machine has a GPU";
  const std::string why = cohort::core::cuda::unavailable_reason();
  ASSERT_FALSE(why.empty());
  auto train_in = [&](const std::string& run) {
    return std::string(COHORT_BINARY) + " train " COHORT_SOURCE_DIR "/configs/tiny_gpt.yaml " +
           kTinyGpt + " train.steps=2 logging.dir=" + (dir_ / run).string();
  };
  const std::string train = train_in("run");
  auto r = run_command(train + " device=cuda");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("device cuda was requested but " + why), std::string::npos) << r.output;
  r = run_command(train + " device=cuda:1");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find(why), std::string::npos) << r.output;
  // backend: nccl on ranks without GPUs, before any collective.
  r = run_command(std::string(COHORT_BINARY) + " launch --nproc-per-node 2 -- " + train_in("nccl") +
                  " distributed.backend=nccl");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("distributed.backend nccl needs each rank on a GPU, but " + why),
            std::string::npos)
      << r.output;
}

TEST(ModuleLoader, NamesTheMissingModuleOrTheLibraryItNeeds) {
  std::string why;
  EXPECT_EQ(cohort::core::module::open("absent", "entry", false, why), nullptr);
  EXPECT_NE(why.find("cohort's absent module is not installed (" +
                     cohort::core::module::path("absent") + "; the cohort-cuda package has it)"),
            std::string::npos)
      << why;
  // The fixture module needs a library no search path holds, as the CUDA module needs cuDNN.
  EXPECT_EQ(cohort::core::module::open_file(COHORT_TEST_MODULE_FILE, "test", "cohort_test_entry",
                                            false, why),
            nullptr);
  EXPECT_EQ(why.rfind("libcohort_test_absent.so is not installed (cohort's test module ", 0), 0)
      << why;
  EXPECT_FALSE(cohort::core::module::is_loaded("absent"));
}

TEST(ModuleLoader, ACpuProcessHasOpenedNoModule) {
  // This test binary has done CPU work only (and asked how many GPUs there are).
  (void)cohort::core::cuda::device_count();
  (void)cohort::core::cuda::memory_stats();
  if (cohort::core::cuda::device_count() == 0) {
    EXPECT_FALSE(cohort::core::module::is_loaded("cuda"));
  }
  EXPECT_FALSE(cohort::core::module::is_loaded("nccl"));
  EXPECT_FALSE(cohort::core::module::is_loaded("mpi"));
  EXPECT_FALSE(cohort::core::module::is_loaded("grpc"));
}

}  // namespace
