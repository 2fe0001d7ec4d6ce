// The stagekit command line tool, run for real: examples, the parity gate,
// and every kind of bad input with its message and exit code.
#include <gtest/gtest.h>

#include "stagekit/stage.h"
#include "unit/test_util.h"

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

const std::string kExamples = STAGEKIT_SOURCE_DIR "/examples";

// Exit codes documented in `stagekit --help` and docs/exit-codes.md.
enum Exit {
  kOk = 0,
  kStage = 1,
  kUsage = 2,
  kPipeline = 3,
  kUnknown = 4,
  kInput = 5,
  kRequest = 6,
  kOutput = 7,
  kTimeout = 8,
  kLibrary = 9,
  kParity = 10
};

// The last line stagekit prints on stderr (the one-line error).
std::string ErrorLine(const CommandResult& r) {
  std::string err = r.err;
  while (!err.empty() && err.back() == '\n') err.pop_back();
  std::size_t at = err.rfind("stagekit: error: ");
  return at == std::string::npos ? "" : err.substr(at, err.find('\n', at) - at);
}

class CliTest : public ::testing::Test {
 protected:
  // A pipeline in the temp dir that uses the test stages.
  fs::path Pipeline(const std::string& stages, const std::string& extra = "") {
    WriteFile(dir_ / "in.txt", "payload\n");
    std::string yaml =
        "name: t\nlibraries: [" STAGEKIT_TEST_STAGES "]\n" + extra + "stages:\n" + stages;
    WriteFile(dir_ / "pipeline.yaml", yaml);
    return dir_ / "pipeline.yaml";
  }
  CommandResult Run(const std::vector<std::string>& args) { return RunCli(args, dir_.path()); }
  TempDir dir_;
};

TEST_F(CliTest, HelpListsCommandsAndExitCodes) {
  CommandResult r = Run({"--help"});
  EXPECT_EQ(r.exit_code, kOk) << Show(r);
  for (const char* s : {"run", "parity", "list", "stage", "Exit codes", "10 parity mismatch"}) {
    EXPECT_NE(r.out.find(s), std::string::npos) << s << "\n" << Show(r);
  }
  EXPECT_EQ(r.out.find("ray-reaper"), std::string::npos) << "internal subcommand shown in --help";
  EXPECT_EQ(Run({}).exit_code, kUsage);
  EXPECT_EQ(Run({"frobnicate"}).exit_code, kUsage);
  EXPECT_EQ(Run({"run"}).exit_code, kUsage);
}

TEST_F(CliTest, AnEmptyExecutorListOrAnImpossibleDateIsAUsageError) {
  fs::path p = Pipeline("  - {name: a, stage: test.noop}\n");
  CommandResult r = Run({"parity", p.string(), "--executors", ""});
  EXPECT_EQ(r.exit_code, kUsage) << Show(r);
  EXPECT_NE(ErrorLine(r).find("--executors is empty"), std::string::npos) << Show(r);
  for (const char* date : {"2026-13-45", "2026-02-30", "2026-1x-01"}) {
    r = Run({"cost", "--since", date, "--cost-log", (dir_ / "none.jsonl").string()});
    EXPECT_EQ(r.exit_code, kUsage) << date << "\n" << Show(r);
  }
  EXPECT_EQ(Run({"cost", "--since", "2026-02-28", "--cost-log", (dir_ / "none.jsonl").string()})
                .exit_code,
            kOk);
  for (const char* price : {"local=-1", "local=nan", "local=inf"}) {
    r = Run(
        {"run", p.string(), "-q", "--no-cache", "--price", price, "--out", (dir_ / "o").string()});
    EXPECT_EQ(r.exit_code, kUsage) << price << "\n" << Show(r);
  }
  r = Run({"run", "/dev/zero"});
  EXPECT_EQ(r.exit_code, kInput) << Show(r);
  EXPECT_NE(ErrorLine(r).find("is not a regular file"), std::string::npos) << Show(r);
}

