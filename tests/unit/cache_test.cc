#include "stagekit/cache.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <atomic>
#include <ctime>
#include <mutex>
#include <set>
#include <thread>

#include "stagekit/executor.h"
#include "unit/test_util.h"

namespace stagekit {
namespace {

namespace fs = std::filesystem;
using testing::ReadFile;
using testing::TempDir;
using testing::WriteFile;

// Output depends on exactly what a stage may depend on: kwargs, input bytes
// and the seed.
void Annotate(StageContext& ctx) {
  std::string out = ctx.kwargs().value("prefix", std::string("-")) + "\n";
  for (const auto& [name, path] : ctx.inputs()) out += name + "=" + ctx.ReadInput(name) + "\n";
  out += "seed=" + std::to_string(ctx.seed()) + "\n";
  ctx.WriteOutput(out);
}

// The in-process executor under any name, recording which stages it ran.
class RecordingExecutor : public StageExecutor {
 public:
  RecordingExecutor(const Registry& registry, std::string name)
      : inner_(registry), name_(std::move(name)) {}
  std::string_view name() const override { return name_; }
  Result<RunStats> Run(const StageRequest& request, const StageOptions& options) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      ran_.insert(request.instance);
    }
    Result<RunStats> stats = inner_.Run(request, options);
    if (stats.ok()) stats->executor = name_;  // as that executor would report it
    return stats;
  }
  std::set<std::string> ran() {
    std::lock_guard<std::mutex> lock(mu_);
    return ran_;
  }

 private:
  InProcessExecutor inner_;
  std::string name_;
  std::mutex mu_;
  std::set<std::string> ran_;
};

constexpr const char* kPipeline = R"(name: p
job: {name: j, seed: 1}
stages:
  - {name: a, stage: t.annotate, inputs: {text: a.txt}, kwargs: {prefix: x}}
  - {name: b, stage: t.annotate, inputs: {text: b.txt}, output: sub/b.out}
  - name: c
    stage: t.annotate
    inputs: {left: {from: a}, right: {from: b}}
)";

class CacheTest : public ::testing::Test {
 protected:
  CacheTest() {
    registry_.Add("t.annotate", &Annotate, __FILE__, __LINE__);
    registry_.Add("t.other", &Annotate, __FILE__, __LINE__);
    WriteFile(dir_ / "a.txt", "alpha");
    WriteFile(dir_ / "b.txt", "beta");
  }

  Pipeline Load(std::string yaml = kPipeline) {
    auto p = ParsePipeline(yaml, dir_ / "p.yaml");
    EXPECT_TRUE(p.ok()) << p.status().message();
    return *p;
  }

  std::unique_ptr<DiskCache> Open() {
    DiskCache::Options options;
    options.pipeline = "p";
    options.registry = &registry_;
    options.warn = [this](const std::string& w) {
      std::lock_guard<std::mutex> lock(mu_);
      warnings_ += w + "\n";
    };
    auto cache = DiskCache::Open(dir_ / "cache", options);
    EXPECT_TRUE(cache.ok()) << cache.status().message();
    return std::move(cache).value();
  }

  // Runs the pipeline with a fresh cache object (as a new process would);
  // returns the stages that ran.
  std::set<std::string> Run(const Pipeline& p, bool resume, const std::string& out = "out",
                            const std::string& executor = "inprocess") {
    auto cache = Open();
    RecordingExecutor ex(registry_, executor);
    RunOptions options;
    options.jobs = 2;
    options.cache = cache.get();
    options.lookup_cache = resume;
    last_ = RunPipeline(p, dir_ / out, ex, options);
    EXPECT_TRUE(last_.status.ok()) << last_.status.message();
    return ex.ran();
  }

  std::string Warnings() {
    std::lock_guard<std::mutex> lock(mu_);
    return warnings_;
  }

  const StageOutcome& Outcome(const std::string& name) const {
    for (const StageOutcome& o : last_.stages) {
      if (o.name == name) return o;
    }
    throw std::out_of_range(name);
  }
  fs::path BlobOf(const std::string& stage) const {
    const std::string hex = Outcome(stage).stats->output_digest.substr(7);
    return dir_ / "cache" / "blobs" / hex.substr(0, 2) / hex;
  }

  Registry registry_;
  TempDir dir_;
  RunResult last_;
  std::mutex mu_;
  std::string warnings_;
};

using Names = std::set<std::string>;

