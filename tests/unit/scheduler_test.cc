#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "stagekit/pipeline.h"
#include "unit/test_util.h"

namespace stagekit {
namespace {

using testing::TempDir;

// Records what ran and when; blocks each stage until `gate` stages run at once
// (or a timeout passes), which proves concurrency without timing guesses.
class FakeExecutor : public StageExecutor {
 public:
  std::string_view name() const override { return "fake"; }
  Result<RunStats> Run(const StageRequest& req, const StageOptions&) override {
    {
      std::unique_lock<std::mutex> lock(mu_);
      for (const auto& [in, path] : req.inputs) {
        if (path.parent_path().filename() == "out" &&
            finished_.count(path.filename().string()) == 0) {
          violations_.push_back(req.instance + " started before its input " + path.string());
        }
      }
      started_.push_back(req.instance);
      ++running_;
      max_running_ = std::max(max_running_, running_);
      cv_.notify_all();
      cv_.wait_for(lock, std::chrono::seconds(5), [&] { return running_ >= gate_ || release_; });
      release_ = true;  // once the gate opened, let everyone through
    }
    Result<RunStats> result =
        Status(Code::kStageFailed, "stage '" + req.instance + "' failed: planned");
    if (fail_.count(req.instance) == 0) {
      RunStats s;
      s.stage = req.stage;
      s.output_digest = "sha256:fake";
      result = s;
    }
    std::lock_guard<std::mutex> lock(mu_);
    --running_;
    finished_.insert(req.output.filename().string());
    return result;
  }

  std::mutex mu_;
  std::condition_variable cv_;
  int running_ = 0, max_running_ = 0, gate_ = 1;
  bool release_ = false;
  std::vector<std::string> started_;
  std::set<std::string> finished_;
  std::set<std::string> fail_;
  std::vector<std::string> violations_;
};

Pipeline FanOut(int width) {
  std::string yaml = "stages:\n";
  for (int i = 0; i < width; ++i) yaml += "  - {name: m" + std::to_string(i) + ", stage: s}\n";
  yaml += "  - name: r\n    stage: s\n    inputs:\n";
  for (int i = 0; i < width; ++i)
    yaml += "      i" + std::to_string(i) + ": {from: m" + std::to_string(i) + "}\n";
  auto p = ParsePipeline(yaml, "/p/fan.yaml");
  EXPECT_TRUE(p.ok()) << p.status().message();
  return *p;
}

TEST(SchedulerTest, RunsUpToJobsStagesAtOnceAndRespectsDependencies) {
  TempDir dir;
  FakeExecutor ex;
  ex.gate_ = 3;
  RunOptions options;
  options.jobs = 3;
  RunResult r = RunPipeline(FanOut(8), dir / "out", ex, options);
  ASSERT_TRUE(r.status.ok()) << r.status.message();
  EXPECT_EQ(ex.max_running_, 3);
  EXPECT_TRUE(ex.violations_.empty()) << ex.violations_[0];
  EXPECT_EQ(ex.started_.back(), "r");
  for (const StageOutcome& o : r.stages) EXPECT_EQ(o.state, StageState::kSucceeded);
}

TEST(SchedulerTest, OneJobRunsInPipelineOrder) {
  TempDir dir;
  FakeExecutor ex;
  RunOptions options;
  options.jobs = 1;
  RunResult r = RunPipeline(FanOut(3), dir / "out", ex, options);
  ASSERT_TRUE(r.status.ok());
  EXPECT_EQ(ex.max_running_, 1);
  EXPECT_EQ(ex.started_, (std::vector<std::string>{"m0", "m1", "m2", "r"}));
}

TEST(SchedulerTest, StopsLaunchingAfterTheFirstFailure) {
  TempDir dir;
  FakeExecutor ex;
  ex.fail_ = {"m1"};
  RunOptions options;
  options.jobs = 1;
  RunResult r = RunPipeline(FanOut(4), dir / "out", ex, options);
  EXPECT_EQ(r.status.code(), Code::kStageFailed);
  EXPECT_EQ(r.failed_stage, "m1");
  EXPECT_EQ(ex.started_, (std::vector<std::string>{"m0", "m1"}));
  EXPECT_EQ(r.stages[1].state, StageState::kFailed);
  for (std::size_t i : {2u, 3u, 4u}) EXPECT_EQ(r.stages[i].state, StageState::kNotRun) << i;
}

TEST(SchedulerTest, LetsRunningStagesFinishAfterAFailure) {
  TempDir dir;
  FakeExecutor ex;
  ex.gate_ = 2;  // m0 and m1 are in flight together; m0 fails
  ex.fail_ = {"m0"};
  RunOptions options;
  options.jobs = 2;
  RunResult r = RunPipeline(FanOut(5), dir / "out", ex, options);
  EXPECT_EQ(r.failed_stage, "m0");
  EXPECT_EQ(r.stages[1].state, StageState::kSucceeded);  // was running, finished
  EXPECT_EQ(r.stages.back().state, StageState::kNotRun);
  EXPECT_LT(ex.started_.size(), 6u);
}

// An asynchronous executor: Submit() only queues, AwaitCompletions() ends up
// to `batch_` queued stages at a time, oldest first. Records the threads it
// was called from and how many stages were in flight at once.
class AsyncFake : public StageExecutor {
 public:
  std::string_view name() const override { return "async-fake"; }
  Result<RunStats> Run(const StageRequest&, const StageOptions&) override {
    ADD_FAILURE() << "an asynchronous executor's Run() was called";
    return Status(Code::kInternal, "not here");
  }
  bool asynchronous() const override { return true; }
  void Submit(std::uint64_t ticket, const StageRequest& req, const StageOptions&) override {
    threads_.insert(std::this_thread::get_id());
    for (const auto& [in, path] : req.inputs) {
      if (finished_.count(path.filename().string()) == 0)
        violations_.push_back(req.instance + " submitted before its input " + path.string());
    }
    if (!tickets_.insert(ticket).second) violations_.push_back("ticket reused while in flight");
    queued_.push_back({ticket, req});
    started_.push_back(req.instance);
    max_in_flight_ = std::max(max_in_flight_, queued_.size());
  }
  std::vector<StageCompletion> AwaitCompletions(std::chrono::milliseconds) override {
    threads_.insert(std::this_thread::get_id());
    std::vector<StageCompletion> done;
    while (!queued_.empty() && done.size() < batch_) {
      auto [ticket, req] = queued_.front();
      queued_.pop_front();
      tickets_.erase(ticket);
      StageCompletion c;
      c.ticket = ticket;
      if (fail_.count(req.instance) != 0) {
        c.stats = Status(Code::kStageFailed, "stage '" + req.instance + "' failed: planned");
      } else {
        RunStats s;
        s.stage = req.stage;
        s.output_digest = "sha256:fake";
        c.stats = s;
        finished_.insert(req.output.filename().string());
      }
      done.push_back(std::move(c));
    }
    return done;
  }