TEST_F(CliTest, ExamplesPassTheParityGate) {
  for (const char* example : {"trivial", "wordcount", "montecarlo", "fanout", "dynamic"}) {
    fs::path pipeline = kExamples + "/" + example + "/pipeline.yaml";
    // Ray joins this gate in tests/ray (it needs a cluster).
    CommandResult r = Run({"parity", pipeline.string(), "--executors", "inprocess,subprocess",
                           "--out", (dir_ / example).string()});
    EXPECT_EQ(r.exit_code, kOk) << example << "\n" << Show(r);
    EXPECT_NE(r.out.find("identical across inprocess, subprocess"), std::string::npos) << Show(r);
    EXPECT_EQ(r.out.find("DIFFERS"), std::string::npos) << Show(r);
  }
  // The reductions did real work.
  std::string top = ReadFile(dir_ / "wordcount" / "subprocess" / "top_words.tsv");
  EXPECT_EQ(top.substr(top.find('\t'), 5), "\tthe\n") << top.substr(0, 100);
  Json pi = Json::parse(ReadFile(dir_ / "montecarlo" / "inprocess" / "pi.json"));
  EXPECT_EQ(pi["samples"], 32000000);
  double estimate = std::stod(pi["pi_estimate"].get<std::string>());
  EXPECT_NEAR(estimate, 3.14159, 0.002);
  // Fan-out: one count per corpus file and six sweep samples, collected.
  EXPECT_EQ(ListFiles(dir_ / "fanout" / "subprocess" / "counts"),
            (std::vector<std::string>{"aesop.tsv", "hare.tsv", "lion.tsv"}));
  Json fanout_pi = Json::parse(ReadFile(dir_ / "fanout" / "subprocess" / "pi.json"));
  EXPECT_EQ(fanout_pi["samples"], 210000);
  // Dynamic: the chunks' counts add up to the count of the whole text.
  EXPECT_GT(ListFiles(dir_ / "dynamic" / "subprocess" / "counts").size(), 3u);
  WriteFile(dir_ / "whole.yaml",
            "name: whole\nlibraries: [stagekit_examples]\nstages:\n"
            "  - {name: m, stage: wordcount.map, inputs: {text: /usr/share/games/fortunes/art}, "
            "kwargs: {min_length: 2}}\n"
            "  - {name: r, stage: wordcount.reduce, inputs: {p: {from: m}}, kwargs: {top: 20}}\n");
  CommandResult whole = Run({"run", "whole.yaml", "-q", "--no-cache", "-o", "whole"});
  ASSERT_EQ(whole.exit_code, kOk) << Show(whole);
  EXPECT_EQ(ReadFile(dir_ / "dynamic" / "subprocess" / "top_words.tsv"),
            ReadFile(dir_ / "whole" / "r.out"));
}

