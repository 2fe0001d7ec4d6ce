// The stage cache through the real CLI: `run`, `run --resume`, `cache
// explain|info|prune`, on a copy of the wordcount example whose inputs the
// tests edit.
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <thread>

#include "stagekit/stage.h"
#include "unit/test_util.h"

namespace stagekit {
namespace {

namespace fs = std::filesystem;
using testing::CommandResult;
using testing::ReadFile;
using testing::RunCli;
using testing::Show;
using testing::TempDir;
using testing::WriteFile;

const fs::path kWordcount = STAGEKIT_SOURCE_DIR "/examples/wordcount/pipeline.yaml";
const fs::path kFortunes = "/usr/share/games/fortunes";
using Names = std::set<std::string>;

class CacheCliTest : public ::testing::Test {
 protected:
  // The wordcount example with its corpus copied under corpus/ (or, without
  // Debian's fortunes, made up).
  void SetUp() override {
    std::string yaml = ReadFile(kWordcount);
    // The texts of its `foreach: {list: [...]}`.
    std::smatch list;
    ASSERT_TRUE(std::regex_search(yaml, list, std::regex(R"(list: \[([^\]]*)\])")));
    const std::string items = list[1];
    const std::regex word("[a-z-]+");
    for (std::sregex_iterator it(items.begin(), items.end(), word), end; it != end; ++it) {
      names_.push_back(it->str());
    }
    ASSERT_EQ(names_.size(), 16u);
    fs::create_directories(dir_ / "corpus");
    for (const std::string& name : names_) {
      if (fs::exists(kFortunes / name)) {
        fs::copy_file(kFortunes / name, dir_ / "corpus" / name,
                      fs::copy_options::overwrite_existing);
      } else {
        std::string text;
        for (int i = 0; i < 200; ++i)
          text += name + " words about " + std::to_string(i % 17) + "\n";
        WriteFile(dir_ / "corpus" / name, text);
      }
    }
    const std::string from = kFortunes.string() + "/{item}";
    const auto at = yaml.find(from);
    ASSERT_NE(at, std::string::npos);
    WriteFile(dir_ / "pipeline.yaml", yaml.replace(at, from.size(), "corpus/{item}"));
  }

  CommandResult Cli(std::vector<std::string> args) {
    args.insert(args.end(), {"--cache-dir", (dir_ / "cache").string()});
    return RunCli(args, dir_.path());
  }
  // `stagekit run pipeline.yaml -o OUT [args]`; returns the stages that ran.
  Names RunPipeline(const std::string& out, std::vector<std::string> args = {}) {
    args.insert(args.begin(), {"run", "pipeline.yaml", "-o", out, "-j", "2"});
    last_ = Cli(args);
    EXPECT_EQ(last_.exit_code, 0) << Show(last_);
    Names ran;
    Json summary = Json::parse(ReadFile(dir_ / out / ".stagekit-run.json"));
    for (const Json& st : summary["stages"]) {
      EXPECT_EQ(st["state"], "succeeded") << st.dump();
      if (!st["cached"].get<bool>()) ran.insert(st["name"].get<std::string>());
    }
    return ran;
  }
  Names All() const {
    Names all{"reduce"};
    for (const std::string& name : names_) all.insert("map[" + name + "]");
    return all;
  }
  // Every output of a run, by relative path.
  std::map<std::string, std::string> Outputs(const std::string& out) {
    std::map<std::string, std::string> files;
    for (const std::string& f : testing::ListFiles(dir_ / out)) {
      if (f != ".stagekit-run.json") files[f] = ReadFile(dir_ / out / f);
    }
    return files;
  }
  void Edit(const std::string& from, const std::string& to) {
    std::string yaml = ReadFile(dir_ / "pipeline.yaml");
    const auto at = yaml.find(from);
    ASSERT_NE(at, std::string::npos) << from;
    WriteFile(dir_ / "pipeline.yaml", yaml.replace(at, from.size(), to));
  }