TEST_F(CacheTest, ResumeRestoresEveryStageAndRunsNone) {
  const Pipeline p = Load();
  EXPECT_EQ(Run(p, false), (Names{"a", "b", "c"}));
  const std::string c = ReadFile(dir_ / "out/c.out");
  EXPECT_EQ(Run(p, false), (Names{"a", "b", "c"})) << "a plain run only stores";
  fs::remove_all(dir_ / "out");
  EXPECT_EQ(Run(p, true), Names{});
  for (const StageOutcome& o : last_.stages) {
    EXPECT_TRUE(o.cached) << o.name;
    EXPECT_EQ(o.state, StageState::kSucceeded);
  }
  EXPECT_EQ(ReadFile(dir_ / "out/c.out"), c);
  EXPECT_EQ(ReadFile(dir_ / "out/sub/b.out"),
            "-\ntext=beta\nseed=" + std::to_string(DeriveSeed(p.job, "b")) + "\n");
  EXPECT_EQ(Warnings(), "");
}

TEST_F(CacheTest, AnOutputMadeByOneExecutorIsAHitForAnother) {
  const Pipeline p = Load();
  Run(p, false, "out", "ray");
  EXPECT_EQ(Run(p, true, "elsewhere", "inprocess"), Names{});
  EXPECT_EQ(Outcome("c").stats->executor, "ray") << "the stats of the run that made it";
  EXPECT_EQ(ReadFile(dir_ / "elsewhere/c.out"), ReadFile(dir_ / "out/c.out"));
  auto explained = Open()->Explain(p, "c");
  ASSERT_EQ(explained.size(), 1u);
  EXPECT_TRUE(explained[0].cached);
  EXPECT_EQ(explained[0].Summary().rfind("cached (made by ray run at 20", 0), 0u)
      << explained[0].Summary();
}

TEST_F(CacheTest, KeyIgnoresOutputResourcesTimeoutAndThreads) {
  Pipeline p = Load();
  auto cache = Open();
  const std::map<std::string, std::string> none;
  auto before = cache->KeyParts(p.stages[0], p.job, none);
  ASSERT_TRUE(before.ok()) << before.status().message();
  PipelineStage st = p.stages[0];
  st.output = "elsewhere.txt";
  st.options.resources.cpus = 8;
  st.options.resources.gpus = 0.5;
  st.options.resources.custom["vm:x"] = 1;
  st.options.timeout = std::chrono::milliseconds(5);
  auto after = cache->KeyParts(st, p.job, none);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(before->Key(), after->Key());
  EXPECT_EQ(before->Key().size(), 64u);
  EXPECT_TRUE(DescribeKeyChange(*before, *after).empty());
}

TEST_F(CacheTest, EveryKeyPartChangesTheKeyAndIsNamed) {
  const Pipeline p = Load();
  auto cache = Open();
  const std::map<std::string, std::string> none;
  const CacheKeyParts base = *cache->KeyParts(p.stages[0], p.job, none);
  auto changed = [&](const CacheKeyParts& now) {
    EXPECT_NE(base.Key(), now.Key());
    auto lines = DescribeKeyChange(base, now);
    EXPECT_EQ(lines.size(), 1u);
    return lines.empty() ? std::string() : lines[0];
  };

  PipelineStage st = p.stages[0];
  st.kwargs["prefix"] = "y";
  EXPECT_EQ(changed(*cache->KeyParts(st, p.job, none)), "kwargs.prefix \"x\" -> \"y\"");
  st = p.stages[0];
  st.kwargs["extra"] = 3;
  EXPECT_EQ(changed(*cache->KeyParts(st, p.job, none)), "kwargs.extra added (3)");

  JobSpec job = p.job;
  job.seed = 2;
  EXPECT_EQ(changed(*cache->KeyParts(p.stages[0], job, none)), "job.seed 1 -> 2");
  job = p.job;
  job.params["lr"] = 0.5;
  EXPECT_EQ(changed(*cache->KeyParts(p.stages[0], job, none)), "job.params.lr added (0.5)");

  st = p.stages[0];
  st.stage = "t.other";
  EXPECT_EQ(changed(*cache->KeyParts(st, p.job, none)), "stage changed 't.annotate' -> 't.other'");
  st = p.stages[0];
  st.name = "a2";
  EXPECT_EQ(changed(*cache->KeyParts(st, p.job, none)), "instance name changed 'a' -> 'a2'");

  CacheKeyParts lib = base;
  lib.library = "sha256:" + std::string(64, 'e');
  EXPECT_EQ(changed(lib).rfind("stage library changed sha256:", 0), 0u);

  WriteFile(dir_ / "a.txt", "ALPHA, longer");
  const std::string line = changed(*cache->KeyParts(p.stages[0], p.job, none));
  EXPECT_EQ(line.rfind("input 'text' bytes changed " + base.inputs.at("text").substr(0, 19) +
                           ".. -> sha256:",
                       0),
            0u)
      << line;
  EXPECT_NE(line.find("(" + (dir_ / "a.txt").string() + ")"), std::string::npos) << line;

  // Another stage's output counts by the digest the scheduler passes.
  const std::string d1 = "sha256:" + std::string(64, '1'), d2 = "sha256:" + std::string(64, '2');
  auto c1 = cache->KeyParts(p.stages[2], p.job, {{"left", d1}, {"right", d1}});
  auto c2 = cache->KeyParts(p.stages[2], p.job, {{"left", d2}, {"right", d1}});
  ASSERT_TRUE(c1.ok() && c2.ok());
  EXPECT_NE(c1->Key(), c2->Key());
  EXPECT_EQ(DescribeKeyChange(*c1, *c2),
            std::vector<std::string>{"input 'left' bytes changed sha256:111111111111.. -> "
                                     "sha256:222222222222.. (output of 'a')"});
  EXPECT_EQ(cache->KeyParts(p.stages[2], p.job, {{"left", d1}}).status().code(), Code::kInternal);
}