  std::size_t batch_ = 1000000, max_in_flight_ = 0;
  std::deque<std::pair<std::uint64_t, StageRequest>> queued_;
  std::set<std::uint64_t> tickets_;
  std::set<std::thread::id> threads_;
  std::vector<std::string> started_;
  std::set<std::string> finished_, fail_;
  std::vector<std::string> violations_;
};

TEST(SchedulerAsync, TenThousandStagesInFlightAreAwaitedByTheCallingThreadAlone) {
  TempDir dir;
  AsyncFake ex;
  RunOptions options;
  options.jobs = 10000;
  RunResult r = RunPipeline(FanOut(20000), dir / "out", ex, options);
  ASSERT_TRUE(r.status.ok()) << r.status.message();
  EXPECT_EQ(ex.max_in_flight_, 10000u);
  EXPECT_EQ(ex.threads_, (std::set<std::thread::id>{std::this_thread::get_id()}));
  EXPECT_TRUE(ex.violations_.empty()) << ex.violations_[0];
  EXPECT_EQ(ex.started_.size(), 20001u);
  EXPECT_EQ(ex.started_.back(), "r");
  for (const StageOutcome& o : r.stages) {
    EXPECT_EQ(o.state, StageState::kSucceeded) << o.name;
    EXPECT_GE(o.slot, 0);
    EXPECT_LT(o.slot, 10000);
  }
}

TEST(SchedulerAsync, AFailureLetsTheStagesInFlightFinishAndLaunchesNothingMore) {
  TempDir dir;
  AsyncFake ex;
  ex.batch_ = 1;  // m0 fails while m1 is in flight
  ex.fail_ = {"m0"};
  RunOptions options;
  options.jobs = 2;
  RunResult r = RunPipeline(FanOut(5), dir / "out", ex, options);
  EXPECT_EQ(r.status.code(), Code::kStageFailed);
  EXPECT_EQ(r.failed_stage, "m0");
  EXPECT_EQ(ex.started_, (std::vector<std::string>{"m0", "m1"}));
  EXPECT_EQ(r.stages[1].state, StageState::kSucceeded);
  for (std::size_t i : {2u, 3u, 4u, 5u}) EXPECT_EQ(r.stages[i].state, StageState::kNotRun) << i;
  // Two in flight used the two slots.
  EXPECT_NE(r.stages[0].slot, r.stages[1].slot);
}

TEST(SchedulerAsync, OneJobRunsInPipelineOrderAndSlotsAreReused) {
  TempDir dir;
  AsyncFake ex;
  RunOptions options;
  options.jobs = 1;
  RunResult r = RunPipeline(FanOut(3), dir / "out", ex, options);
  ASSERT_TRUE(r.status.ok()) << r.status.message();
  EXPECT_EQ(ex.max_in_flight_, 1u);
  EXPECT_EQ(ex.started_, (std::vector<std::string>{"m0", "m1", "m2", "r"}));
  for (const StageOutcome& o : r.stages) EXPECT_EQ(o.slot, 0) << o.name;
}

TEST(SchedulerAsync, InterruptStopsLaunching) {
  TempDir dir;
  AsyncFake ex;
  CancelFlag cancel;
  cancel.Cancel();
  RunOptions options;
  options.jobs = 4;
  options.cancel = &cancel;
  RunResult r = RunPipeline(FanOut(3), dir / "out", ex, options);
  EXPECT_EQ(r.status.code(), Code::kInterrupted);
  EXPECT_TRUE(ex.started_.empty());
}

struct CountingObserver : RunObserver {
  std::atomic<int> started{0}, finished{0};
  void OnStageStarted(const PipelineStage&) override { ++started; }
  void OnStageFinished(const PipelineStage&, const StageOutcome&) override { ++finished; }
};

TEST(SchedulerTest, ObserverSeesEveryStage) {
  TempDir dir;
  FakeExecutor ex;
  CountingObserver obs;
  RunOptions options;
  options.jobs = 2;
  options.observer = &obs;
  ASSERT_TRUE(RunPipeline(FanOut(6), dir / "out", ex, options).status.ok());
  EXPECT_EQ(obs.started, 7);
  EXPECT_EQ(obs.finished, 7);
}

TEST(SchedulerTest, InterruptStopsBeforeLaunching) {
  TempDir dir;
  FakeExecutor ex;
  CancelFlag cancel;
  cancel.Cancel();
  RunOptions options;
  options.cancel = &cancel;
  RunResult r = RunPipeline(FanOut(2), dir / "out", ex, options);
  EXPECT_EQ(r.status.code(), Code::kInterrupted);
  EXPECT_TRUE(ex.started_.empty());
  // The flag is the caller's, passed in: a run without it is not cancelled.
  EXPECT_TRUE(RunPipeline(FanOut(2), dir / "out2", ex, RunOptions{}).status.ok());
}

TEST(SchedulerTest, UncreatableOutputDirectoryFailsUpFront) {
  TempDir dir;
  testing::WriteFile(dir / "file", "x");
  FakeExecutor ex;
  RunResult r = RunPipeline(FanOut(2), dir / "file" / "out", ex, RunOptions{});
  EXPECT_EQ(r.status.code(), Code::kOutputError);
  EXPECT_NE(r.status.message().find("cannot create output directory"), std::string::npos);
  EXPECT_TRUE(ex.started_.empty());
}

// Paths travel as JSON: an --out folder whose path is Latin-1 is refused
// before any stage starts, and nothing is created.
TEST(SchedulerTest, AnOutputFolderWhosePathIsNotUtf8IsRefusedUpFront) {
  TempDir dir;
  FakeExecutor ex;
  const std::filesystem::path out = dir / "caf\xe9";
  RunResult r = RunPipeline(FanOut(2), out, ex, RunOptions{});
  EXPECT_EQ(r.status.code(), Code::kOutputError);
  EXPECT_NE(r.status.message().find("not UTF-8"), std::string::npos) << r.status.message();
  EXPECT_TRUE(ex.started_.empty());
  EXPECT_FALSE(std::filesystem::exists(out));
}

// A real in-process run with many concurrent stages: the TSan build runs this.
void Count(StageContext& ctx) {
  std::size_t total = 0;
  for (const auto& [name, path] : ctx.inputs()) total += ctx.ReadInput(name).size();
  ctx.WriteOutput(std::to_string(total + ctx.seed() % 7) + "\n");
}

TEST(SchedulerTest, InProcessPipelineIsDeterministicAcrossJobCounts) {
  Registry registry;
  registry.Add("count", &Count, __FILE__, __LINE__);
  std::string yaml = "job: {seed: 3}\nstages:\n";
  for (int i = 0; i < 40; ++i) yaml += "  - {name: m" + std::to_string(i) + ", stage: count}\n";
  yaml += "  - name: r\n    stage: count\n    inputs:\n";
  for (int i = 0; i < 40; ++i)
    yaml += "      i" + std::to_string(i) + ": {from: m" + std::to_string(i) + "}\n";
  auto p = ParsePipeline(yaml, "/p/x.yaml");
  ASSERT_TRUE(p.ok());
  InProcessExecutor ex(registry);
  TempDir dir;
  std::string first;
  for (int jobs : {1, 4, 8}) {
    RunOptions options;
    options.jobs = jobs;
    RunResult r = RunPipeline(*p, dir / std::to_string(jobs), ex, options);
    ASSERT_TRUE(r.status.ok()) << r.status.message();
    std::string digest = r.stages.back().stats->output_digest;
    if (first.empty()) first = digest;
    EXPECT_EQ(digest, first) << "jobs=" << jobs;
  }
}

// A cache that hits for the stages the test names and records every call.
class FakeCache : public StageCache {
 public:
  std::string Prepare(const PipelineStage& st, const StageRequest&,
                      const std::map<std::string, std::string>& upstream) override {
    std::lock_guard<std::mutex> lock(mu_);
    prepared_[st.name] = upstream;
    return st.name;
  }
  std::optional<RunStats> Lookup(const PipelineStage& st, const StageRequest&,
                                 const std::string& token) override {
    std::lock_guard<std::mutex> lock(mu_);
    EXPECT_EQ(token, st.name);
    looked_up_.insert(st.name);
    auto it = hits_.find(st.name);
    if (it == hits_.end()) return std::nullopt;
    return it->second;
  }
  void Store(const PipelineStage& st, const StageRequest&, const std::string& token,
             const RunStats* stats) override {
    std::lock_guard<std::mutex> lock(mu_);
    EXPECT_EQ(token, st.name);
    if (stats != nullptr) stored_[st.name] = stats->output_digest;
  }

