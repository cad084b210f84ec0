// The installed package: `cmake --install` puts headers, libraries and a CMake package under a
// prefix, and a user's project outside this tree (examples/custom_model: its own Module and
// Dataset) builds against it with find_package(Cohort) and Cohort::cohort, then trains
// data-parallel under `cohort launch` with the trainer's checkpoints and metrics.
#include <gtest/gtest.h>

#include <filesystem>
#include <regex>

#include "cohort/config.h"
#include "test_util.h"

namespace {

namespace fs = std::filesystem;
using cohort::test::read_text;
using cohort::test::run_command;

class Install : public cohort::test::TempDirTest {};

TEST_F(Install, AnOutOfTreeProgramBuildsAgainstThePackageAndTrainsWithDdp) {
  const fs::path prefix = dir_ / "prefix", build = dir_ / "build";
  auto r = run_command(
      "cmake --install " + std::string(COHORT_BUILD_DIR) + " --prefix " + prefix.string(), 300);
  ASSERT_EQ(r.code, 0) << r.output;
  for (const char* f :
       {"lib/cmake/Cohort/CohortConfig.cmake", "lib/cmake/Cohort/CohortTargets.cmake",
        "include/cohort/core/nn/module.h", "include/cohort/cohort/config.h",
        "include/cohort/launcher/train_command.h", "lib/libcohort_core.so",
        "lib/libcohort_collectives.so", "lib/libcohort_trainer.a", "bin/cohort"})
    EXPECT_TRUE(fs::exists(prefix / f)) << f;
  // The modules this build has lie beside the core, where it looks for them.
  for (const auto& [built, module] :
       {std::pair{COHORT_USE_CUDA, "cuda"}, std::pair{COHORT_USE_NCCL, "nccl"},
        std::pair{COHORT_USE_MPI, "mpi"}})
    EXPECT_EQ(fs::exists(prefix / "lib" / ("libcohort_" + std::string(module) + ".so")), built)
        << module;
  // The installed program finds the installed libraries (its RPATH), not the build tree's, and
  // links no CUDA, NCCL or MPI library.
  r = run_command("ldd " + (prefix / "bin" / "cohort").string());
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(std::regex_search(r.output, std::regex("libcohort_core\\.so[.0-9]* => " +
                                                     prefix.string() + "/(bin/\\.\\./)?lib/")))
      << r.output;
  for (const char* vendor : {"libcudart", "libcublas", "libcudnn", "libnccl", "libmpi"})
    EXPECT_EQ(r.output.find(vendor), std::string::npos) << r.output;
  // A clean configure of the example, outside this tree, that knows Cohort only by its prefix.
  r = run_command("cmake -S " + std::string(COHORT_SOURCE_DIR) + "/examples/custom_model -B " +
                      build.string() + " -DCMAKE_PREFIX_PATH=" + prefix.string() +
                      " -DCMAKE_BUILD_TYPE=Release",
                  300);
  ASSERT_EQ(r.code, 0) << r.output;
  r = run_command("cmake --build " + build.string() + " -j 2", 600);
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string program = (build / "custom_model").string();
  ASSERT_TRUE(fs::exists(program));
  // Under the installed launcher, 2 ranks: DDP, a run directory, checkpoints, the summary.
  r = run_command((prefix / "bin" / "cohort").string() + " launch --nproc-per-node 2 -- " +
                      program + " " + COHORT_SOURCE_DIR +
                      "/examples/custom_model/spirals.yaml train.epochs=3 distributed.timeout_s=60 "
                      "logging.dir=" +
                      (dir_ / "run").string(),
                  300);
  ASSERT_EQ(r.code, 0) << r.output;
  std::smatch m;
  ASSERT_TRUE(
      std::regex_search(r.output, m, std::regex(R"(summary: .* test_acc ([0-9.]+) world_size 2)")))
      << r.output;
  EXPECT_GT(std::stod(m[1]), 0.9) << r.output;
  EXPECT_NE(r.output.find("cohort: custom on cpu, world size 2"), std::string::npos) << r.output;
  EXPECT_TRUE(fs::exists(dir_ / "run" / "run.json"));
  EXPECT_FALSE(read_text(dir_ / "run" / "metrics.jsonl").empty());
  bool checkpoint = false;
  for (auto& e : fs::directory_iterator(dir_ / "run" / "checkpoints"))
    checkpoint = checkpoint || e.path().filename().string().rfind("step_", 0) == 0;
  EXPECT_TRUE(checkpoint);
  // The program's own errors are cohort train's: one sentence and exit code 2.
  r = run_command(program + " " + COHORT_SOURCE_DIR +
                  "/examples/custom_model/spirals.yaml optimizer.lr=fast");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("optimizer.lr must be a number, got 'fast'"), std::string::npos)
      << r.output;
}

// `cohort train` itself has no custom model: the config that names one is told where they come
// from.
TEST_F(Install, CohortTrainExplainsCustomModels) {
  auto r = run_command(std::string(COHORT_BINARY) + " train " + COHORT_SOURCE_DIR +
                       "/examples/custom_model/spirals.yaml");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("model.type custom is a model that a C++ program provides"),
            std::string::npos)
      << r.output;
}

}  // namespace
