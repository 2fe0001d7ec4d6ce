// `stagekit audit` on the real examples: each buggy example stage is flagged by
// the perturbation that exposes its bug (and only by it), each good twin and
// the word count pass, and the audit leaves nothing behind.
#include <gtest/gtest.h>

#include <algorithm>

#include "stagekit/stage.h"
#include "unit/test_util.h"

namespace stagekit {
namespace {

namespace fs = std::filesystem;
using testing::CommandResult;
using testing::ListFiles;
using testing::ReadFile;
using testing::RunCommand;
using testing::Show;
using testing::TempDir;

const std::string kAuditPipeline = STAGEKIT_SOURCE_DIR "/examples/audit/pipeline.yaml";

// Runs the CLI with TMPDIR pointing into `dir`, so that the test can see what
// the audit leaves there.
CommandResult Audit(const TempDir& dir, std::vector<std::string> args) {
  fs::create_directories(dir / "tmp");
  fs::create_directories(dir / "cwd");
  std::vector<std::string> argv = {"/usr/bin/env", "TMPDIR=" + (dir / "tmp").string(), STAGEKIT_CLI,
                                   "audit"};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunCommand(argv, "", dir / "cwd");
}

std::vector<std::string> Blamed(const Json& stage) {
  return stage["blamed"].get<std::vector<std::string>>();
}

bool Has(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

TEST(Audit, FlagsEachBuggyExampleWithItsPerturbationAndPassesTheGoodOnes) {
  TempDir dir;
  const std::vector<std::string> before = ListFiles(STAGEKIT_SOURCE_DIR "/examples/audit");
  CommandResult r = Audit(dir, {kAuditPipeline, "--json", "-q"});
  ASSERT_EQ(r.exit_code, 17) << Show(r);
  Json report = Json::parse(r.out);
  EXPECT_EQ(report["status"], "nondeterministic");
  // One line that says what failed.
  EXPECT_NE(r.err.find("stagekit: error: audit: 7 of 15 audited stages changed their output"),
            std::string::npos)
      << r.err;

  std::map<std::string, bool> available;
  for (const Json& p : report["perturbations"]) available[p["name"]] = p["available"];
  const bool aslr_off = report["baseline"]["aslr_off"];
  std::map<std::string, Json> stages;
  for (const Json& s : report["stages"]) stages[s["name"]] = s;
  ASSERT_EQ(stages.size(), 15u);

  for (const char* good : {"clock_good", "pointer_good", "threads_good", "path_good", "env_good",
                           "localtime_good", "counter_good", "summary"}) {
    EXPECT_TRUE(stages[good]["deterministic"].get<bool>()) << good << ": " << stages[good].dump(2);
  }

  // Deterministic but wrong under one condition: blamed for exactly that one.
  const std::map<std::string, std::string> expected = {{"threads_bad", "threads"},
                                                       {"path_bad", "paths"},
                                                       {"env_bad", "env"},
                                                       {"localtime_bad", "tz-locale"},
                                                       {"counter_bad", "order"}};
  for (const auto& [name, perturbation] : expected) {
    EXPECT_EQ(Blamed(stages[name]), std::vector<std::string>{perturbation})
        << name << ": " << stages[name].dump(2);
  }

  // The clock: moved by libfaketime, or said to be unchecked with how to fix it.
  const Json& clock = stages["clock_bad"];
  if (available["clock"]) {
    // The date can also change between two runs at midnight.
    EXPECT_TRUE(Has(Blamed(clock), "clock") || Has(Blamed(clock), "repeat")) << clock.dump(2);
    if (Has(Blamed(clock), "clock")) {
      EXPECT_EQ(clock["findings"]["clock"]["offset"], 15) << clock.dump(2);
      EXPECT_NE(
          clock["findings"]["clock"]["excerpt_baseline"].get<std::string>().find("2011-06-15"),
          std::string::npos);
    }
  } else {
    EXPECT_EQ(clock["findings"]["clock"]["result"], "unavailable");
    EXPECT_NE(clock["findings"]["clock"]["error"].get<std::string>().find("libfaketime"),
              std::string::npos);
  }

  // Pointers: the memory layout, and with ASLR off never `repeat`; the runs
  // that cannot keep the layout are put down to it.
  const Json& pointer = stages["pointer_bad"];
  if (aslr_off && available["memory-layout"]) {
    EXPECT_EQ(Blamed(pointer), std::vector<std::string>{"memory-layout"}) << pointer.dump(2);
    EXPECT_EQ(pointer["findings"]["executor"]["masked_by"], "memory-layout") << pointer.dump(2);
  } else {
    // With addresses random in every run (e.g. where a seccomp profile refuses
    // setarch -R), the baseline itself moves: then it is unstable under repeat.
    EXPECT_FALSE(stages["pointer_bad"]["deterministic"].get<bool>()) << pointer.dump(2);
  }
  EXPECT_EQ(stages["threads_bad"]["findings"]["repeat"]["result"], "same");

  // Where: the first differing byte of the path example is in its header,
  // and the excerpts show both paths.
  const Json& paths = stages["path_bad"]["findings"]["paths"];
  EXPECT_GE(paths["offset"].get<int>(), 10);
  EXPECT_NE(paths["excerpt_baseline"].get<std::string>().find("# source: "), std::string::npos)
      << paths.dump(2);
  EXPECT_NE(paths["size_baseline"], paths["size_perturbed"]);

  // Nothing written into the pipeline folder, the working directory or TMPDIR.
  EXPECT_EQ(ListFiles(STAGEKIT_SOURCE_DIR "/examples/audit"), before);
  EXPECT_TRUE(fs::is_empty(dir / "cwd"));
  EXPECT_TRUE(fs::is_empty(dir / "tmp"));
}

TEST(Audit, TheWordCountExamplePasses) {
  TempDir dir;
  CommandResult r =
      Audit(dir, {STAGEKIT_SOURCE_DIR "/examples/wordcount/pipeline.yaml", "-q", "-j", "2"});
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  EXPECT_NE(r.out.find("all 17 audited stages produced identical outputs under every perturbation"),
            std::string::npos)
      << r.out;
  EXPECT_TRUE(fs::is_empty(dir / "tmp"));
}

TEST(Audit, KeepsTheDifferingOutputsOfTheChosenStages) {
  TempDir dir;
  const fs::path keep = dir / "kept";
  CommandResult r = Audit(dir, {kAuditPipeline, "-q", "--stage", "path_bad", "--stage", "path_good",
                                "--keep", keep.string()});
  ASSERT_EQ(r.exit_code, 17) << Show(r);
  EXPECT_NE(r.out.find("path_bad   DIFFERS    paths"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("path_good  ok"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("differs at byte"), std::string::npos) << r.out;
  EXPECT_EQ(ListFiles(keep), (std::vector<std::string>{"audit.json", "path_bad/baseline.txt",
                                                       "path_bad/paths.txt"}));
  const std::string baseline = ReadFile(keep / "path_bad/baseline.txt");
  const std::string moved = ReadFile(keep / "path_bad/paths.txt");
  EXPECT_NE(baseline.find("examples/audit/values.txt"), std::string::npos) << baseline;
  EXPECT_EQ(moved.find("examples/audit/values.txt"), std::string::npos) << moved;
  Json saved = Json::parse(ReadFile(keep / "audit.json"));
  EXPECT_EQ(saved["stages"].size(), 2u);
  EXPECT_EQ(saved["kept"], keep.string());

  // A --keep directory that holds something is refused before anything runs.
  CommandResult again =
      Audit(dir, {kAuditPipeline, "-q", "--stage", "path_bad", "--keep", keep.string()});
  EXPECT_EQ(again.exit_code, 2) << Show(again);
  EXPECT_NE(again.err.find("name a new one"), std::string::npos) << again.err;
}

TEST(Audit, CleanStagesExitZeroAndUnknownStagesAreUsageErrors) {
  TempDir dir;
  CommandResult ok =
      Audit(dir, {kAuditPipeline, "-q", "--stage", "summary", "--stage", "counter_good"});
  EXPECT_EQ(ok.exit_code, 0) << Show(ok);
  EXPECT_NE(ok.out.find("all 2 audited stages produced identical outputs"), std::string::npos)
      << ok.out;

  CommandResult bad = Audit(dir, {kAuditPipeline, "-q", "--stage", "no_such_stage"});
  EXPECT_EQ(bad.exit_code, 2) << Show(bad);
  EXPECT_NE(bad.err.find("'no_such_stage' is not a stage of pipeline 'audit'"), std::string::npos)
      << bad.err;
}

}  // namespace
}  // namespace stagekit
