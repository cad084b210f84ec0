// In-place healing of a data-parallel job (`cohort launch --heal`): when a rank dies, the others
// do not stop. Each survivor abandons the step it was in and the broken process group, and they
// meet in the job's store as the next *generation*: the first to arrive closes it once no one new
// has come for a settle time (or every rank of the full job is back), new ranks follow the old
// ones, and a new process group forms. A replacement rank that its launcher started meets them
// the same way, in the generation it finds open, and receives the parameters, the optimiser state
// and the position in the data from the new rank 0 before its first step. Rank 0 (which writes
// the run directory) must survive; without it a generation fails and the job takes the restart
// path. Keys under the trainer's store: heal/gen (the last closed generation), heal/<g>/count,
// heal/<g>/member/<i> (an arrival's old rank, -1 for a replacement), heal/<g>/closed ("n i0 i1 ..."
// arrivals in new-rank order, or "error: ...") and heal/<g>/group/... (the new group's own keys);
// heal/replacing counts replacements started and not yet arrived, so that a generation waits
// for them rather than close without them and meet them a generation later.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "collectives/process_group.h"
#include "collectives/store/store.h"

namespace cohort::trainer {

struct Generation {
  int number = 0;
  std::shared_ptr<collectives::ProcessGroup> group;
  int rank = 0, world = 1;
  std::vector<int> old_ranks;  // per new rank: its old rank, -1 for a replacement
};

class Healer {
 public:
  // How long a generation waits for replacements its launchers announced (heal/replacing, which
  // a launcher adds to when it starts one and the replacement takes back when it arrives).
  static constexpr std::chrono::seconds kReplacementWait{20};

  // `full_world`: the job's size when whole (a generation that has all of them closes at once).
  Healer(std::shared_ptr<collectives::Store> store, std::string backend,
         collectives::ProcessGroupOptions options, int full_world);

  // Meets the others in the next generation. `old_rank`: this rank's rank in the generation it
  // leaves (-1: a replacement, which joins the generation now open). `settle`: how long the closer
  // waits for more arrivals. Throws DistributedError when the generation cannot go on (rank 0 is
  // not in it) and TimeoutError when it does not close within the options' timeout.
  Generation regroup(int old_rank, std::chrono::milliseconds settle);
  // Whether a rank waits to join the next generation (a replacement): one store look.
  bool joiner_waiting();
  int generation() const { return generation_; }

 private:
  std::string key(int g, const std::string& what) const;

  std::shared_ptr<collectives::Store> store_;
  std::string backend_;
  collectives::ProcessGroupOptions options_;
  int full_world_;
  int generation_ = 0;  // the last generation this rank was in (0: the job's first group)
};

}  // namespace cohort::trainer
