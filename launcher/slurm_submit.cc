#include "launcher/slurm_submit.h"

#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "core/util/error.h"
#include "trainer/config.h"

namespace cohort::launcher {
namespace {

// Single-quoted for the shell, so that any path or override survives unchanged.
std::string quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

}  // namespace

std::string sbatch_script(const SlurmSubmitOptions& o) {
  if (o.nodes < 1) COHORT_THROW(ConfigError, "--nodes must be at least 1, got ", o.nodes);
  if (o.ntasks_per_node < 1)
    COHORT_THROW(ConfigError, "--ntasks-per-node must be at least 1, got ", o.ntasks_per_node);
  if (o.gpus_per_node < 0)
    COHORT_THROW(ConfigError, "--gpus-per-node must be 0 or more, got ", o.gpus_per_node);
  if (o.cpus_per_task < 0)
    COHORT_THROW(ConfigError, "--cpus-per-task must be 0 or more, got ", o.cpus_per_task);
  // Values go into #SBATCH lines: one line each, no shell.
  for (const auto& [name, v] :
       {std::pair<const char*, const std::string*>{"--partition", &o.partition},
        {"--time", &o.time},
        {"--account", &o.account},
        {"--qos", &o.qos},
        {"--mem", &o.mem},
        {"--constraint", &o.constraint}})
    if (v->find_first_of("\n\r ") != std::string::npos)
      COHORT_THROW(ConfigError, name, " '", *v, "' must be one word");
  const trainer::Config c = trainer::load_config(o.config, o.overrides);
  const std::string log_dir = std::filesystem::absolute(c.logging.dir).string();
  const std::string config = std::filesystem::absolute(o.config).string();
  std::string s = "#!/bin/bash\n# Written by `cohort slurm submit`: one task per rank.\n";
  s += "#SBATCH --job-name=" + c.experiment + "\n";
  s += "#SBATCH --nodes=" + std::to_string(o.nodes) + "\n";
  s += "#SBATCH --ntasks-per-node=" + std::to_string(o.ntasks_per_node) + "\n";
  if (!o.partition.empty()) s += "#SBATCH --partition=" + o.partition + "\n";
  if (!o.time.empty()) s += "#SBATCH --time=" + o.time + "\n";
  if (o.gpus_per_node > 0) s += "#SBATCH --gpus-per-node=" + std::to_string(o.gpus_per_node) + "\n";
  const int cpus = o.cpus_per_task > 0 ? o.cpus_per_task : static_cast<int>(c.threads);
  if (cpus > 0) s += "#SBATCH --cpus-per-task=" + std::to_string(cpus) + "\n";
  if (!o.account.empty()) s += "#SBATCH --account=" + o.account + "\n";
  if (!o.qos.empty()) s += "#SBATCH --qos=" + o.qos + "\n";
  if (!o.mem.empty()) s += "#SBATCH --mem=" + o.mem + "\n";
  if (!o.constraint.empty()) s += "#SBATCH --constraint=" + o.constraint + "\n";
  for (const std::string& a : o.sbatch_args) {
    // One #SBATCH line per argument; a newline would end the directive and start a command.
    if (a.rfind("-", 0) != 0 || a.find_first_of("\n\r") != std::string::npos)
      COHORT_THROW(
          ConfigError, "--sbatch-arg '", a,
          "' must be one sbatch option on one line, such as --exclusive or --mail-type=END");
    s += "#SBATCH " + a + "\n";
  }
  s += "#SBATCH --output=" + log_dir + "/slurm-%j.out\n";
  // Two minutes before the time limit every task gets SIGUSR1: the trainer finishes its step,
  // writes a checkpoint and exits 138; the job is queued again and resumes from that checkpoint
  // (a requeue keeps SLURM_JOB_ID, the run's id; another submission is another run and resumes
  // nothing unless told to).
  s += "#SBATCH --signal=USR1@120\n#SBATCH --requeue\n#SBATCH --open-mode=append\n";
  // --label: every output line starts with its task's rank ("1: step 10/100 ..."), as in
  // `cohort launch`'s "[node/rank]".
  s += "srun --label --kill-on-bad-exit=1 --cpu-bind=none " + quote(o.cohort_binary) + " train " +
       quote(config);
  for (const auto& ov : o.overrides) s += " " + quote(ov);
  s += "\nrc=$?\n";
  s += "if [ \"$rc\" -eq 138 ]; then scontrol requeue \"$SLURM_JOB_ID\"; fi\n";
  s += "exit \"$rc\"\n";
  return s;
}

int slurm_submit(const SlurmSubmitOptions& o) {
  const std::string script = sbatch_script(o);
  if (o.dry_run) {
    std::fputs(script.c_str(), stdout);
    return 0;
  }
  const trainer::Config c = trainer::load_config(o.config, o.overrides);
  std::filesystem::create_directories(c.logging.dir);
  const std::string path = (std::filesystem::path(c.logging.dir) / "slurm-submit.sbatch").string();
  {
    std::ofstream f(path);
    f << script;
    if (!f) COHORT_THROW(IoError, "cannot write the sbatch script ", path);
  }
  const std::string cmd = "sbatch --parsable " + quote(path) + " 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) COHORT_THROW(ConfigError, "cannot run sbatch: is Slurm installed?");
  std::string out;
  char buf[256];
  while (std::fgets(buf, sizeof buf, p)) out += buf;
  const int rc = ::pclose(p);
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  if (!WIFEXITED(rc) || WEXITSTATUS(rc) != 0)
    COHORT_THROW(ConfigError, "sbatch refused ", path, ": ", out.empty() ? "no output" : out);
  // --parsable prints "jobid" or "jobid;cluster".
  std::printf("%s\n", out.substr(0, out.find(';')).c_str());
  return 0;
}

}  // namespace cohort::launcher