  std::mutex mu_;
  std::map<std::string, RunStats> hits_;
  std::map<std::string, std::map<std::string, std::string>> prepared_;  // with upstream digests
  std::set<std::string> looked_up_;
  std::map<std::string, std::string> stored_;
};

TEST(SchedulerTest, ACacheHitMarksTheStageCachedAndSkipsTheExecutor) {
  TempDir dir;
  FakeExecutor ex;
  FakeCache cache;
  RunStats hit;
  hit.stage = "s";
  hit.executor = "ray";
  hit.output_digest = "sha256:from-cache";
  cache.hits_["m0"] = hit;
  RunOptions options;
  options.jobs = 2;
  options.cache = &cache;
  options.lookup_cache = true;
  RunResult r = RunPipeline(FanOut(3), dir / "out", ex, options);
  ASSERT_TRUE(r.status.ok()) << r.status.message();
  EXPECT_EQ(std::set<std::string>(ex.started_.begin(), ex.started_.end()),
            (std::set<std::string>{"m1", "m2", "r"}));
  ASSERT_EQ(r.stages[0].name, "m0");
  EXPECT_TRUE(r.stages[0].cached);
  EXPECT_EQ(r.stages[0].state, StageState::kSucceeded);
  EXPECT_EQ(r.stages[0].stats->executor, "ray");
  for (std::size_t i = 1; i < r.stages.size(); ++i) EXPECT_FALSE(r.stages[i].cached);
  // Downstream stages learn their inputs' digests, cached or not.
  EXPECT_EQ(cache.prepared_["r"],
            (std::map<std::string, std::string>{
                {"i0", "sha256:from-cache"}, {"i1", "sha256:fake"}, {"i2", "sha256:fake"}}));
  EXPECT_EQ(cache.stored_.count("m0"), 0u) << "a hit is not stored again";
  EXPECT_EQ(cache.stored_.size(), 3u);

  // Without lookup_cache the cache is only told.
  FakeExecutor ex2;
  FakeCache cache2;
  cache2.hits_["m0"] = hit;
  options.cache = &cache2;
  options.lookup_cache = false;
  r = RunPipeline(FanOut(3), dir / "out2", ex2, options);
  ASSERT_TRUE(r.status.ok()) << r.status.message();
  EXPECT_EQ(ex2.started_.size(), 4u);
  EXPECT_TRUE(cache2.looked_up_.empty());
  EXPECT_EQ(cache2.stored_.size(), 4u);
}

}  // namespace
}  // namespace stagekit