TEST_F(CacheTest, KeyPartsRoundTripThroughJson) {
  const Pipeline p = Load();
  auto parts = Open()->KeyParts(p.stages[0], p.job, {});
  ASSERT_TRUE(parts.ok());
  auto back = CacheKeyParts::FromJson(Json::parse(parts->ToJson().dump()));
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_EQ(back->Key(), parts->Key());
  EXPECT_EQ(back->input_sources, parts->input_sources);
  EXPECT_FALSE(CacheKeyParts::FromJson(Json{{"stage", 1}}).ok());
}

TEST_F(CacheTest, AFileRewrittenInPlaceWithTheSameSizeGetsANewDigest) {
  const Pipeline p = Load();
  auto cache = Open();
  const std::string before = cache->KeyParts(p.stages[0], p.job, {})->Key();
  const auto mtime = fs::last_write_time(dir_ / "a.txt");
  WriteFile(dir_ / "a.txt", "ALPHA");  // same size
  fs::last_write_time(dir_ / "a.txt", mtime + std::chrono::seconds(5));
  EXPECT_NE(cache->KeyParts(p.stages[0], p.job, {})->Key(), before);
}

TEST_F(CacheTest, ChangingOneInputRerunsExactlyTheStagesDownstreamOfIt) {
  const Pipeline p = Load();
  Run(p, false);
  WriteFile(dir_ / "b.txt", "beta, edited");
  auto explained = Open()->Explain(p);
  ASSERT_EQ(explained.size(), 3u);
  EXPECT_TRUE(explained[0].cached);
  ASSERT_FALSE(explained[1].cached);
  ASSERT_EQ(explained[1].reasons.size(), 1u);
  EXPECT_EQ(explained[1].reasons[0].rfind("input 'text' bytes changed sha256:", 0), 0u);
  EXPECT_FALSE(explained[2].cached);
  EXPECT_EQ(
      explained[2].reasons,
      std::vector<std::string>{"upstream 'b' will run first, so its output is not known yet"});
  EXPECT_EQ(Run(p, true), (Names{"b", "c"}));
  EXPECT_TRUE(Outcome("a").cached);
  EXPECT_NE(ReadFile(dir_ / "out/c.out").find("right=-\ntext=beta, edited"), std::string::npos);

  // Back to the old bytes: every stage is in the cache again.
  WriteFile(dir_ / "b.txt", "beta");
  EXPECT_EQ(Run(p, true), Names{});
}

