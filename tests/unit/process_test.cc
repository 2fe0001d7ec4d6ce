#include <gtest/gtest.h>
#include <signal.h>

#include "util/process.h"

namespace stagekit::util {
namespace {

ChildResult Sh(const std::string& script, std::optional<std::chrono::milliseconds> timeout = {},
               std::chrono::milliseconds grace = std::chrono::milliseconds(2000)) {
  ChildSpec spec;
  spec.argv = {"/bin/sh", "-c", script};
  spec.timeout = timeout;
  spec.kill_grace = grace;
  return RunChild(spec);
}

TEST(RunChildTest, FeedsStdinAndCollectsBothStreams) {
  ChildSpec spec;
  spec.argv = {"/bin/sh", "-c", "cat; echo oops >&2"};
  spec.stdin_data = std::string(3 << 20, 'x');  // larger than any pipe buffer
  spec.stdout_keep = 4 << 20;
  ChildResult r = RunChild(spec);
  ASSERT_TRUE(r.spawn_status.ok());
  EXPECT_TRUE(r.exited);
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.out.size(), 3u << 20);
  EXPECT_EQ(r.err, "oops\n");
}

TEST(RunChildTest, KeepsOnlyTheTailOfLongOutput) {
  ChildSpec spec;
  spec.argv = {"/bin/sh", "-c", "i=0; while [ $i -lt 2000 ]; do echo line$i; i=$((i+1)); done"};
  spec.stdout_keep = 100;
  ChildResult r = RunChild(spec);
  EXPECT_LE(r.out.size(), 100u);
  EXPECT_NE(r.out.find("line1999\n"), std::string::npos);
}

TEST(RunChildTest, ReportsExitCodesAndSignals) {
  ChildResult r = Sh("exit 3");
  EXPECT_TRUE(r.exited);
  EXPECT_EQ(r.exit_code, 3);
  r = Sh("kill -SEGV $$");
  EXPECT_FALSE(r.exited);
  EXPECT_EQ(r.term_signal, SIGSEGV);
  EXPECT_EQ(SignalName(SIGKILL), "SIGKILL");
}

TEST(RunChildTest, TimeoutSendsSigtermFirst) {
  ChildResult r = Sh("sleep 30", std::chrono::milliseconds(200));
  EXPECT_TRUE(r.timed_out);
  EXPECT_EQ(r.term_signal, SIGTERM);
}

TEST(RunChildTest, TimeoutEscalatesToSigkillWhenSigtermIsIgnored) {
  ChildResult r =
      Sh("trap '' TERM; sleep 30", std::chrono::milliseconds(200), std::chrono::milliseconds(300));
  EXPECT_TRUE(r.timed_out);
  EXPECT_EQ(r.term_signal, SIGKILL);
}

TEST(RunChildTest, StopReachesGrandchildren) {
  // The shell waits on a grandchild that holds stdout; stopping the process
  // group must end both, or this would hang until the grandchild's sleep ends.
  auto start = std::chrono::steady_clock::now();
  ChildResult r = Sh("sleep 30 & wait", std::chrono::milliseconds(200));
  EXPECT_TRUE(r.timed_out);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
}

TEST(RunChildTest, MissingProgramIsASpawnError) {
  ChildSpec spec;
  spec.argv = {"/nonexistent/program"};
  ChildResult r = RunChild(spec);
  EXPECT_FALSE(r.spawn_status.ok());
  EXPECT_NE(r.spawn_status.message().find("No such file or directory"), std::string::npos);
}

TEST(TailTest, IndentsAndCutsOnLineBoundaries) {
  EXPECT_EQ(Tail("", 10), "    (empty)");
  EXPECT_EQ(Tail("a\nb\n", 100), "    a\n    b");
  EXPECT_EQ(Tail("first line\nsecond\n", 8), "    ...\n    second");
}

}  // namespace
}  // namespace stagekit::util
