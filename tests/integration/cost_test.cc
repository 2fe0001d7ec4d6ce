// Cost records: every run that started leaves one, failed and interrupted
// runs too; --budget stops launching; `stagekit cost` sums them up.
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
using testing::ReadFile;
using testing::RunCli;
using testing::Show;
using testing::TempDir;
using testing::WriteFile;

std::vector<Json> Records(const fs::path& log) {
  std::vector<Json> out;
  std::string text = ReadFile(log);
  for (size_t pos = 0; pos < text.size();) {
    size_t nl = text.find('\n', pos);
    out.push_back(Json::parse(text.substr(pos, nl - pos)));
    pos = nl == std::string::npos ? text.size() : nl + 1;
  }
  return out;
}

fs::path SleepPipeline(const TempDir& dir, int stages, double seconds) {
  std::string yaml = "name: naps\nlibraries: [" STAGEKIT_TEST_STAGES "]\nstages:\n";
  for (int i = 0; i < stages; ++i) {
    yaml += "  - {name: s" + std::to_string(i) +
            ", stage: test.pid_sleep, kwargs: {seconds: " + std::to_string(seconds) +
            ", pid_dir: " + dir.path().string() + "}}\n";
  }
  WriteFile(dir / "p.yaml", yaml);
  return dir / "p.yaml";
}

TEST(CostRecords, ASuccessfulRunLeavesACompleteRecord) {
  TempDir dir;
  CommandResult r = RunCli({"run", STAGEKIT_SOURCE_DIR "/examples/trivial/pipeline.yaml", "-q",
                            "--out", (dir / "o").string(), "--cost-log",
                            (dir / "cost.jsonl").string(), "--price", "local=0.36"});
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  auto records = Records(dir / "cost.jsonl");
  ASSERT_EQ(records.size(), 1u);
  const Json& rec = records[0];
  EXPECT_EQ(rec["command"], "run");
  EXPECT_EQ(rec["pipeline"], "trivial");
  EXPECT_EQ(rec["executor"], "inprocess");
  EXPECT_EQ(rec["outcome"], "succeeded");
  EXPECT_EQ(rec["exit_code"], 0);
  EXPECT_EQ(rec["node_types"], Json({{"local", 1}}));
  EXPECT_LE(rec["start"].get<std::string>(), rec["end"].get<std::string>());
  EXPECT_GT(rec["wall_s"].get<double>(), 0);
  EXPECT_NEAR(rec["estimated_usd"].get<double>(), rec["wall_s"].get<double>() * 0.36 / 3600, 1e-9);
}

