// Fault injection for publishing: the driver of a subprocess run is killed
// (SIGKILL, SIGHUP or SIGTERM) at random points, run after run in one output
// folder, each run of a new generation of the pipeline (so every output says
// which run made it). Checked: a killed run exits 130 or dies by SIGKILL,
// never anything else; every run that completes has only its own
// generation's outputs, also after the stages of the killed runs before it
// are gone (a killed run's stage never replaces a later run's output); the
// last run, run to completion, gives the bytes of a clean run and leaves no
// temporary files. STAGEKIT_KILL_RUNS sets the number of killed runs (30 in
// CI; the closing notes quote longer campaigns) and STAGEKIT_KILL_SEED the seed.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "unit/test_util.h"
#include "util/process.h"

namespace stagekit {
namespace {

namespace fs = std::filesystem;
using testing::ListFiles;
using testing::ReadFile;
using testing::RunCli;
using testing::Show;
using testing::TempDir;
using testing::Temporaries;
using testing::WriteFile;

const std::vector<std::string> kOutputs = {"m0.txt", "m1.txt", "m2.txt", "m3.txt",
                                           "m4.txt", "m5.txt", "m6.txt", "m7.txt",
                                           "r0.txt", "r1.txt", "all.txt"};

// Eight maps that sleep and write ~300 KB saying "g<generation> m<i>", two
// concatenations of four, one of the two.
void WritePipeline(const TempDir& dir, int generation) {
  std::string yaml = "name: kills\nlibraries: [" STAGEKIT_TEST_STAGES "]\nstages:\n";
  for (int i = 0; i < 8; ++i) {
    yaml += "  - {name: m" + std::to_string(i) + ", stage: test.pid_sleep, output: m" +
            std::to_string(i) + ".txt, kwargs: {seconds: " + std::to_string(0.05 * (1 + i % 4)) +
            ", pad: 300000, text: \"g" + std::to_string(generation) + " m" + std::to_string(i) +
            "\\n\", pid_dir: " + (dir / "pids").string() + "}}\n";
  }
  for (int r = 0; r < 2; ++r) {
    yaml += "  - {name: r" + std::to_string(r) + ", stage: test.concat, output: r" +
            std::to_string(r) + ".txt, inputs: {";
    for (int k = 0; k < 4; ++k) {
      yaml += std::string(k ? ", " : "") + "in" + std::to_string(k) + ": {from: m" +
              std::to_string(4 * r + k) + "}";
    }
    yaml += "}}\n";
  }
  yaml +=
      "  - {name: all, stage: test.concat, output: all.txt, inputs: {in0: {from: r0}, in1: "
      "{from: r1}}}\n";
  WriteFile(dir / "p.yaml", yaml);
}

// The generations an output's lines name ("g12 m3"); concatenation headers
// ("in0 300000") name none.
std::set<int> Generations(const std::string& text) {
  std::set<int> found;
  std::size_t start = 0;
  while (start < text.size()) {
    std::size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    if (text[start] == 'g') found.insert(std::atoi(text.c_str() + start + 1));
    start = end + 1;
  }
  return found;
}

// Waits until every stage process that recorded its pid is gone.
bool StagesGone(const fs::path& pids) {
  for (int i = 0; i < 500; ++i) {
    bool all = true;
    for (const std::string& f : ListFiles(pids)) {
      const std::size_t dot = f.find('.');
      if (!testing::ProcessGone(std::atol(f.c_str() + dot + 1))) {
        all = false;
      } else {
        std::error_code ec;
        fs::remove(pids / f, ec);
      }
    }
    if (all) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

TEST(KillCampaign, KilledRunsNeverCorruptOrReplaceLaterOutputs) {
  const char* env = std::getenv("STAGEKIT_KILL_RUNS");
  const int runs = env != nullptr ? std::atoi(env) : 30;
  TempDir dir;
  fs::create_directories(dir / "pids");
  const fs::path work = dir / "work";
  const char* seed = std::getenv("STAGEKIT_KILL_SEED");  // another campaign: another seed
  std::mt19937 rng(seed != nullptr ? static_cast<unsigned>(std::atol(seed)) : 20261203u);
  const int signals[] = {SIGKILL, SIGHUP, SIGTERM};
  // How long a whole run takes here: the signals come within 90% of it.
  WritePipeline(dir, 0);
  const auto t0 = std::chrono::steady_clock::now();
  auto timing = RunCli({"run", (dir / "p.yaml").string(), "--out", (dir / "timing").string(), "-e",
                        "subprocess", "-j", "3", "-q", "--no-cache"});
  ASSERT_EQ(timing.exit_code, 0) << Show(timing);
  const auto run_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
          .count();
  int completed = 0, killed = 0, generation = 0;
  for (int i = 1; i <= runs; ++i) {
    // Mostly a new generation; sometimes the last one again with --resume,
    // so that outputs are restored from the cache while others are killed.
    const bool again = generation > 0 && rng() % 3 == 0;
    if (!again) WritePipeline(dir, ++generation);
    util::SpawnSpec spec;
    spec.argv = {STAGEKIT_CLI, "run",         (dir / "p.yaml").string(),
                 "--out",      work.string(), "-e",
                 "subprocess", "-j",          "3",
                 "-q",         "--cache-dir", (dir / "cache").string()};
    if (again) spec.argv.push_back("--resume");
    spec.log_path = (dir / ("run" + std::to_string(i) + ".log")).string();
    auto cli = util::Spawn(spec);
    ASSERT_TRUE(cli.ok());
    std::this_thread::sleep_for(std::chrono::milliseconds(rng() % (run_ms * 9 / 10 + 1)));
    const int sig = signals[rng() % 3];
    ::kill(cli->pid, sig);
    const int code = util::WaitFor(cli->pid, std::chrono::minutes(1));
    const std::string log = ReadFile(spec.log_path);
    // 128 + the signal: it came before the handlers were installed (the
    // first milliseconds), so the default action ended the program.
    ASSERT_TRUE(code == 0 || code == 130 || code == 128 + sig)
        << "run " << i << " (signal " << sig << ") exited " << code << "\n"
        << log;
    if (code != 0) {
      ++killed;
      continue;  // the next run starts at once, beside whatever it left running
    }
    ++completed;
    // A completed run's outputs are its own, and stay so once the stages of
    // the runs killed before it have ended.
    ASSERT_TRUE(StagesGone(dir / "pids"));
    for (const std::string& out : kOutputs) {
      EXPECT_EQ(Generations(ReadFile(work / out)), std::set<int>{generation})
          << out << " after run " << i;
    }
  }
  // The last run, to completion, once every stage of the killed ones ended.
  ASSERT_TRUE(StagesGone(dir / "pids"));
  WritePipeline(dir, ++generation);
  auto final_run =
      RunCli({"run", (dir / "p.yaml").string(), "--out", work.string(), "-e", "subprocess", "-j",
              "3", "-q", "--resume", "--cache-dir", (dir / "cache").string()});
  ASSERT_EQ(final_run.exit_code, 0) << Show(final_run);
  auto clean = RunCli({"run", (dir / "p.yaml").string(), "--out", (dir / "clean").string(), "-e",
                       "subprocess", "-q", "--no-cache"});
  ASSERT_EQ(clean.exit_code, 0) << Show(clean);
  ASSERT_TRUE(StagesGone(dir / "pids"));
  for (const std::string& out : kOutputs) {
    EXPECT_EQ(ReadFile(work / out), ReadFile(dir / "clean" / out)) << out;
  }
  EXPECT_EQ(Temporaries(work), std::vector<std::string>{});
  std::cout << "kill campaign: " << runs << " runs of ~" << run_ms << " ms, " << killed
            << " killed, " << completed << " completed before their signal\n";
  EXPECT_GE(killed, runs / 3) << "the signals came too late to test anything";
}

}  // namespace
}  // namespace stagekit