namespace stagekit {
namespace {

// Records, per stage, whether the scheduler asked for its output to be
// fetched; it keeps outputs remote, or not, as told.
class FetchRecorder : public StageExecutor {
 public:
  explicit FetchRecorder(bool remote) : remote_(remote) {}
  std::string_view name() const override { return "recorder"; }
  bool outputs_stay_remote() const override { return remote_; }
  Result<RunStats> Run(const StageRequest& req, const StageOptions& options) override {
    std::lock_guard<std::mutex> lock(mu_);
    fetched_[req.instance] = options.fetch_output;
    RunStats s;
    s.stage = req.stage;
    s.output_digest = "sha256:fake";
    return s;
  }
  std::map<std::string, bool> fetched() {
    std::lock_guard<std::mutex> lock(mu_);
    return fetched_;
  }

 private:
  bool remote_;
  std::mutex mu_;
  std::map<std::string, bool> fetched_;
};

TEST(SchedulerOutputs, WhatIsFetchedFollowsOutputsAndKeep) {
  TempDir dir;
  auto p = ParsePipeline(
      "stages:\n"
      "  - {name: a, stage: s}\n"
      "  - {name: b, stage: s, inputs: {x: {from: a}}, keep: true}\n"
      "  - {name: c, stage: s, inputs: {x: {from: b}}}\n"
      "  - {name: d, stage: s, inputs: {x: {from: c}}, keep: false}\n"
      "  - {name: e, stage: s, inputs: {x: {from: c}}}\n",
      dir / "p.yaml");
  ASSERT_TRUE(p.ok()) << p.status().message();
  using F = std::map<std::string, bool>;
  auto run = [&](RunOptions::Outputs outputs, bool remote) {
    FetchRecorder ex(remote);
    RunOptions options;
    options.outputs = outputs;
    RunResult r = RunPipeline(*p, dir / "out", ex, options);
    EXPECT_TRUE(r.status.ok()) << r.status.message();
    for (const StageOutcome& o : r.stages) EXPECT_EQ(o.fetched, ex.fetched()[o.name]) << o.name;
    return ex.fetched();
  };
  using O = RunOptions::Outputs;
  EXPECT_EQ(run(O::kAll, true),
            (F{{"a", true}, {"b", true}, {"c", true}, {"d", false}, {"e", true}}));
  // final: what no stage reads (e; d says keep: false), plus keep: true (b).
  EXPECT_EQ(run(O::kFinal, true),
            (F{{"a", false}, {"b", true}, {"c", false}, {"d", false}, {"e", true}}));
  EXPECT_EQ(run(O::kNone, true),
            (F{{"a", false}, {"b", false}, {"c", false}, {"d", false}, {"e", false}}));
  // An executor whose stages pass data as files writes every output anyway.
  EXPECT_EQ(run(O::kNone, false),
            (F{{"a", true}, {"b", true}, {"c", true}, {"d", true}, {"e", true}}));
  EXPECT_EQ(ParseOutputs("final"), O::kFinal);
  EXPECT_EQ(ParseOutputs("some"), std::nullopt);
  EXPECT_EQ(OutputsName(O::kNone), "none");
}

// ---- dynamic fan-out: instances made from a stage's item list at run time

void WriteLines(StageContext& ctx) { ctx.WriteOutput(ctx.kwargs().value("lines", std::string())); }
void Work(StageContext& ctx) {
  ctx.WriteOutput(ctx.instance() + " " + ctx.kwargs().dump() + " " + std::to_string(ctx.seed()) +
                  "\n");
}
void Gather(StageContext& ctx) {
  std::string out;
  for (const auto& [name, path] : ctx.inputs()) out += name + ": " + ctx.ReadInput(name);
  ctx.WriteOutput(out);
}

namespace fs = std::filesystem;

void AddDynamicStages(Registry& registry) {
  registry.Add("lines", &WriteLines, __FILE__, __LINE__);
  registry.Add("work", &Work, __FILE__, __LINE__);
  registry.Add("gather", &Gather, __FILE__, __LINE__);
}

// Two levels: split's items make work[a..c]; split2 (after every work) makes
// more[x], more[y]; gather and final collect them.
constexpr const char* kTwoLevels = R"(job: {seed: 3}
stages:
  - name: split
    stage: lines
    kwargs:
      lines: |
        {"key": "a", "n": 1}

