// Publishing an output belongs to the run that owns it: a stage of a killed
// or timed-out run never puts its output in place, a later run's output is
// never replaced by an earlier run's, and what a killed run left behind is
// removed by the next one. Run for real through the CLI.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <fstream>
#include <thread>

#include "stagekit/stage.h"
#include "unit/test_util.h"
#include "util/process.h"

namespace stagekit {
namespace {

namespace fs = std::filesystem;
using testing::CommandResult;
using testing::ListFiles;
using testing::ProcessGone;
using testing::ReadFile;
using testing::RunCli;
using testing::Show;
using testing::TempDir;
using testing::Temporaries;
using testing::WriteFile;

// One stage that records its pid, sleeps, then writes `text` to result.txt.
fs::path SleepWrite(const TempDir& dir, const std::string& text, double seconds,
                    const std::string& extra = "") {
  fs::create_directories(dir / "pids");
  WriteFile(dir / "p.yaml",
            "name: pub\nlibraries: [" STAGEKIT_TEST_STAGES
            "]\nstages:\n  - {name: s, stage: test.pid_sleep, output: result.txt" +
                extra + ", kwargs: {seconds: " + std::to_string(seconds) + ", text: " + text +
                ", ignore_term: true, pid_dir: " + (dir / "pids").string() + "}}\n");
  return dir / "p.yaml";
}

// The pid the stage recorded, or 0 when none yet.
long StagePid(const TempDir& dir) {
  for (const std::string& f : ListFiles(dir / "pids")) {
    const std::size_t dot = f.find('.');
    if (dot != std::string::npos) return std::stol(f.substr(dot + 1));
  }
  return 0;
}

TEST(Publishing, AKilledRunsStageNeverReplacesALaterRunsOutput) {
  TempDir dir;
  // Run 1: its stage sleeps 3 s through SIGTERM; its driver is killed with
  // SIGKILL (nothing can be cleaned up) while the stage sleeps.
  fs::path p = SleepWrite(dir, "old", 3);
  util::SpawnSpec spec;
  spec.argv = {STAGEKIT_CLI, "run",   p.string(),           "-e", "subprocess",
               "--no-cache", "--out", (dir / "o").string(), "-q"};
  spec.log_path = (dir / "cli.log").string();
  auto cli = util::Spawn(spec);
  ASSERT_TRUE(cli.ok());
  long stage_pid = 0;
  for (int i = 0; i < 600 && stage_pid == 0; ++i) {
    stage_pid = StagePid(dir);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_NE(stage_pid, 0) << ReadFile(dir / "cli.log");
  ::kill(cli->pid, SIGKILL);
  util::WaitFor(cli->pid, std::chrono::seconds(30));
  // The orphaned stage notices that its run is gone and stops.
  bool gone = false;
  for (int i = 0; i < 100 && !gone; ++i) {
    gone = ProcessGone(stage_pid);
    if (!gone) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(gone) << "the stage of the killed run (pid " << stage_pid << ") still runs";
  if (!gone) ::kill(static_cast<pid_t>(stage_pid), SIGKILL);

  // Run 2 in the same folder finishes first.
  fs::remove_all(dir / "pids");
  p = SleepWrite(dir, "new", 0);
  CommandResult r = RunCli(
      {"run", p.string(), "-e", "subprocess", "--no-cache", "--out", (dir / "o").string(), "-q"});
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  EXPECT_EQ(ReadFile(dir / "o" / "result.txt"), "new");
  // Past the moment run 1's stage would have finished: still run 2's output,
  // and run 2 removed what the killed run left.
  std::this_thread::sleep_for(std::chrono::milliseconds(3500));
  EXPECT_EQ(ReadFile(dir / "o" / "result.txt"), "new");
  EXPECT_EQ(Temporaries(dir / "o"), std::vector<std::string>{});
}

TEST(Publishing, AStageThatTimesOutNeverPublishesEvenIfItFinishesInItsGrace) {
  TempDir dir;
  // Times out at 0.5 s, sleeps through SIGTERM and finishes at 1 s, within
  // the 2 s grace before SIGKILL: the run fails with exit 8, and its output
  // must not appear (nor replace an earlier one).
  WriteFile(dir / "o" / "result.txt", "earlier good output");
  fs::path p = SleepWrite(dir, "late", 1, ", timeout: 500ms");
  CommandResult r = RunCli(
      {"run", p.string(), "-e", "subprocess", "--no-cache", "--out", (dir / "o").string(), "-q"});
  EXPECT_EQ(r.exit_code, 8) << Show(r);
  EXPECT_EQ(ReadFile(dir / "o" / "result.txt"), "earlier good output");
  EXPECT_EQ(Temporaries(dir / "o"), std::vector<std::string>{});
}

TEST(Publishing, AnOutputThatIsAnInputFileIsRefusedBeforeAnythingRuns) {
  TempDir dir;
  WriteFile(dir / "data" / "in.txt", "the user's own data\n");
  WriteFile(dir / "p.yaml", "name: clash\nlibraries: [" STAGEKIT_TEST_STAGES
                            "]\nstages:\n  - {name: c, stage: test.copy, inputs: {in: "
                            "data/in.txt}, output: in.txt}\n");
  for (const char* executor : {"inprocess", "subprocess"}) {
    CommandResult r = RunCli({"run", (dir / "p.yaml").string(), "-e", executor, "--no-cache",
                              "--out", (dir / "data").string(), "-q"});
    EXPECT_EQ(r.exit_code, 3) << Show(r);
    EXPECT_NE(r.err.find("is the file of input 'in' of stage 'c'"), std::string::npos) << Show(r);
    EXPECT_EQ(ReadFile(dir / "data" / "in.txt"), "the user's own data\n");
  }
}

TEST(Publishing, AnOutputPlaceHoldingSomethingElseIsNeverReplaced) {
  TempDir dir;
  WriteFile(dir / "in.txt", "x\n");
  WriteFile(dir / "elsewhere.txt", "not yours\n");
  WriteFile(dir / "p.yaml", "name: nonreg\nlibraries: [" STAGEKIT_TEST_STAGES
                            "]\nstages:\n  - {name: c, stage: test.copy, inputs: {in: in.txt}, "
                            "output: out.txt}\n");
  fs::create_directories(dir / "o");
  fs::create_symlink(dir / "elsewhere.txt", dir / "o" / "out.txt");
  for (const char* executor : {"inprocess", "subprocess"}) {
    CommandResult r = RunCli({"run", (dir / "p.yaml").string(), "-e", executor, "--no-cache",
                              "--out", (dir / "o").string(), "-q"});
    EXPECT_EQ(r.exit_code, 7) << Show(r);
    EXPECT_NE(r.err.find("exists and is a symbolic link"), std::string::npos) << Show(r);
    EXPECT_TRUE(fs::is_symlink(dir / "o" / "out.txt"));
    EXPECT_EQ(ReadFile(dir / "elsewhere.txt"), "not yours\n");
  }
}

// A stage that runs out of space says only "cannot write the output": the
// run tells that the file system is full and exits 7 (output not writable),
// not 1, under both local executors. A 1 MiB tmpfs in a private mount
// namespace (unshare -m, root as in CI), gone when the command ends.
TEST(DiskFull, AStageOnAFullFileSystemExitsSeven) {
  TempDir dir;
  fs::create_directories(dir / "small");
  WriteFile(dir / "p.yaml", "name: full\nlibraries: [" STAGEKIT_TEST_STAGES
                            "]\nstages:\n  - {name: big, stage: test.fill, output: big.bin, "
                            "kwargs: {bytes: 4194304}}\n");
  for (const char* executor : {"inprocess", "subprocess"}) {
    const std::string script = "mount -t tmpfs -o size=1m tmpfs '" + (dir / "small").string() +
                               "' && exec '" STAGEKIT_CLI "' run '" + (dir / "p.yaml").string() +
                               "' --out '" + (dir / "small" / "o").string() + "' -e " + executor +
                               " --no-cache";
    CommandResult r = testing::RunCommand({"unshare", "-m", "sh", "-c", script});
    EXPECT_EQ(r.exit_code, 7) << executor << "\n" << Show(r);
    EXPECT_NE(r.err.find("is on a full file system"), std::string::npos) << executor << r.err;
  }
}

}  // namespace
}  // namespace stagekit