  TempDir dir_;
  CommandResult last_;
  std::vector<std::string> names_;  // the 16 texts, in the list's order
};

TEST_F(CacheCliTest, ASecondResumeRunsNoStageOnAnyExecutor) {
  EXPECT_EQ(RunPipeline("out"), All());
  EXPECT_NE(last_.err.find("17 stages succeeded"), std::string::npos) << Show(last_);
  EXPECT_NE(last_.err.find("0 restored from the cache"), std::string::npos) << Show(last_);
  const auto reference = Outputs("out");
  ASSERT_EQ(reference.size(), 17u);

  EXPECT_EQ(RunPipeline("out", {"--resume"}), Names{});
  EXPECT_NE(last_.err.find("17 restored from the cache"), std::string::npos) << Show(last_);
  // In-process outputs are hits for the subprocess executor, in a new place.
  EXPECT_EQ(RunPipeline("sub", {"--resume", "-e", "subprocess"}), Names{});
  EXPECT_EQ(Outputs("sub"), reference);
  Json summary = Json::parse(ReadFile(dir_ / "sub/.stagekit-run.json"));
  EXPECT_EQ(summary["executor"], "subprocess");
  EXPECT_EQ(summary["stages"][0]["stats"]["executor"], "inprocess") << "who made it";

  // And the other way round.
  fs::remove_all(dir_ / "cache");
  EXPECT_EQ(RunPipeline("sub2", {"-e", "subprocess"}), All());
  EXPECT_EQ(RunPipeline("in2", {"--resume", "-e", "inprocess"}), Names{});
  EXPECT_EQ(Outputs("in2"), reference);
}

TEST_F(CacheCliTest, ChangingOneInputRerunsExactlyTheStagesDownstreamOfIt) {
  RunPipeline("out");
  { std::ofstream(dir_ / "corpus/law", std::ios::app) << "one more line about lawyers\n"; }
  CommandResult r = Cli({"cache", "explain", "pipeline.yaml", "map[law]"});
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  EXPECT_NE(r.out.find("map[law]  will run because input 'text' bytes changed sha256:"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("(" + (dir_ / "corpus/law").string() + ")"), std::string::npos) << r.out;
  r = Cli({"cache", "explain", "pipeline.yaml"});
  EXPECT_NE(r.out.find("will run because upstream 'map[law]' will run first, so its output "
                       "is not known yet"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("15 of 17 stages cached"), std::string::npos) << r.out;

  EXPECT_EQ(RunPipeline("out", {"--resume"}), (Names{"map[law]", "reduce"}));
  r = Cli({"cache", "explain", "pipeline.yaml", "--json"});
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  EXPECT_EQ(Json::parse(r.out)["cached"], 17);
}

TEST_F(CacheCliTest, ChangingAKwargRerunsThatStageAndExplainNamesIt) {
  RunPipeline("out");
  const auto before = Outputs("out");
  Edit("{top: 200}", "{top: 100}");
  CommandResult r = Cli({"cache", "explain", "pipeline.yaml", "reduce", "--json"});
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  Json doc = Json::parse(r.out);
  ASSERT_EQ(doc["stages"].size(), 1u);
  EXPECT_EQ(doc["stages"][0]["cached"], false);
  EXPECT_EQ(doc["stages"][0]["reasons"], Json::array({"kwargs.top 200 -> 100"}));

  EXPECT_EQ(RunPipeline("out", {"--resume"}), (Names{"reduce"}));
  EXPECT_NE(Outputs("out")["top_words.tsv"], before.at("top_words.tsv"));
  EXPECT_EQ(Outputs("out")["map/art.tsv"], before.at("map/art.tsv"));
  // Changing it back finds the first outputs again.
  Edit("{top: 100}", "{top: 200}");
  EXPECT_EQ(RunPipeline("out", {"--resume"}), Names{});
  EXPECT_EQ(Outputs("out"), before);
}

TEST_F(CacheCliTest, ACorruptBlobIsDetectedAndTheStageRerunsWithACorrectOutput) {
  RunPipeline("out");
  const auto reference = Outputs("out");
  Json summary = Json::parse(ReadFile(dir_ / "out/.stagekit-run.json"));
  const std::string digest = summary["stages"][5]["stats"]["output_digest"];
  ASSERT_EQ(summary["stages"][5]["name"], "map[education]");
  const fs::path blob = dir_ / "cache/blobs" / digest.substr(7, 2) / digest.substr(7);
  ASSERT_TRUE(fs::exists(blob));
  fs::permissions(blob, fs::perms::owner_write, fs::perm_options::add);
  std::string bytes = ReadFile(blob);
  bytes[bytes.size() / 2] ^= 0x20;
  WriteFile(blob, bytes);

  EXPECT_EQ(RunPipeline("fresh", {"--resume"}), Names{"map[education]"});
  EXPECT_NE(last_.err.find("the cached output of stage 'map[education]' is corrupt"),
            std::string::npos)
      << Show(last_);
  EXPECT_EQ(Outputs("fresh"), reference);
  EXPECT_EQ(RunPipeline("fresh2", {"--resume"}), Names{});
  EXPECT_EQ(Outputs("fresh2"), reference);
}

TEST_F(CacheCliTest, ConcurrentRunsOnOneCacheNeverYieldABadOutput) {
  ASSERT_EQ(RunCli({"run", "pipeline.yaml", "-o", "reference", "--no-cache", "-q"}, dir_.path())
                .exit_code,
            0);
  const auto reference = Outputs("reference");
  // Two processes store the same keys at once, then two restore them at once
  // while a third stores them again.
  for (const std::vector<std::vector<std::string>>& round :
       {std::vector<std::vector<std::string>>{{"a"}, {"b", "-e", "subprocess"}},
        std::vector<std::vector<std::string>>{
            {"c", "--resume"}, {"d", "--resume", "-e", "subprocess"}, {"e"}}}) {
    std::vector<CommandResult> results(round.size());
    std::vector<std::thread> threads;
    for (std::size_t i = 0; i < round.size(); ++i) {
      threads.emplace_back([&, i] {
        std::vector<std::string> args{"run", "pipeline.yaml", "-q", "-j", "4", "-o"};
        args.insert(args.end(), round[i].begin(), round[i].end());
        results[i] = Cli(args);
      });
    }
    for (std::thread& t : threads) t.join();
    for (std::size_t i = 0; i < round.size(); ++i) {
      EXPECT_EQ(results[i].exit_code, 0) << Show(results[i]);
      EXPECT_EQ(results[i].err.find("warning"), std::string::npos) << Show(results[i]);
      EXPECT_EQ(Outputs(round[i][0]), reference) << round[i][0];
    }
  }
  CommandResult info = Cli({"cache", "info", "--json"});
  ASSERT_EQ(info.exit_code, 0) << Show(info);
  EXPECT_EQ(Json::parse(info.out)["entries"], 17);
}

TEST_F(CacheCliTest, InfoPruneAndNoCache) {
  CommandResult r = Cli({"cache", "info"});
  EXPECT_EQ(r.exit_code, 0) << Show(r);
  EXPECT_NE(r.out.find("entries: 0"), std::string::npos) << r.out;
  EXPECT_EQ(Cli({"cache", "prune"}).exit_code, 5) << "no cache there yet";

  RunPipeline("out", {"--no-cache"});
  EXPECT_FALSE(fs::exists(dir_ / "cache"));
  EXPECT_EQ(Cli({"run", "pipeline.yaml", "--resume", "--no-cache"}).exit_code, 2);

  RunPipeline("out");
  r = Cli({"cache", "info", "--json"});
  Json info = Json::parse(r.out);
  EXPECT_EQ(info["entries"], 17);
  EXPECT_EQ(info["blobs"], 17);
  EXPECT_GT(info["bytes"].get<std::uint64_t>(), 100u);

  r = Cli({"cache", "prune", "--older-than", "soon"});
  EXPECT_EQ(r.exit_code, 2) << Show(r);
  EXPECT_NE(r.err.find("--older-than"), std::string::npos) << Show(r);
  r = Cli({"cache", "prune", "--older-than", "7d", "--json"});
  EXPECT_EQ(Json::parse(r.out)["entries_removed"], 0) << Show(r);
  r = Cli({"cache", "prune", "--max-size", "0"});
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  EXPECT_NE(r.out.find("removed 17 entries and 17 blobs"), std::string::npos) << r.out;
  EXPECT_EQ(RunPipeline("out", {"--resume"}), All());

  r = RunCli({"cache", "--help"});
  EXPECT_NE(r.out.find("explain"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("prune"), std::string::npos) << r.out;
  r = Cli({"cache", "explain", "pipeline.yaml", "nope"});
  EXPECT_EQ(r.exit_code, 2) << Show(r);
  EXPECT_NE(r.err.find("has no stage 'nope'"), std::string::npos) << Show(r);
}

}  // namespace
}  // namespace stagekit