        {"key": "b", "n": 2}
        {"n": 3, "key": "c"}
  - name: work
    stage: work
    foreach: {from: split}
    kwargs: {n: "{n}", label: "item-{key}"}
  - name: gather
    stage: gather
    inputs: {parts: {from: "work[*]"}, first: {from: "work[a*]"}}
  - name: split2
    stage: lines
    inputs: {after: {from: "work[*]"}}
    kwargs: {lines: "\"x\"\n\"y\"\n"}
  - name: more
    stage: work
    foreach: {from: split2}
    output: "more/{item}.txt"
  - name: final
    stage: gather
    inputs: {m: {from: "more[*]"}, g: {from: gather}}
)";

TEST(SchedulerDynamic, ItemsMakeInstancesThatRunAndAreCollectedInKeyOrder) {
  auto p = ParsePipeline(kTwoLevels, "/p/x.yaml");
  ASSERT_TRUE(p.ok()) << p.status().message();
  EXPECT_TRUE(p->dynamic());
  Registry registry;
  AddDynamicStages(registry);
  InProcessExecutor ex(registry);
  TempDir dir;
  std::string first;
  for (int jobs : {1, 4, 8}) {
    RunOptions options;
    options.jobs = jobs;
    const fs::path out = dir / std::to_string(jobs);
    RunResult r = RunPipeline(*p, out, ex, options);
    ASSERT_TRUE(r.status.ok()) << r.status.message();
    ASSERT_NE(r.pipeline, nullptr);
    std::vector<std::string> names;
    for (const PipelineStage& st : r.pipeline->stages) names.push_back(st.name);
    // The pipeline as it ran, in item order whatever order things finished in.
    EXPECT_EQ(names, (std::vector<std::string>{"split", "work[a]", "work[b]", "work[c]", "gather",
                                               "split2", "more[x]", "more[y]", "final"}));
    ASSERT_EQ(r.stages.size(), names.size());
    for (std::size_t i = 0; i < names.size(); ++i) {
      EXPECT_EQ(r.stages[i].name, names[i]);
      EXPECT_EQ(r.stages[i].state, StageState::kSucceeded) << names[i];
    }
    // {n} keeps its type; the default output is NAME/KEY.out.
    EXPECT_EQ(testing::ReadFile(out / "work" / "b.out"),
              "work[b] {\"label\":\"item-b\",\"n\":2} " +
                  std::to_string(DeriveSeed(p->job, "work[b]")) + "\n");
    const std::string gathered = testing::ReadFile(out / "gather.out");
    EXPECT_EQ(gathered.substr(0, gathered.find('\n') + 1),
              "first[a]: work[a] {\"label\":\"item-a\",\"n\":1} " +
                  std::to_string(DeriveSeed(p->job, "work[a]")) + "\n");
    EXPECT_NE(gathered.find("parts[c]: work[c]"), std::string::npos) << gathered;
    EXPECT_TRUE(fs::exists(out / "more" / "y.txt"));
    const PipelineStage& final_stage = r.pipeline->stages.back();
    EXPECT_EQ(final_stage.inputs.size(), 3u);
    EXPECT_EQ(final_stage.inputs.at("m[y]").from_stage, "more[y]");
    const std::string digest = r.stages.back().stats->output_digest;
    if (first.empty()) first = digest;
    EXPECT_EQ(digest, first) << "jobs=" << jobs;
  }
}

TEST(SchedulerDynamic, AnEmptyItemListMakesNoInstancesAndTheCollectGetsNone) {
  auto p = ParsePipeline(R"(stages:
  - {name: split, stage: lines, kwargs: {lines: "\n"}}
  - {name: work, stage: work, foreach: {from: split}}
  - {name: gather, stage: gather, inputs: {parts: {from: "work[*]"}}}
)",
                         "/p/x.yaml");
  ASSERT_TRUE(p.ok()) << p.status().message();
  Registry registry;
  AddDynamicStages(registry);
  InProcessExecutor ex(registry);
  TempDir dir;
  RunResult r = RunPipeline(*p, dir / "out", ex, RunOptions{});
  ASSERT_TRUE(r.status.ok()) << r.status.message();
  ASSERT_EQ(r.stages.size(), 2u);
  EXPECT_EQ(r.stages[1].name, "gather");
  EXPECT_TRUE(r.pipeline->stages[1].inputs.empty());
  EXPECT_EQ(testing::ReadFile(dir / "out" / "gather.out"), "");
}