TEST_F(CacheTest, ExplainSaysNeverRunBeforeAndNamesAChangedKwarg) {
  Pipeline p = Load();
  for (const StageExplanation& e : Open()->Explain(p)) {
    EXPECT_FALSE(e.cached);
    EXPECT_NE(e.Summary().find("never run before"), std::string::npos) << e.Summary();
  }
  Run(p, false);
  p.stages[0].kwargs["prefix"] = "z";
  auto explained = Open()->Explain(p);
  EXPECT_EQ(explained[0].Summary(), "will run because kwargs.prefix \"x\" -> \"z\"");
  EXPECT_TRUE(explained[1].cached);
  EXPECT_EQ(explained[2].Summary(),
            "will run because upstream 'a' will run first, so its output is not known yet");
  EXPECT_EQ(explained[2].parts->inputs.at("left"), "unknown until 'a' runs");
  EXPECT_EQ(Run(p, true), (Names{"a", "c"}));
  EXPECT_TRUE(Open()->Explain(p, "a").at(0).cached);
}

TEST_F(CacheTest, ACorruptBlobIsDetectedRemovedAndTheStageReruns) {
  const Pipeline p = Load();
  Run(p, false);
  const std::string good = ReadFile(dir_ / "out/c.out");
  const fs::path blob = BlobOf("c");
  fs::permissions(blob, fs::perms::owner_write, fs::perm_options::add);
  std::string bytes = ReadFile(blob);
  bytes[0] ^= 1;  // same size, other bytes
  WriteFile(blob, bytes);
  fs::remove(dir_ / "out/c.out");
  EXPECT_EQ(Run(p, true), Names{"c"});
  EXPECT_EQ(ReadFile(dir_ / "out/c.out"), good);
  EXPECT_NE(Warnings().find("the cached output of stage 'c' is corrupt"), std::string::npos)
      << Warnings();
  // The re-run stored a good copy again.
  EXPECT_EQ(Run(p, true), Names{});
  EXPECT_EQ(ReadFile(blob), good);
}

TEST_F(CacheTest, AMissingBlobOrGarbageEntryIsAMiss) {
  const Pipeline p = Load();
  Run(p, false);
  fs::remove(BlobOf("a"));
  auto cache = Open();
  const std::string key_b = cache->KeyParts(p.stages[1], p.job, {})->Key();
  WriteFile(dir_ / "cache/entries" / key_b.substr(0, 2) / (key_b + ".json"), "{\"trunc");
  fs::remove_all(dir_ / "out");
  // c's inputs come out byte-identical, so c itself is still a hit.
  EXPECT_EQ(Run(p, true), (Names{"a", "b"}));
  EXPECT_TRUE(Outcome("c").cached);
  EXPECT_NE(Warnings().find("the output of stage 'a'"), std::string::npos) << Warnings();
  EXPECT_NE(Warnings().find("removed the unreadable entry"), std::string::npos) << Warnings();
  EXPECT_EQ(Run(p, true), Names{});
}

TEST_F(CacheTest, AnEntryWhoseRunDisagreesWithItsOutputIsNotTrusted) {
  const Pipeline p = Load();
  Run(p, false);
  auto cache = Open();
  const std::string key_b = cache->KeyParts(p.stages[1], p.job, {})->Key();
  const fs::path entry = dir_ / "cache/entries" / key_b.substr(0, 2) / (key_b + ".json");
  Json j = Json::parse(ReadFile(entry));
  // Blob and output record stay consistent; only the run's digest lies.
  j["stats"]["output_digest"] = "sha256:" + std::string(64, 'e');
  WriteFile(entry, j.dump(1));
  fs::remove_all(dir_ / "out");
  EXPECT_EQ(Run(p, true), (Names{"b"}));
  EXPECT_NE(Warnings().find("disagrees with its output's"), std::string::npos) << Warnings();
  EXPECT_NE(Outcome("b").stats->output_digest, "sha256:" + std::string(64, 'e'));
}

// Replaces a's output, as another run writing the same folder would, right
// after a finished and before c (which reads it) is keyed.
class ReplaceAfterA : public RunObserver {
 public:
  explicit ReplaceAfterA(fs::path file) : file_(std::move(file)) {}
  void OnStageFinished(const PipelineStage& stage, const StageOutcome&) override {
    if (stage.name == "a") WriteFile(file_, "bytes of another run\n");
  }

 private:
  fs::path file_;
};