void InterruptLeavesARecord(int sig) {
  TempDir dir;
  fs::path p = SleepPipeline(dir, 2, 120);
  util::SpawnSpec spec;
  spec.argv = {STAGEKIT_CLI,
               "run",
               p.string(),
               "-e",
               "subprocess",
               "-j",
               "2",
               "--out",
               (dir / "o").string(),
               "--cost-log",
               (dir / "cost.jsonl").string()};
  spec.log_path = (dir / "cli.log").string();
  auto cli = util::Spawn(spec);
  ASSERT_TRUE(cli.ok());
  bool started = false;
  for (int i = 0; i < 600 && !started; ++i) {
    for (const std::string& f : ListFiles(dir.path()))
      started = started || f.find(".pid") != std::string::npos;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_TRUE(started) << ReadFile(dir / "cli.log");
  ::kill(cli->pid, sig);
  EXPECT_EQ(util::WaitFor(cli->pid, std::chrono::minutes(1)), 130) << ReadFile(dir / "cli.log");
  auto records = Records(dir / "cost.jsonl");
  ASSERT_EQ(records.size(), 1u) << ReadFile(dir / "cli.log");
  EXPECT_EQ(records[0]["outcome"], "interrupted");
  EXPECT_EQ(records[0]["exit_code"], 130);
  EXPECT_EQ(records[0]["executor"], "subprocess");
  EXPECT_TRUE(fs::exists(dir / "o" / ".stagekit-run.json")) << ReadFile(dir / "cli.log");
  for (const char* key : {"start", "end", "wall_s", "node_types", "node_seconds", "pipeline"}) {
    EXPECT_TRUE(records[0].contains(key)) << key << ": " << records[0].dump();
  }
}

// SIGTERM while the cache hashes an input (a sparse 1 TiB file: minutes of
// hashing) stops the run at once: exit 130, the stage never starts, and the
// record says so. It used to be ignored until the hash was done.
TEST(CostRecords, SigtermWhileAnInputIsHashedStopsAtOnce) {
  TempDir dir;
  { std::ofstream(dir / "big.bin").put('x'); }
  fs::resize_file(dir / "big.bin", std::uintmax_t{1} << 40);
  WriteFile(dir / "p.yaml", "name: hash\nlibraries: [" STAGEKIT_TEST_STAGES
                            "]\nstages:\n  - {name: s, stage: test.pid_sleep, inputs: {big: " +
                                (dir / "big.bin").string() +
                                "}, kwargs: {seconds: 0, pid_dir: " + dir.path().string() + "}}\n");
  util::SpawnSpec spec;
  spec.argv = {STAGEKIT_CLI,         "run",        (dir / "p.yaml").string(),    "--out",
               (dir / "o").string(), "--cost-log", (dir / "cost.jsonl").string()};
  spec.log_path = (dir / "cli.log").string();
  auto cli = util::Spawn(spec);
  ASSERT_TRUE(cli.ok());
  // Wait until it has the file open: hashing has begun.
  bool hashing = false;
  for (int i = 0; i < 600 && !hashing; ++i) {
    std::error_code ec;
    for (const auto& fd : fs::directory_iterator("/proc/" + std::to_string(cli->pid) + "/fd", ec)) {
      hashing = hashing || fs::read_symlink(fd.path(), ec) == dir / "big.bin";
    }
    if (!hashing) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_TRUE(hashing) << ReadFile(dir / "cli.log");
  ::kill(cli->pid, SIGTERM);
  const int code = util::WaitFor(cli->pid, std::chrono::minutes(1));
  if (code != 130) ::kill(cli->pid, SIGKILL);
  ASSERT_EQ(code, 130) << ReadFile(dir / "cli.log");
  auto records = Records(dir / "cost.jsonl");
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0]["outcome"], "interrupted");
  Json run = Json::parse(ReadFile(dir / "o" / ".stagekit-run.json"));
  EXPECT_EQ(run["stages"][0]["state"], "not_run") << run.dump();
  EXPECT_FALSE(fs::exists(dir / "o" / "s.out"));
}