// A bad item list fails the run at the template, naming the producer, the
// file and the line; nothing downstream runs.
TEST(SchedulerDynamic, ABadItemListFailsTheRunAtItsLine) {
  struct Case {
    std::string lines, output, expect;
  } cases[] = {
      {"{\"key\": \"a\"}\n{oops\n", "", "split.out:2: the line is not JSON"},
      {"{\"key\": \"a\"}\n{\"key\": \"a\"}\n", "",
       "split.out:2: the item key 'a' is the key of line 1"},
      {"{\"key\": \"a/b\"}\n", "", "split.out:1: the item key 'a/b' holds '/'"},
      {"{\"n\": {\"deep\": 1}}\n", "", "split.out:1: the item nests a list or an object"},
      {"[[[[1]]]]\n", "", "split.out:1: the item nests a list or an object"},
      {"[1, 2]\n", "", "split.out:1: the line is not an item"},
      {"{\"bad-name\": 1}\n", "", "the item's field 'bad-name' cannot name a foreach value"},
      {"{\"n\": null}\n", "", "the item's field 'n' is not a string, number or boolean"},
      {"{}\n", "", "split.out:1: the item is empty"},
      {std::string(70000, ' ') + "1\n", "", "split.out:1: the line is over 65536 bytes"},
      {"{\"key\": \"a\"}\n{\"key\": \"b\"}\n", "same.txt",
       "instances 'work[a]' and 'work[b]' would both write 'same.txt'"},
      {"{\"key\": \"a\"}\n", "{nope}.txt", "'{nope}' is not defined by the stage's foreach"},
      {"{\"key\": \"gather\"}\n", "gather.out/{key}", "inside 'gather.out', the output file"},
  };
  Registry registry;
  AddDynamicStages(registry);
  InProcessExecutor ex(registry);
  TempDir dir;
  int n = 0;
  for (const Case& c : cases) {
    Json lines = c.lines;
    std::string yaml =
        "stages:\n  - {name: split, stage: lines, kwargs: {lines: " + lines.dump() +
        "}}\n  - {name: work, stage: work, foreach: {from: split}" +
        (c.output.empty() ? "" : ", output: \"" + c.output + "\"") +
        "}\n  - {name: gather, stage: gather, inputs: {parts: {from: \"work[*]\"}}}\n";
    auto p = ParsePipeline(yaml, "/p/x.yaml");
    ASSERT_TRUE(p.ok()) << p.status().message();
    RunResult r = RunPipeline(*p, dir / std::to_string(n++), ex, RunOptions{});
    EXPECT_EQ(r.status.code(), Code::kInvalidPipeline) << c.expect;
    EXPECT_NE(r.status.message().find(c.expect), std::string::npos) << r.status.message();
    EXPECT_EQ(r.failed_stage, "work[*]");
    ASSERT_EQ(r.stages.size(), 2u);  // split, gather: the template made nothing
    EXPECT_EQ(r.stages[0].state, StageState::kSucceeded);
    EXPECT_EQ(r.stages[1].state, StageState::kNotRun);
  }
  // Past the item cap.
  std::string many;
  for (int i = 0; i <= 100000; ++i) many += std::to_string(i) + "\n";
  Json lines = many;
  auto p =
      ParsePipeline("stages:\n  - {name: split, stage: lines, kwargs: {lines: " + lines.dump() +
                        "}}\n  - {name: work, stage: work, foreach: {from: split}}\n",
                    "/p/x.yaml");
  ASSERT_TRUE(p.ok()) << p.status().message();
  RunResult r = RunPipeline(*p, dir / "many", ex, RunOptions{});
  EXPECT_NE(r.status.message().find("split.out:100001: more than 100000 items"), std::string::npos)
      << r.status.message();
}

}  // namespace
}  // namespace stagekit