TEST_F(CacheTest, ADownstreamStageIsKeyedOnTheBytesItReadsNotTheDigestItWasTold) {
  const Pipeline p = Load();
  {
    auto cache = Open();
    RecordingExecutor ex(registry_, "inprocess");
    ReplaceAfterA interfere(dir_ / "shared/a.out");
    RunOptions options;
    options.cache = cache.get();
    options.observer = &interfere;
    options.jobs = 1;
    last_ = RunPipeline(p, dir_ / "shared", ex, options);
    ASSERT_TRUE(last_.status.ok()) << last_.status.message();
  }
  EXPECT_NE(Warnings().find("is not the output 'a' made in this run"), std::string::npos)
      << Warnings();
  // What c must be: computed from a's real output, with no cache at all.
  RecordingExecutor plain(registry_, "inprocess");
  ASSERT_TRUE(RunPipeline(p, dir_ / "reference", plain, RunOptions{}).status.ok());
  // A fresh folder restores a's true output; c's entry is keyed on the bytes
  // it read, so it is not a hit for them: c runs and comes out right.
  EXPECT_EQ(Run(p, true, "fresh"), (Names{"c"}));
  EXPECT_EQ(ReadFile(dir_ / "fresh/c.out"), ReadFile(dir_ / "reference/c.out"));
}

TEST_F(CacheTest, ACorrectOutputInPlaceIsLeftAloneAndAWrongOneReplaced) {
  const Pipeline p = Load();
  Run(p, false);
  struct stat before {};
  ASSERT_EQ(::stat((dir_ / "out/a.out").c_str(), &before), 0);
  const std::string good = ReadFile(dir_ / "out/c.out");
  WriteFile(dir_ / "out/c.out", "stale");
  EXPECT_EQ(Run(p, true), Names{});
  struct stat after {};
  ASSERT_EQ(::stat((dir_ / "out/a.out").c_str(), &after), 0);
  EXPECT_EQ(before.st_ino, after.st_ino);
  EXPECT_EQ(ReadFile(dir_ / "out/c.out"), good);
}

TEST_F(CacheTest, StoreRefusesBytesThatDoNotMatchTheRunStats) {
  const Pipeline p = Load();
  auto cache = Open();
  StageRequest req;
  req.stage = "t.annotate";
  req.instance = "a";
  req.output = dir_ / "a.out";
  req.job = p.job;
  req.kwargs = p.stages[0].kwargs;
  WriteFile(req.output, "not what ran");
  RunStats stats;
  stats.output_digest = "sha256:" + std::string(64, 'a');
  cache->Store(p.stages[0], req, cache->Prepare(p.stages[0], req, {}), &stats);
  EXPECT_NE(Warnings().find("changed after the stage wrote it"), std::string::npos) << Warnings();
  auto usage = cache->Usage();
  ASSERT_TRUE(usage.ok());
  EXPECT_EQ(usage->entries, 0u);
  EXPECT_EQ(usage->blobs, 0u);
  EXPECT_EQ(cache->stores(), 0u);
  EXPECT_FALSE(cache->Lookup(p.stages[0], req, cache->Prepare(p.stages[0], req, {})).has_value());
}

// The key is taken before the stage runs. An input rewritten while it runs
// may or may not be what the stage read, so the output is not stored under
// either key.
TEST_F(CacheTest, AnInputChangedWhileTheStageRanIsNotStored) {
  const Pipeline p = Load();
  auto cache = Open();
  StageRequest req;
  req.stage = "t.annotate";
  req.instance = "a";
  req.inputs["text"] = dir_ / "a.txt";
  req.output = dir_ / "a.out";
  req.job = p.job;
  req.kwargs = p.stages[0].kwargs;
  const std::string token = cache->Prepare(p.stages[0], req, {});
  ASSERT_FALSE(token.empty());
  auto stats = Invoke(req, registry_);
  ASSERT_TRUE(stats.ok()) << stats.status().message();
  WriteFile(dir_ / "a.txt", "alpha, edited while the stage ran");
  cache->Store(p.stages[0], req, token, &*stats);
  EXPECT_NE(Warnings().find("changed while it ran"), std::string::npos) << Warnings();
  EXPECT_EQ(cache->stores(), 0u);
  auto usage = cache->Usage();
  ASSERT_TRUE(usage.ok());
  EXPECT_EQ(usage->entries, 0u);
}

