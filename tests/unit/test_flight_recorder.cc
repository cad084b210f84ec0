// The flight recorder: the ring of recent operations, its dumps, and `cohort diagnose`'s reading
// of several ranks' dumps (written here as the ranks would, or as an attacker might).
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "collectives/flight_recorder.h"
#include "core/util/error.h"
#include "test_util.h"

namespace cohort::collectives {
namespace {

namespace fs = std::filesystem;
using State = FlightEntry::State;

TEST(FlightRecorder, KeepsTheLastOperationsWithTheirStates) {
  FlightRecorder r(4);
  const int g = r.next_group();
  EXPECT_EQ(r.next_group(), g + 1);
  std::vector<uint64_t> ids;
  for (int i = 0; i < 6; ++i) ids.push_back(r.queued(g, true, "allreduce", 100 + i, -1));
  r.started(ids[4], 7);
  r.ended(ids[4], true);
  r.started(ids[5], 8);
  r.ended(ids[5], false);
  // The two oldest were overwritten; recording them now changes nothing.
  r.started(ids[0], 1);
  const auto s = r.snapshot();
  ASSERT_EQ(s.size(), 4u);
  EXPECT_EQ(s.front().id, ids[2]);
  EXPECT_EQ(s[0].state, State::kQueued);
  EXPECT_EQ(s[2].seq, 7u);
  EXPECT_EQ(s[2].state, State::kCompleted);
  EXPECT_EQ(s[3].state, State::kFailed);
  EXPECT_GE(s[3].ended_us, s[3].started_us);
  EXPECT_GE(s[3].started_us, s[3].queued_us);
  EXPECT_EQ(s[3].bytes, 105);
  // Point-to-point operations have no collective number.
  const uint64_t send = r.queued(g, false, "send", 8, 1);
  r.started(send, 99);
  EXPECT_EQ(r.snapshot().back().seq, 0u);
  EXPECT_EQ(r.snapshot().back().peer, 1);
  FlightRecorder off(0);
  EXPECT_EQ(off.queued(0, true, "allreduce", 1, -1), 0u);
  EXPECT_TRUE(off.snapshot().empty());
}

TEST(FlightRecorder, TagsNameWhoIssuedAnOperationOnThisThread) {
  FlightRecorder r(8);
  const int g = r.next_group();
  {
    const FlightTag bucket("ddp bucket", 2);
    r.queued(g, true, "allreduce", 4, -1);
    {
      const FlightTag inner("stop vote");
      r.queued(g, true, "allreduce", 4, -1);
    }
    r.queued(g, true, "allreduce", 4, -1);
  }
  r.queued(g, true, "allreduce", 4, -1);
  const auto s = r.snapshot();
  ASSERT_EQ(s.size(), 4u);
  EXPECT_EQ(s[0].tag, "ddp bucket 2");
  EXPECT_EQ(s[1].tag, "stop vote");
  EXPECT_EQ(s[2].tag, "ddp bucket 2");
  EXPECT_EQ(s[3].tag, "");
}

class FlightDumps : public test::TempDirTest {
 protected:
  struct Op {
    uint64_t seq;
    const char* op;
    int64_t bytes;
    const char* state;
    int64_t started_us;
  };
  // A rank's dump as the recorder writes it; times on the wall clock via epoch_wall_us.
  void write(int rank, const std::string& reason, const std::vector<Op>& ops,
             int64_t epoch_wall_us = 1'000'000'000, int64_t dumped_us = 5'000'000) {
    nlohmann::json j{{"rank", rank},
                     {"pid", 100 + rank},
                     {"reason", reason},
                     {"dumped_us", dumped_us},
                     {"epoch_wall_us", epoch_wall_us}};
    j["entries"] = nlohmann::json::array();
    uint64_t id = 1;
    for (const Op& o : ops) {
      const bool done = std::string(o.state) == "completed" || std::string(o.state) == "failed";
      j["entries"].push_back({{"id", id++},
                              {"group", 0},
                              {"seq", o.seq},
                              {"collective", true},
                              {"op", o.op},
                              {"bytes", o.bytes},
                              {"peer", -1},
                              {"queued_us", o.started_us},
                              {"started_us", o.started_us},
                              {"ended_us", done ? o.started_us + 1000 : 0},
                              {"state", o.state}});
    }
    std::ofstream(dir_ / ("rank_" + std::to_string(rank) + ".json")) << j.dump();
  }
};

TEST_F(FlightDumps, NamesTheRankThatNeverEnteredAndHowLongTheOthersWaited) {
  write(0, "allreduce #5 timed out after 300.0 s on rank 0",
        {{4, "allreduce", 1024, "completed", 1'000'000},
         {5, "allreduce", 6 << 20, "failed", 2'000'000}});
  write(2, "allreduce #5 timed out after 300.0 s on rank 2",
        {{4, "allreduce", 1024, "completed", 1'000'000},
         {5, "allreduce", 6 << 20, "started", 2'000'000}});
  write(1, "rank 0 (pid 100 on n0) has exited", {{4, "allreduce", 1024, "completed", 1'000'000}});
  const std::string d = diagnose_flight_dumps(dir_.string());
  EXPECT_NE(d.find("rank 1 never entered allreduce #5 of group 0 (6.0 MB)"), std::string::npos)
      << d;
  EXPECT_NE(d.find("ranks 0 and 2 waited 3.0 s in it"), std::string::npos) << d;
  EXPECT_NE(d.find("Rank 1's last completed collective before it was allreduce #4."),
            std::string::npos)
      << d;
}

TEST_F(FlightDumps, ARankThatArrivedAfterTheOthersGaveUpIsLate) {
  // Rank 1 entered #3 (and even completed it: rank 0 had sent its part) 4 s after rank 0 gave up.
  write(0, "allreduce #3 timed out after 2.0 s on rank 0",
        {{2, "allreduce", 4, "completed", 1'000'000}, {3, "allreduce", 4, "failed", 2'000'000}});
  write(1, "rank 0 has exited",
        {{2, "allreduce", 4, "completed", 1'000'000},
         {3, "allreduce", 4, "completed", 7'000'000},
         {4, "allreduce", 4, "failed", 7'100'000}});
  const std::string d = diagnose_flight_dumps(dir_.string());
  EXPECT_NE(d.find("rank 1 never entered allreduce #3 of group 0 (4 bytes) before the others gave "
                   "up (rank 1 reached it only after); rank 0 waited"),
            std::string::npos)
      << d;
  EXPECT_NE(d.find("Rank 1's last completed collective before it was allreduce #2."),
            std::string::npos)
      << d;
}

TEST_F(FlightDumps, QueuedCollectivesHaveNoNumberToDisagreeOn) {
  // After the failure rank 0 queued another collective that never started (seq 0 for now).
  write(0, "allreduce #1 timed out",
        {{0, "broadcast", 8, "completed", 10},
         {1, "allreduce", 8, "failed", 20},
         {0, "allreduce", 8, "queued", 30}});
  write(1, "x", {{0, "broadcast", 8, "completed", 10}});
  const std::string d = diagnose_flight_dumps(dir_.string());
  EXPECT_NE(d.find("rank 1 never entered allreduce #1 of group 0"), std::string::npos) << d;
}

TEST_F(FlightDumps, RanksThatDisagreeOnAnOperationAreNamed) {
  write(0, "x", {{77, "allreduce", 4 << 20, "started", 10}});
  write(1, "x", {{77, "allreduce", 4 << 20, "started", 10}});
  write(2, "x", {{77, "allreduce", 4 << 20, "started", 10}});
  write(3, "x", {{77, "broadcast", 1 << 20, "started", 10}});
  EXPECT_EQ(diagnose_flight_dumps(dir_.string()),
            "ranks disagree on collective #77 of group 0: allreduce 4.0 MB on ranks 0-2, "
            "broadcast 1.0 MB on rank 3.");
}

TEST_F(FlightDumps, MissingDumpsAreSaidAndARunDirectoryIsFollowed) {
  fs::create_directories(dir_ / "run" / "flight_recorder");
  const fs::path keep = dir_;
  dir_ = dir_ / "run" / "flight_recorder";
  write(0, "x", {{1, "barrier", 0, "completed", 10}});
  write(3, "x", {{1, "barrier", 0, "completed", 10}});
  dir_ = keep;
  const std::string d = diagnose_flight_dumps((dir_ / "run").string());
  EXPECT_NE(d.find("every rank completed every collective it recorded"), std::string::npos) << d;
  EXPECT_NE(d.find("Ranks 1 and 2 wrote no dump"), std::string::npos) << d;
  EXPECT_THROW(diagnose_flight_dumps((dir_ / "nothing").string()), ConfigError);
}

TEST_F(FlightDumps, HostileDumpsAreOneSentenceNamingTheFile) {
  const char* bad[] = {
      "not json",
      R"({"rank": -1, "reason": "", "dumped_us": 0, "epoch_wall_us": 0, "entries": []})",
      R"({"rank": 0, "reason": "", "dumped_us": 0, "epoch_wall_us": 0, "entries": {}})",
      R"({"rank": 0, "reason": "", "dumped_us": 0, "epoch_wall_us": 0, "entries": [{"id": 1}]})",
      R"({"rank": 0, "reason": "", "dumped_us": 0, "epoch_wall_us": 99999999999999999999,
          "entries": []})",
      R"({"rank": 0, "reason": "", "dumped_us": 0, "epoch_wall_us": 0, "entries": [{"id": 1,
          "group": 0, "seq": 1, "collective": true, "op": "allreduce", "bytes": 4, "peer": -1,
          "queued_us": 0, "started_us": 0, "ended_us": 0, "state": "exploded"}]})"};
  for (const char* text : bad) {
    std::ofstream(dir_ / "rank_0.json") << text;
    try {
      diagnose_flight_dumps(dir_.string());
      ADD_FAILURE() << "accepted: " << text;
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("rank_0.json is malformed"), std::string::npos)
          << e.what();
    }
  }
}

