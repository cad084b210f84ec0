// The mpi backend, run under mpirun by CTest (-np 5): every collective in groups of 1, 2, 3 and 5
// ranks whose group ranks differ from their MPI_COMM_WORLD ranks, asynchronous work and
// point-to-point, and a rank that never enters a collective, named by the others. The Store is
// found through MPI itself, as `cohort` does under mpirun.
#include <gtest/gtest.h>

#include <cstdlib>
#include <thread>

#include "collectives/mpi/mpi_process_group.h"
#include "core/util/error.h"
#include "unit/collective_checks.h"

namespace cohort::collectives {
namespace {

using namespace std::chrono_literals;

int env_int(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::atoi(v) : -1;
}

struct World {
  int rank = env_int("OMPI_COMM_WORLD_RANK");
  int size = env_int("OMPI_COMM_WORLD_SIZE");
};

std::shared_ptr<Store> world_store() {
  static std::shared_ptr<Store> store = mpi::bootstrap_store(120s);
  return store;
}

class MpiProcessGroup : public ::testing::Test {
 protected:
  void SetUp() override {
    if (w_.rank < 0 || w_.size < 1) GTEST_SKIP() << "not started by mpirun (CTest starts it so)";
  }
  World w_;
};

TEST_F(MpiProcessGroup, EveryCollectiveInGroupsOfEverySize) {
  for (int size : {1, 2, 3, 5}) {
    if (size > w_.size) continue;
    // The last `size` world ranks, in reverse order: group rank g is world rank size-1-g+offset.
    const int first = w_.size - size;
    if (w_.rank < first) continue;
    const int rank = w_.size - 1 - w_.rank;
    auto pg = create_process_group(
        "mpi", std::make_shared<PrefixStore>("every" + std::to_string(size), world_store()), rank,
        size);
    EXPECT_EQ(pg->backend_name(), "mpi");
    every_collective(*pg, {0, 1, 7, (1 << 20) + 3});
  }
}

TEST_F(MpiProcessGroup, WorkIsAsynchronousAndPointToPointWorks) {
  auto pg = create_process_group("mpi", std::make_shared<PrefixStore>("async", world_store()),
                                 w_.rank, w_.size);
  std::vector<Tensor> ts;
  std::vector<std::shared_ptr<Work>> works;
  for (int k = 0; k < 8; ++k) {
    ts.push_back(core::full({100000 + k}, pg->rank() + k));
    works.push_back(pg->allreduce(ts.back()));
  }
  const int n = pg->size();
  for (int k = 0; k < 8; ++k) {
    works[k]->wait(120s);
    EXPECT_TRUE(works[k]->is_completed());
    EXPECT_EQ(ts[k].data_ptr<float>()[99999], n * (n - 1) / 2 + n * k);
  }
  if (n < 2) return;
  // A ring of sends: each rank sends its rank to the next and receives from the previous.
  Tensor out = core::full({10}, pg->rank());
  Tensor in = core::zeros({10});
  auto s = pg->send(out, (pg->rank() + 1) % n, 7);
  auto r = pg->recv(in, (pg->rank() + n - 1) % n, 7);
  r->wait(120s);
  s->wait(120s);
  EXPECT_EQ(in.data_ptr<float>()[9], (pg->rank() + n - 1) % n);
  EXPECT_THROW(pg->send(out, pg->rank(), 0), InvalidArgument);
  Tensor cuda_like = core::zeros({3});
  EXPECT_THROW(pg->broadcast(cuda_like, {n}), InvalidArgument);
}

// Last, because it leaves a group broken: world rank 1 stays out of the second all-reduce until
// the others have timed out and named it, then joins so that their abandoned requests complete
// and MPI can finalise.
TEST_F(MpiProcessGroup, ARankThatNeverArrivesIsNamed) {
  if (w_.size < 3) GTEST_SKIP() << "needs 3 ranks";
  auto store = std::make_shared<PrefixStore>("late", world_store());
  ProcessGroupOptions o;
  o.timeout = 3s;
  auto pg = create_process_group("mpi", store, w_.rank, w_.size, o);
  Tensor t = core::ones({1000});
  pg->allreduce(t)->wait();
  if (w_.rank == 1) {
    store->wait({"saw_timeout"}, 120s);
    pg->allreduce(t, {ReduceOp::kSum, 120s})->wait();
    return;
  }
  try {
    pg->allreduce(t)->wait();
    ADD_FAILURE() << "expected a timeout";
  } catch (const Error& e) {
    // The first rank to time out throws TimeoutError; the others name its failure too.
    const std::string msg = e.what();
    EXPECT_NE(msg.find("allreduce #1 timed out"), std::string::npos) << msg;
    EXPECT_NE(msg.find("ranks that never entered it: 1; rank 1 last entered allreduce #0"),
              std::string::npos)
        << msg;
  }
  if (store->add("timeouts", 1) == w_.size - 1) store->set("saw_timeout", "1");
  // The group is broken now; later work says why instead of hanging.
  EXPECT_THROW(pg->barrier()->wait(), DistributedError);
}

}  // namespace
}  // namespace cohort::collectives