TEST_F(CacheTest, PruneRemovesOldEntriesThenOldestFirstThenOrphans) {
  const Pipeline p = Load();
  Run(p, false);
  // Age the entries: a three days, b two hours, c new.
  const std::int64_t now = std::time(nullptr);
  const std::map<std::string, std::int64_t> age{{"a", 3 * 86400}, {"b", 7200}, {"c", 0}};
  for (const auto& e : fs::recursive_directory_iterator(dir_ / "cache/entries")) {
    if (!e.is_regular_file()) continue;
    Json j = Json::parse(ReadFile(e.path()));
    j["created_unix"] = now - age.at(j["parts"]["instance"].get<std::string>());
    WriteFile(e.path(), j.dump());
  }
  const fs::path orphan = dir_ / "cache/blobs/00" / std::string(64, '0');
  WriteFile(orphan, "nobody refers to me");
  auto cache = Open();
  const CacheUsage start = *cache->Usage();
  EXPECT_EQ(start.entries, 3u);
  EXPECT_EQ(start.blobs, 4u);

  auto r = cache->Prune({});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->entries_removed, 0u);
  EXPECT_EQ(r->blobs_removed, 1u);
  EXPECT_FALSE(fs::exists(orphan));

  PruneOptions older;
  older.older_than = std::chrono::hours(24);
  r = cache->Prune(older);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->entries_removed, 1u);
  EXPECT_EQ(r->blobs_removed, 1u);
  EXPECT_FALSE(fs::exists(BlobOf("a")));
  EXPECT_EQ(r->left.entries, 2u);

  PruneOptions smaller;
  smaller.max_bytes = r->left.bytes - 1;
  r = cache->Prune(smaller);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->entries_removed, 1u) << "b, the oldest left, is enough";
  EXPECT_FALSE(fs::exists(BlobOf("b")));
  EXPECT_TRUE(fs::exists(BlobOf("c")));
  EXPECT_LE(r->left.bytes, *smaller.max_bytes);
  EXPECT_EQ(Run(p, true), (Names{"a", "b"}));
}

TEST_F(CacheTest, ConcurrentRunsOnOneCacheNeverServeBadBytes) {
  const Pipeline p = Load();
  Run(p, false, "reference");
  const std::string expected = ReadFile(dir_ / "reference/c.out");
  fs::remove_all(dir_ / "cache");
  constexpr int kRunners = 4;
  std::vector<std::thread> threads;
  std::atomic<int> bad{0};
  for (int t = 0; t < kRunners; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 3; ++round) {
        auto cache = Open();
        RecordingExecutor ex(registry_, "inprocess");
        RunOptions options;
        options.cache = cache.get();
        options.lookup_cache = true;
        const fs::path out = dir_ / ("out" + std::to_string(t) + "_" + std::to_string(round));
        RunResult r = RunPipeline(p, out, ex, options);
        if (!r.status.ok() || ReadFile(out / "c.out") != expected) ++bad;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(Warnings(), "");
  EXPECT_EQ(Open()->Usage()->entries, 3u);
}

// The library's default is the XDG one; $STAGEKIT_CACHE_DIR is the command
// line's to read (cli_test checks it), not the library's.
TEST(DiskCacheTest, DefaultDirIsTheUserCacheDir) {
  const char* saved = std::getenv("STAGEKIT_CACHE_DIR");
  const std::string keep = saved != nullptr ? saved : "";
  ::setenv("STAGEKIT_CACHE_DIR", "/somewhere/cache", 1);
  EXPECT_NE(DiskCache::DefaultDir(), fs::path("/somewhere/cache"));
  const char* xdg = std::getenv("XDG_CACHE_HOME");
  if (xdg != nullptr && *xdg) {
    EXPECT_EQ(DiskCache::DefaultDir(), fs::path(xdg) / "stagekit");
  } else if (const char* home = std::getenv("HOME"); home != nullptr && *home) {
    EXPECT_EQ(DiskCache::DefaultDir(), fs::path(home) / ".cache/stagekit");
  }
  if (saved != nullptr) ::setenv("STAGEKIT_CACHE_DIR", keep.c_str(), 1);
}

}  // namespace
}  // namespace stagekit

namespace stagekit {
namespace {

// A collect of many instances has a reason per instance: the summary line
// names five and counts the rest; the reasons themselves are all kept.
TEST(StageExplanationTest, TheSummaryOfManyReasonsCountsTheRest) {
  StageExplanation e;
  for (int i = 0; i < 100000; ++i) e.reasons.push_back("upstream 'n[" + std::to_string(i) + "]'");
  const std::string line = e.Summary();
  EXPECT_EQ(line.rfind("will run because upstream 'n[0]'; ", 0), 0u) << line.substr(0, 200);
  EXPECT_NE(line.find("'n[4]'; and 99995 more reasons (--json lists all)"), std::string::npos)
      << line;
  EXPECT_LT(line.size(), 300u);
  EXPECT_EQ(e.ToJson()["reasons"].size(), 100000u);
}

}  // namespace
}  // namespace stagekit