// Dynamic fan-out through the command line: the instances come from a
// stage's item list; --resume reruns exactly the items that changed and
// what collects them; explain and --dry-run say what they can.
TEST_F(CliTest, AForeachOverAStagesItemsResumesItemByItem) {
  const std::string cache = (dir_ / "cache").string();
  fs::path p = Pipeline(
      "  - {name: split, stage: test.copy, inputs: {in: items.jsonl}}\n"
      "  - {name: work, stage: test.describe, foreach: {from: split}, kwargs: {n: \"{n}\"}}\n"
      "  - {name: all, stage: test.concat, inputs: {parts: {from: \"work[*]\"}}}\n");
  WriteFile(dir_ / "items.jsonl",
            "{\"key\": \"a\", \"n\": 1}\n{\"key\": \"b\", \"n\": 2}\n"
            "{\"key\": \"c\", \"n\": 3}\n");
  auto ran = [&](const std::vector<std::string>& extra) {
    std::vector<std::string> args = {"run", p.string(), "-o", "out", "--cache-dir", cache};
    args.insert(args.end(), extra.begin(), extra.end());
    CommandResult r = Run(args);
    EXPECT_EQ(r.exit_code, kOk) << Show(r);
    std::set<std::string> names;
    const Json record = Json::parse(ReadFile(dir_ / "out/.stagekit-run.json"));
    for (const Json& st : record["stages"]) {
      if (!st["cached"].get<bool>()) names.insert(st["name"].get<std::string>());
    }
    return names;
  };
  using Names = std::set<std::string>;
  EXPECT_EQ(ran({"--report", "r.html", "--trace", "t.json"}),
            (Names{"split", "work[a]", "work[b]", "work[c]", "all"}));
  EXPECT_NE(ReadFile(dir_ / "out/all.out").find("parts[c]"), std::string::npos);
  // The report and the trace show the instances, not the template.
  for (const char* file : {"r.html", "t.json"}) {
    const std::string text = ReadFile(dir_ / file);
    EXPECT_NE(text.find("work[b]"), std::string::npos) << file;
    EXPECT_EQ(text.find("work[*]"), std::string::npos) << file;
  }

  CommandResult r = Run({"run", p.string(), "--dry-run"});
  ASSERT_EQ(r.exit_code, kOk) << Show(r);
  EXPECT_NE(r.out.find("work[*]  test.describe  (one instance per item of 'split', made at run "
                       "time)"),
            std::string::npos)
      << r.out;
  EXPECT_FALSE(fs::exists(dir_ / "stagekit-out")) << "--dry-run wrote nothing";

  // One item changed, one added: the others are cache hits.
  WriteFile(dir_ / "items.jsonl",
            "{\"key\": \"a\", \"n\": 1}\n{\"key\": \"b\", \"n\": 20}\n"
            "{\"key\": \"c\", \"n\": 3}\n{\"key\": \"d\", \"n\": 4}\n");
  r = Run({"cache", "explain", p.string(), "--cache-dir", cache});
  EXPECT_NE(r.out.find("work[*]  will run because its instances are made from the items of "
                       "'split', which will run first"),
            std::string::npos)
      << r.out;
  EXPECT_EQ(ran({"--resume"}), (Names{"split", "work[b]", "work[d]", "all"}));
  r = Run({"cache", "explain", p.string(), "--cache-dir", cache});
  EXPECT_NE(r.out.find("work[d]  cached"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("6 of 6 stages cached"), std::string::npos) << r.out;

  // A malformed list: exit 3 naming the producer's output and the line;
  // the earlier outputs are left as they were.
  const std::string before = ReadFile(dir_ / "out/all.out");
  WriteFile(dir_ / "items.jsonl", "{\"key\": \"a\", \"n\": 1}\n{oops\n");
  r = Run({"run", p.string(), "-o", "out", "--cache-dir", cache});
  EXPECT_EQ(r.exit_code, kPipeline) << Show(r);
  EXPECT_NE(ErrorLine(r).find((dir_ / "out/split.out").string() + ":2: the line is not JSON"),
            std::string::npos)
      << Show(r);
  EXPECT_EQ(ReadFile(dir_ / "out/all.out"), before);
}

TEST_F(CliTest, RunWritesOutputsAndASummary) {
  fs::path p = Pipeline(
      "  - {name: a, stage: test.copy, inputs: {in: in.txt}, output: a.txt}\n"
      "  - {name: b, stage: test.copy, inputs: {in: {from: a}}, output: sub/b.txt}\n");
  CommandResult r = Run({"run", p.string(), "--executor", "subprocess", "--json", "--out", "o"});
  ASSERT_EQ(r.exit_code, kOk) << Show(r);
  EXPECT_EQ(ReadFile(dir_ / "o" / "sub" / "b.txt"), "payload\n");
  Json summary = Json::parse(r.out);
  EXPECT_EQ(summary["status"], "succeeded");
  EXPECT_EQ(summary["executor"], "subprocess");
  ASSERT_EQ(summary["stages"].size(), 2u);
  EXPECT_EQ(summary["stages"][1]["stats"]["bytes_out"], 8);
  EXPECT_EQ(summary["stages"][1]["stats"]["executor"], "subprocess");
  EXPECT_EQ(Json::parse(ReadFile(dir_ / "o" / ".stagekit-run.json"))["status"], "succeeded");
  EXPECT_EQ(ListFiles(dir_ / "o"),
            (std::vector<std::string>{".stagekit-run.json", "a.txt", "sub/b.txt"}));
}

TEST_F(CliTest, ParityCatchesANondeterministicStage) {
  fs::path p = Pipeline("  - {name: racy, stage: test.per_process, output: racy.txt}\n");
  CommandResult r = Run({"parity", p.string(), "--executors", "inprocess,subprocess"});
  EXPECT_EQ(r.exit_code, kParity) << Show(r);
  EXPECT_NE(r.out.find("DIFFERS"), std::string::npos) << Show(r);
  std::string e = ErrorLine(r);
  EXPECT_NE(
      e.find("stage 'racy' output 'racy.txt' differs between inprocess and subprocess at byte "),
      std::string::npos)
      << Show(r);
  // "same prefix, then pid " is 22 bytes; the pids differ somewhere after it.
  std::size_t at = e.find("at byte ") + 8;
  EXPECT_GE(std::stoll(e.substr(at)), 22) << e;
}

TEST_F(CliTest, ListShowsRegisteredStages) {
  CommandResult r = Run({"list", "--stages", STAGEKIT_TEST_STAGES});
  EXPECT_EQ(r.exit_code, kOk) << Show(r);
  EXPECT_NE(r.out.find("test.copy"), std::string::npos);
  EXPECT_NE(r.out.find("libstagekit_test_stages.so"), std::string::npos);
  r = Run({"list", "--stages", STAGEKIT_WHOLE_ARCHIVE_STAGES, "--json"});
  EXPECT_NE(r.out.find("test.static_only"), std::string::npos) << Show(r);
  r = Run({"list", (kExamples + "/wordcount/pipeline.yaml")});
  EXPECT_NE(r.out.find("wordcount.reduce"), std::string::npos) << Show(r);
}

// ---- bad input: one test each, message and exit code -----------------------

TEST_F(CliTest, UnknownStageSuggestsCloseNames) {
  fs::path p = Pipeline("  - {name: a, stage: test.cpy, inputs: {in: in.txt}}\n");
  CommandResult r = Run({"run", p.string()});
  EXPECT_EQ(r.exit_code, kUnknown) << Show(r);
  EXPECT_NE(ErrorLine(r).find("stage 'a' uses unknown stage 'test.cpy'; did you mean 'test.copy'"),
            std::string::npos)
      << Show(r);
  EXPECT_FALSE(fs::exists(dir_ / "stagekit-out"));  // nothing ran, nothing written
}

TEST_F(CliTest, MissingInputIsNamed) {
  fs::path p = Pipeline("  - {name: a, stage: test.copy, inputs: {in: absent.txt}}\n");
  for (const char* executor : {"inprocess", "subprocess"}) {
    CommandResult r = Run({"run", p.string(), "-e", executor});
    EXPECT_EQ(r.exit_code, kInput) << Show(r);
    EXPECT_NE(ErrorLine(r).find("input 'in' of stage 'a' (test.copy) ('" +
                                (dir_ / "absent.txt").string() +
                                "') cannot be opened: No such file or directory"),
              std::string::npos)
        << Show(r);
  }
}

// Both runners refuse a request nested past the limit with a protocol line
// and exit 6 (they died of a stack overflow before).
TEST_F(CliTest, ADeeplyNestedRequestIsRefused) {
  const std::string deep = std::string(200000, '[') + std::string(200000, ']');
  const std::string request =
      R"({"stage": "test.noop", "output": "/tmp/x", "kwargs": {"x": )" + deep + "}}";
  for (const std::string& runner :
       {std::string(STAGEKIT_CLI), STAGEKIT_CLI + std::string("-stage")}) {
    CommandResult r = testing::RunCommand(
        {runner, "stage", "test.noop", "--stages", STAGEKIT_TEST_STAGES}, request);
    EXPECT_EQ(r.exit_code, kRequest) << runner << Show(r);
    EXPECT_NE(r.out.find("nested more than 256 levels"), std::string::npos) << runner << Show(r);
  }
}

TEST_F(CliTest, MalformedRequestJson) {
  CommandResult r =
      RunCli({"stage", "test.copy", "--stages", STAGEKIT_TEST_STAGES}, {}, "{\"stage\": ");
  EXPECT_EQ(r.exit_code, kRequest) << Show(r);
  EXPECT_NE(ErrorLine(r).find("request is not valid JSON"), std::string::npos) << Show(r);
  Json last = Json::parse(r.out);  // the protocol line
  EXPECT_EQ(last["error"]["code"], "bad_request");
  r = RunCli({"stage", "test.copy", "--stages", STAGEKIT_TEST_STAGES}, {},
             R"({"stage": "test.noop", "output": "/tmp/x"})");
  EXPECT_EQ(r.exit_code, kRequest) << Show(r);
  EXPECT_NE(ErrorLine(r).find(
                "the request names stage 'test.noop' but the command line says 'test.copy'"),
            std::string::npos)
      << Show(r);
}

TEST_F(CliTest, StageRunnerSpeaksTheProtocol) {
  WriteFile(dir_ / "in.txt", "abc");
  std::string req = CanonicalJson({{"stage", "test.copy"},
                                   {"inputs", {{"in", (dir_ / "in.txt").string()}}},
                                   {"output", (dir_ / "out.txt").string()}});
  CommandResult r = RunCli({"stage", "test.copy", "--stages", STAGEKIT_TEST_STAGES}, {}, req);
  ASSERT_EQ(r.exit_code, kOk) << Show(r);
  Json stats = Json::parse(r.out);
  EXPECT_EQ(stats["executor"], "subprocess");
  EXPECT_EQ(stats["bytes_out"], 3);
  EXPECT_EQ(ReadFile(dir_ / "out.txt"), "abc");
}

TEST_F(CliTest, MalformedPipelineFilePointsAtLineAndColumn) {
  WriteFile(dir_ / "bad.yaml", "stages:\n  - name: a\n    stage: x\n   oops: [\n");
  CommandResult r = Run({"run", "bad.yaml"});
  EXPECT_EQ(r.exit_code, kPipeline) << Show(r);
  EXPECT_NE(ErrorLine(r).find("bad.yaml:"), std::string::npos) << Show(r);
  EXPECT_NE(ErrorLine(r).find("YAML syntax error"), std::string::npos) << Show(r);
  CommandResult missing = Run({"run", "nope.yaml"});
  EXPECT_EQ(missing.exit_code, kInput) << Show(missing);
  EXPECT_NE(ErrorLine(missing).find("cannot read pipeline file 'nope.yaml'"), std::string::npos);
}

TEST_F(CliTest, DependencyCycle) {
  fs::path p = Pipeline(
      "  - {name: a, stage: test.copy, inputs: {in: {from: b}}}\n"
      "  - {name: b, stage: test.copy, inputs: {in: {from: a}}}\n");
  CommandResult r = Run({"run", p.string()});
  EXPECT_EQ(r.exit_code, kPipeline) << Show(r);
  EXPECT_NE(ErrorLine(r).find("dependency cycle: "), std::string::npos) << Show(r);
}

TEST_F(CliTest, DuplicateStageNames) {
  fs::path p = Pipeline("  - {name: a, stage: test.noop}\n  - {name: a, stage: test.noop}\n");
  CommandResult r = Run({"run", p.string()});
  EXPECT_EQ(r.exit_code, kPipeline) << Show(r);
  EXPECT_NE(ErrorLine(r).find("duplicate stage name 'a' (first declared on line 4)"),
            std::string::npos)
      << Show(r);
  CommandResult lib = Run({"list", "--stages", STAGEKIT_DUP_STAGES});
  EXPECT_EQ(lib.exit_code, kLibrary) << Show(lib);
  EXPECT_NE(ErrorLine(lib).find("stage 'dup.same_name' is registered twice"), std::string::npos)
      << Show(lib);
}

TEST_F(CliTest, MissingLibrary) {
  WriteFile(dir_ / "p.yaml", "libraries: [no_such_lib]\nstages:\n  - {name: a, stage: s}\n");
  CommandResult r = Run({"run", "p.yaml"});
  EXPECT_EQ(r.exit_code, kLibrary) << Show(r);
  EXPECT_NE(ErrorLine(r).find("stage library 'no_such_lib' (libno_such_lib.so) not found in:"),
            std::string::npos)
      << Show(r);
  EXPECT_NE(ErrorLine(r).find("--stage-path"), std::string::npos);
}

TEST_F(CliTest, ThrowingStageKeepsTheEarlierGoodOutput) {
  fs::path good =
      Pipeline("  - {name: a, stage: test.copy, inputs: {in: in.txt}, output: a.txt}\n");
  ASSERT_EQ(Run({"run", good.string(), "--out", "o"}).exit_code, kOk);
  for (const char* executor : {"inprocess", "subprocess"}) {
    fs::path bad =
        Pipeline("  - {name: a, stage: test.throws, output: a.txt, kwargs: {message: no luck}}\n");
    CommandResult r = Run({"run", bad.string(), "--out", "o", "-e", executor});
    EXPECT_EQ(r.exit_code, kStage) << Show(r);
    EXPECT_NE(ErrorLine(r).find("stage 'a' (test.throws) failed: no luck"), std::string::npos)
        << Show(r);
    EXPECT_EQ(ReadFile(dir_ / "o" / "a.txt"), "payload\n") << executor;
  }
  EXPECT_EQ(ListFiles(dir_ / "o"), (std::vector<std::string>{".stagekit-run.json", "a.txt"}));
}

TEST_F(CliTest, StageThatWritesNoOutput) {
  fs::path p = Pipeline("  - {name: a, stage: test.no_output}\n");
  CommandResult r = Run({"run", p.string(), "-e", "subprocess"});
  EXPECT_EQ(r.exit_code, kStage) << Show(r);
  EXPECT_NE(ErrorLine(r).find("stage 'a' (test.no_output) wrote no output"), std::string::npos)
      << Show(r);
}

TEST_F(CliTest, ChildKilledByASignal) {
  fs::path p = Pipeline("  - {name: a, stage: test.crash, output: a.txt}\n");
  CommandResult r = Run({"run", p.string(), "-e", "subprocess", "--out", "o"});
  EXPECT_EQ(r.exit_code, kStage) << Show(r);
  EXPECT_NE(ErrorLine(r).find("was killed by SIGABRT without reporting a result"),
            std::string::npos)
      << Show(r);
  EXPECT_NE(r.err.find("about to die"), std::string::npos) << Show(r);  // the stderr tail
  EXPECT_EQ(ListFiles(dir_ / "o"), (std::vector<std::string>{".stagekit-run.json"}));
}

TEST_F(CliTest, UnwritableOutputDirectory) {
  fs::path p = Pipeline("  - {name: a, stage: test.noop}\n");
  WriteFile(dir_ / "blocker", "a file where a directory should be");
  CommandResult r = Run({"run", p.string(), "--out", "blocker/out"});
  EXPECT_EQ(r.exit_code, kOutput) << Show(r);
  EXPECT_NE(ErrorLine(r).find("cannot create output directory"), std::string::npos) << Show(r);
  EXPECT_EQ(ReadFile(dir_ / "blocker"), "a file where a directory should be");
}

TEST_F(CliTest, TimeoutStopsTheStage) {
  fs::path p =
      Pipeline("  - {name: a, stage: test.sleep, timeout: 300ms, kwargs: {seconds: 30}}\n");
  CommandResult r = Run({"run", p.string(), "-e", "subprocess", "--out", "o"});
  EXPECT_EQ(r.exit_code, kTimeout) << Show(r);
  EXPECT_NE(ErrorLine(r).find("stage 'a' (test.sleep) timed out after 300ms"), std::string::npos)
      << Show(r);
  EXPECT_EQ(ListFiles(dir_ / "o"), (std::vector<std::string>{".stagekit-run.json"}));
}

TEST_F(CliTest, FirstFailureStopsLaunchingAndIsReported) {
  std::string stages = "  - {name: bad, stage: test.throws}\n";
  for (int i = 0; i < 5; ++i) {
    stages +=
        "  - {name: after" + std::to_string(i) + ", stage: test.copy, inputs: {in: {from: bad}}}\n";
  }
  fs::path p = Pipeline(stages);
  CommandResult r = Run({"run", p.string(), "--json", "-j", "1"});
  EXPECT_EQ(r.exit_code, kStage) << Show(r);
  Json summary = Json::parse(r.out);
  EXPECT_EQ(summary["failed_stage"], "bad");
  EXPECT_EQ(summary["error"]["code"], "stage_failed");
  for (std::size_t i = 1; i < 6; ++i) EXPECT_EQ(summary["stages"][i]["state"], "not_run");
}

TEST_F(CliTest, RayExecutorWithoutRaySaysHowToInstallIt) {
  fs::path p = Pipeline("  - {name: a, stage: test.noop}\n");
  CommandResult r = testing::RunCommand({"/usr/bin/env", "STAGEKIT_RAY_BIN_DIR=/nonexistent",
                                         STAGEKIT_CLI, "run", p.string(), "-e", "ray"});
  EXPECT_EQ(r.exit_code, 12) << Show(r);
  EXPECT_NE(ErrorLine(r).find("the ray executor needs Ray"), std::string::npos) << Show(r);
  EXPECT_NE(ErrorLine(r).find("bash scripts/ray.sh"), std::string::npos) << Show(r);
  EXPECT_FALSE(fs::exists(dir_ / "stagekit-out"));
}

// The library reads no settings from the environment: the command line maps
// STAGEKIT_WARM and STAGEKIT_CACHE_DIR into options, and its flags win.
TEST_F(CliTest, TheEnvironmentBecomesOptions) {
  WriteFile(dir_ / "w.yaml",
            "name: w\nlibraries: [stagekit_examples]\nstages:\n"
            "  - {name: p, stage: warm.probe, kwargs: {setup: {}}}\n");
  auto run = [&](const std::vector<std::string>& env, const std::vector<std::string>& flags) {
    std::vector<std::string> argv = {"/usr/bin/env"};
    argv.insert(argv.end(), env.begin(), env.end());
    for (const char* a : {STAGEKIT_CLI, "run"}) argv.emplace_back(a);
    argv.push_back((dir_ / "w.yaml").string());
    argv.insert(argv.end(), flags.begin(), flags.end());
    for (const char* a : {"--json", "-q", "--out"}) argv.emplace_back(a);
    argv.push_back((dir_ / "o").string());
    return testing::RunCommand(argv);
  };
  for (const char* executor : {"inprocess", "subprocess"}) {
    for (const char* warm : {"1", "0"}) {
      CommandResult r = run({std::string("STAGEKIT_WARM=") + warm}, {"-e", executor, "--no-cache"});
      ASSERT_EQ(r.exit_code, kOk) << Show(r);
      const Json warm_metrics = Json::parse(r.out)["stages"][0]["stats"]["metrics"]["warm"];
      EXPECT_EQ(warm_metrics.value("mode", "") == "cold", std::string(warm) == "0")
          << executor << " STAGEKIT_WARM=" << warm << ": " << warm_metrics.dump();
    }
  }
  auto entries = [](const fs::path& cache) {
    std::error_code ec;
    return std::distance(fs::directory_iterator(cache / "entries", ec), fs::directory_iterator());
  };
  const std::string env_cache = "STAGEKIT_CACHE_DIR=" + (dir_ / "env-cache").string();
  ASSERT_EQ(run({env_cache}, {}).exit_code, kOk);
  EXPECT_GT(entries(dir_ / "env-cache"), 0) << "STAGEKIT_CACHE_DIR was not used";
  ASSERT_EQ(run({env_cache}, {"--cache-dir", (dir_ / "flag-cache").string()}).exit_code, kOk);
  EXPECT_GT(entries(dir_ / "flag-cache"), 0) << "--cache-dir did not win over the environment";
}

TEST_F(CliTest, BadCommandLineValues) {
  fs::path p = Pipeline("  - {name: a, stage: test.noop}\n");
  EXPECT_EQ(Run({"run", p.string(), "--executor", "spark"}).exit_code, kUsage);
  CommandResult client = Run({"run", p.string(), "-e", "ray", "--address", "ray://head:10001"});
  if (client.exit_code != 12) {  // 12: this build has no Ray at all
    EXPECT_EQ(client.exit_code, kUsage) << Show(client);
    EXPECT_NE(ErrorLine(client).find("is a Ray Client address"), std::string::npos) << Show(client);
  }
  EXPECT_EQ(Run({"run", p.string(), "--jobs", "0"}).exit_code, kUsage);
  CommandResult t = Run({"run", p.string(), "--timeout", "soon"});
  EXPECT_EQ(t.exit_code, kUsage) << Show(t);
  EXPECT_NE(ErrorLine(t).find("--timeout: cannot read 'soon' as a duration"), std::string::npos);
  CommandResult one = Run({"parity", p.string(), "--executors", "inprocess"});
  EXPECT_EQ(one.exit_code, kUsage) << Show(one);
}

}  // namespace
}  // namespace stagekit