// SIGTERM while a 100,000-stage pipeline is parsed (seconds) ends the program
// at once, as nothing is started or written yet; it used to wait for the parse.
TEST(Interrupts, SigtermWhileAPipelineLoadsEndsAtOnce) {
  TempDir dir;
  std::string yaml = "name: big\nlibraries: [" STAGEKIT_TEST_STAGES "]\nstages:\n";
  for (int i = 0; i < 100000; ++i) {
    yaml += "  - {name: s" + std::to_string(i) + ", stage: test.pid_sleep, output: o/s" +
            std::to_string(i) + ", kwargs: {seconds: 0, text: t" + std::to_string(i) + "}}\n";
  }
  WriteFile(dir / "p.yaml", yaml);
  util::SpawnSpec spec;
  spec.argv = {STAGEKIT_CLI,
               "cache",
               "explain",
               (dir / "p.yaml").string(),
               "s1",
               "--cache-dir",
               (dir / "cache").string()};
  spec.log_path = (dir / "cli.log").string();
  auto cli = util::Spawn(spec);
  ASSERT_TRUE(cli.ok());
  // Once it has read most of the file (rchar in /proc/PID/io), it is parsing.
  bool parsing = false;
  for (int i = 0; i < 3000 && !parsing; ++i) {
    std::ifstream io("/proc/" + std::to_string(cli->pid) + "/io");
    std::string key;
    std::uint64_t value = 0;
    while (io >> key >> value) {
      if (key == "rchar:" && value > yaml.size() / 2) parsing = true;
    }
    if (!parsing) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  ASSERT_TRUE(parsing) << ReadFile(dir / "cli.log");
  ::kill(cli->pid, SIGTERM);
  const int code = util::WaitFor(cli->pid, std::chrono::minutes(1));
  if (code == -1) ::kill(cli->pid, SIGKILL);
  EXPECT_EQ(code, 130);
  // The handler's own line, not the message of a run that noticed the flag later.
  EXPECT_EQ(ReadFile(dir / "cli.log"), "stagekit: interrupted\n");
}

TEST(CostRecords, SigintLeavesACompleteRecord) { InterruptLeavesARecord(SIGINT); }
TEST(CostRecords, SigtermLeavesACompleteRecord) { InterruptLeavesARecord(SIGTERM); }
// A closed terminal or SSH session: handled as SIGTERM, not a silent death.
TEST(CostRecords, SighupLeavesACompleteRecord) { InterruptLeavesARecord(SIGHUP); }

TEST(CostRecords, BudgetStopsLaunchingAndSaysSo) {
  TempDir dir;
  fs::path p = SleepPipeline(dir, 6, 0.5);
  // $3600/h is $1/s: after about two half-second stages, one more would pass $1.2.
  CommandResult r =
      RunCli({"run", p.string(), "-j", "1", "--out", (dir / "o").string(), "--cost-log",
              (dir / "cost.jsonl").string(), "--price", "local=3600", "--budget", "1.2"});
  EXPECT_EQ(r.exit_code, 16) << Show(r);
  EXPECT_NE(r.err.find("the budget of $1.20 would be exceeded"), std::string::npos) << Show(r);
  EXPECT_NE(r.err.find("not run"), std::string::npos) << Show(r);
  auto records = Records(dir / "cost.jsonl");
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0]["outcome"], "budget_exceeded");
  EXPECT_EQ(records[0]["budget_usd"], 1.2);
  // The run's summary names the outcome as the cost record does.
  Json summary = Json::parse(ReadFile(dir / "o" / ".stagekit-run.json"));
  EXPECT_EQ(summary["error"]["code"], "budget_exceeded") << summary.dump();
  int ran = 0;
  for (const std::string& f : ListFiles(dir / "o"))
    ran += f.rfind("s", 0) == 0 && f.find(".out") != std::string::npos;
  EXPECT_GE(ran, 1);
  EXPECT_LT(ran, 6);

  CommandResult unpriced = RunCli({"run", p.string(), "--out", (dir / "o2").string(), "--cost-log",
                                   (dir / "cost.jsonl").string(), "--budget", "1"});
  EXPECT_EQ(unpriced.exit_code, 2) << Show(unpriced);
  EXPECT_NE(unpriced.err.find("--price local=USD_PER_HOUR"), std::string::npos) << Show(unpriced);
}

TEST(CostRecords, CostSumsTheLog) {
  TempDir dir;
  WriteFile(
      dir / "cost.jsonl",
      "{\"command\":\"run\",\"pipeline\":\"a\",\"start\":\"2026-10-01T00:00:00Z\",\"wall_s\":3600,"
      "\"outcome\":\"succeeded\",\"estimated_usd\":1.5,\"node_seconds\":{\"g4dn.2xlarge\":7200}}\n"
      "not json\n"
      "{\"command\":\"run\",\"pipeline\":\"b\",\"start\":\"2026-11-02T00:00:00Z\",\"wall_s\":1800,"
      "\"outcome\":\"interrupted\",\"estimated_usd\":0.25,\"node_seconds\":{\"g4dn.2xlarge\":1800}}"
      "\n");
  CommandResult all = RunCli({"cost", "--cost-log", (dir / "cost.jsonl").string(), "--json"});
  ASSERT_EQ(all.exit_code, 0) << Show(all);
  Json s = Json::parse(all.out);
  EXPECT_EQ(s["runs"], 2);
  EXPECT_DOUBLE_EQ(s["estimated_usd"].get<double>(), 1.75);
  EXPECT_DOUBLE_EQ(s["by_node_type"]["g4dn.2xlarge"]["node_hours"].get<double>(), 2.5);
  EXPECT_EQ(s["unreadable_lines"], 1);
  CommandResult since =
      RunCli({"cost", "--cost-log", (dir / "cost.jsonl").string(), "--since", "2026-11-01"});
  ASSERT_EQ(since.exit_code, 0) << Show(since);
  EXPECT_NE(since.out.find("1 run since 2026-11-01"), std::string::npos) << Show(since);
  EXPECT_NE(since.out.find("$0.25"), std::string::npos) << Show(since);
  EXPECT_EQ(RunCli({"cost", "--since", "yesterday", "--cost-log", (dir / "x").string()}).exit_code,
            2);
}

}  // namespace
}  // namespace stagekit