TEST_F(FlightDumps, ARanksOldDumpIsRemovedAndAnErrorBecomesTheReason) {
  write(1, "an earlier run's", {{1, "barrier", 0, "completed", 10}});
  write(2, "another rank's", {{1, "barrier", 0, "completed", 10}});
  FlightRecorder r(8);
  if (std::getenv("COHORT_FLIGHT_RECORDER_DIR"))
    GTEST_SKIP() << "COHORT_FLIGHT_RECORDER_DIR is set";
  r.set_dump_dir(dir_.string(), 1);
  EXPECT_FALSE(fs::exists(dir_ / "rank_1.json"));
  EXPECT_TRUE(fs::exists(dir_ / "rank_2.json"));
  r.queued(r.next_group(), true, "barrier", 0, -1);
  ASSERT_TRUE(r.dump(std::make_exception_ptr(TimeoutError("barrier #0 timed out"))));
  EXPECT_NE(test::read_text(dir_ / "rank_1.json").find("\"reason\": \"barrier #0 timed out\""),
            std::string::npos);
}

TEST_F(FlightDumps, TheRecordersOwnDumpReadsBack) {
  FlightRecorder r(8);
  const FlightTag tag("fsdp gather of unit", 3);
  const uint64_t id = r.queued(r.next_group(), true, "allgather", 64, -1, "bfloat16");
  r.started(id, 0);
  ASSERT_TRUE(r.dump_to((dir_ / "rank_0.json").string(), 0, "allgather #0 timed out"));
  const std::string d = diagnose_flight_dumps(dir_.string());
  EXPECT_NE(d.find("every rank with a dump entered allgather #0 of group 0 (64 bytes of bfloat16, "
                   "fsdp gather of unit 3)"),
            std::string::npos)
      << d;
}

}  // namespace
}  // namespace cohort::collectives
