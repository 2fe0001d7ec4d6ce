// Warm stages: setup once per worker, reused across invocations, outputs
// byte-identical to a cold run. In-process against a private registry; the
// subprocess executor against the example library's warm stages.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "stagekit/executor.h"
#include "unit/test_util.h"
#include "warm.h"

namespace stagekit {
namespace {

using testing::ListFiles;
using testing::ReadFile;
using testing::TempDir;
using testing::WriteFile;

// ---- in-process -------------------------------------------------------------

std::atomic<int> g_setups{0};
std::atomic<int> g_overlaps{0};
std::atomic<bool> g_fail_setup{false};

// Setup derives a table from setup.seed; Run reads it and the stage seed.
class Model {
 public:
  explicit Model(const WarmContext& w) {
    if (g_fail_setup) throw std::runtime_error("model file is missing");
    ++g_setups;
    std::uint64_t x = w.setup().value("seed", 1u);
    for (auto& v : table_) v = x = x * 6364136223846793005ull + 1442695040888963407ull;
  }
  void Run(StageContext& ctx) {
    if (busy_.exchange(true)) ++g_overlaps;
    std::this_thread::sleep_for(std::chrono::milliseconds(ctx.kwargs().value("hold_ms", 0)));
    std::uint64_t v = table_[ctx.seed() % table_.size()] ^ ctx.seed();
    ctx.WriteOutput(std::to_string(v) + " " + ctx.instance() + "\n");
    busy_ = false;
  }

 private:
  std::array<std::uint64_t, 64> table_{};
  std::atomic<bool> busy_{false};
};

class WarmInProcessTest : public ::testing::Test {
 protected:
  WarmInProcessTest() {
    registry_.AddWarm("t.model", &internal::WarmOps<Model>::Cold,
                      internal::WarmOps<Model>::Get(false), __FILE__, __LINE__);
    registry_.AddWarm("t.shared", &internal::WarmOps<Model>::Cold,
                      internal::WarmOps<Model>::Get(true), __FILE__, __LINE__);
    DropWarmInstances();
    g_setups = 0;
    g_overlaps = 0;
    g_fail_setup = false;
  }
  ~WarmInProcessTest() override { DropWarmInstances(); }
  StageRequest Request(const std::string& stage, const std::string& instance,
                       Json kwargs = {{"setup", {{"seed", 3}}}}) {
    StageRequest r;
    r.stage = stage;
    r.instance = instance;
    r.output = dir_ / (instance + ".out");
    r.job = JobSpec{"j", 11, Json::object()};
    r.kwargs = std::move(kwargs);
    return r;
  }

  Registry registry_;
  TempDir dir_;
};

TEST_F(WarmInProcessTest, SetsUpOnceAcrossInvocationsAndMatchesAColdRun) {
  std::vector<std::string> warm_bytes;
  for (int i = 0; i < 12; ++i) {
    auto r = InvokeWarm(Request("t.model", "m" + std::to_string(i)), registry_, true);
    ASSERT_TRUE(r.ok()) << r.status().message();
    const Json& w = r->metrics.at("warm");
    EXPECT_EQ(w["setups"], 1);
    EXPECT_EQ(w["reused"], i > 0);
    EXPECT_EQ(w["worker"], "pid:" + std::to_string(::getpid()));
    warm_bytes.push_back(ReadFile(dir_ / ("m" + std::to_string(i) + ".out")));
  }
  EXPECT_EQ(g_setups, 1);
  for (int i = 0; i < 12; ++i) {
    auto r = InvokeWarm(Request("t.model", "m" + std::to_string(i)), registry_, false);
    ASSERT_TRUE(r.ok()) << r.status().message();
    EXPECT_EQ(r->metrics["warm"]["mode"], "cold");
    EXPECT_EQ(ReadFile(dir_ / ("m" + std::to_string(i) + ".out")), warm_bytes[i]) << i;
  }
  EXPECT_EQ(g_setups, 13);  // the cold runs set up every time
  std::set<std::string> distinct(warm_bytes.begin(), warm_bytes.end());
  EXPECT_EQ(distinct.size(), warm_bytes.size()) << "outputs should differ per instance";
}

TEST_F(WarmInProcessTest, InstancesAreKeyedBySetupAndJob) {
  ASSERT_TRUE(InvokeWarm(Request("t.model", "a"), registry_, true).ok());
  ASSERT_TRUE(
      InvokeWarm(Request("t.model", "b", {{"setup", {{"seed", 4}}}}), registry_, true).ok());
  StageRequest other_job = Request("t.model", "c");
  other_job.job.seed = 12;
  ASSERT_TRUE(InvokeWarm(other_job, registry_, true).ok());
  // Other kwargs outside `setup` share the instance.
  ASSERT_TRUE(
      InvokeWarm(Request("t.model", "d", {{"setup", {{"seed", 3}}}, {"x", 1}}), registry_, true)
          .ok());
  EXPECT_EQ(g_setups, 3);
}

TEST_F(WarmInProcessTest, ConcurrentCallersNeverShareAnInstance) {
  constexpr int kThreads = 4;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 6; ++i) {
        std::string name = "c" + std::to_string(t) + "_" + std::to_string(i);
        auto r = InvokeWarm(Request("t.model", name, {{"setup", {{"seed", 3}}}, {"hold_ms", 2}}),
                            registry_, true);
        if (!r.ok()) ++failures;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures, 0);
  EXPECT_EQ(g_overlaps, 0) << "two threads ran in one instance at once";
  EXPECT_GE(g_setups, 1);
  EXPECT_LE(g_setups, kThreads) << "more setups than callers at once";
}

TEST_F(WarmInProcessTest, AThreadSafeStageSharesOneInstance) {
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 4; ++i) {
        std::string name = "s" + std::to_string(t) + "_" + std::to_string(i);
        EXPECT_TRUE(InvokeWarm(Request("t.shared", name), registry_, true).ok());
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(g_setups, 1);
}

TEST_F(WarmInProcessTest, AFailedSetupFailsTheInvocationAndIsRetriedNextTime) {
  WriteFile(dir_ / "x.out", "old output");
  g_fail_setup = true;
  auto r = InvokeWarm(Request("t.model", "x"), registry_, true);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kStageFailed);
  EXPECT_EQ(r.status().message(),
            "stage 'x' (t.model) failed: warm setup failed: model file is missing");
  EXPECT_EQ(ReadFile(dir_ / "x.out"), "old output");
  EXPECT_EQ(ListFiles(dir_.path()), std::vector<std::string>{"x.out"});  // no temp left
  g_fail_setup = false;
  r = InvokeWarm(Request("t.model", "x"), registry_, true);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->metrics["warm"]["reused"], false);
  EXPECT_EQ(g_setups, 1);
}

TEST_F(WarmInProcessTest, PlainStagesReportNoWarmMetrics) {
  registry_.Add(
      "t.plain", [](StageContext& ctx) { ctx.WriteOutput("plain\n"); }, __FILE__, __LINE__);
  auto r = Invoke(Request("t.plain", "p"), registry_);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_FALSE(r->metrics.contains("warm"));
  EXPECT_EQ(registry_.Find("t.plain")->warm, nullptr);
  EXPECT_NE(registry_.Find("t.model")->warm, nullptr);
}

// ---- subprocess: persistent children ----------------------------------------

bool Alive(pid_t pid) { return ::kill(pid, 0) == 0; }

pid_t WorkerPid(const RunStats& stats) {
  std::string w = stats.metrics.at("warm").at("worker").get<std::string>();
  return static_cast<pid_t>(std::stol(w.substr(w.find(':') + 1)));
}

class WarmSubprocessTest : public ::testing::Test {
 protected:
  WarmSubprocessTest() {
    // The parent must know the stages are warm: it loads the library, as the CLI does.
    EXPECT_TRUE(LoadStageLibrary(STAGEKIT_EXAMPLE_STAGES).ok());
    executor_ = Make();
  }
  std::unique_ptr<SubprocessExecutor> Make(
      SubprocessExecutor::Options::Persistent mode =
          SubprocessExecutor::Options::Persistent::kWarmStages) {
    SubprocessExecutor::Options o;
    o.runner = STAGEKIT_CLI;
    o.libraries = {STAGEKIT_EXAMPLE_STAGES};
    o.kill_grace = std::chrono::milliseconds(300);
    o.persistent = mode;
    return std::make_unique<SubprocessExecutor>(o);
  }
  StageRequest Request(const std::string& stage, const std::string& instance, Json kwargs) {
    StageRequest r;
    r.stage = stage;
    r.instance = instance;
    r.output = dir_ / (instance + ".out");
    r.job = JobSpec{"j", 5, Json::object()};
    r.kwargs = std::move(kwargs);
    return r;
  }
  StageRequest Embed(int i) {
    return Request("warm.embed", "e" + std::to_string(i), {{"setup", {{"rounds", 1}}}});
  }

  TempDir dir_;
  std::unique_ptr<SubprocessExecutor> executor_;
};

TEST_F(WarmSubprocessTest, OneChildSetsUpOnceAndMatchesInProcessCold) {
  pid_t pid = -1;
  for (int i = 0; i < 8; ++i) {
    auto r = executor_->Run(Embed(i), {});
    ASSERT_TRUE(r.ok()) << r.status().message();
    EXPECT_EQ(r->executor, "subprocess");
    EXPECT_EQ(r->metrics["warm"]["setups"], 1);
    EXPECT_EQ(r->metrics["warm"]["reused"], i > 0);
    if (i == 0) pid = WorkerPid(*r);
    EXPECT_EQ(WorkerPid(*r), pid) << "the same persistent child serves every request";
    EXPECT_NE(pid, ::getpid());
  }
  EXPECT_EQ(executor_->children_started(), 1u);
  for (int i = 0; i < 8; ++i) {
    std::string sub = ReadFile(dir_ / ("e" + std::to_string(i) + ".out"));
    auto cold = InvokeWarm(Embed(i), Registry::Global(), false);
    ASSERT_TRUE(cold.ok()) << cold.status().message();
    EXPECT_EQ(ReadFile(dir_ / ("e" + std::to_string(i) + ".out")), sub) << i;
  }
  EXPECT_TRUE(Alive(pid));
  executor_.reset();
  EXPECT_FALSE(Alive(pid)) << "children exit (and are reaped) when the executor goes";
}

TEST_F(WarmSubprocessTest, ConcurrentRunsGetTheirOwnChildrenEachSetUpOnce) {
  std::vector<std::thread> threads;
  std::mutex mu;
  std::map<pid_t, int> max_setups;
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 4; ++i) {
        auto r = executor_->Run(Embed(t * 10 + i), {});
        ASSERT_TRUE(r.ok()) << r.status().message();
        std::lock_guard<std::mutex> lock(mu);
        int& m = max_setups[WorkerPid(*r)];
        m = std::max(m, r->metrics["warm"]["setups"].get<int>());
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_LE(executor_->children_started(), 3u);
  EXPECT_EQ(max_setups.size(), executor_->children_started());
  for (const auto& [pid, setups] : max_setups) EXPECT_EQ(setups, 1) << "pid " << pid;
}

TEST_F(WarmSubprocessTest, ATimeoutKillsAndReplacesTheChild) {
  WriteFile(dir_ / "slow.out", "old output");
  auto first = executor_->Run(Request("warm.probe", "warmup", Json::object()), {});
  ASSERT_TRUE(first.ok()) << first.status().message();
  pid_t pid = WorkerPid(*first);
  StageOptions opts;
  opts.timeout = std::chrono::milliseconds(300);
  auto r = executor_->Run(Request("warm.probe", "slow", {{"sleep_ms", 20000}}), opts);
  ASSERT_EQ(r.status().code(), Code::kTimeout) << r.status().message();
  EXPECT_NE(r.status().message().find("timed out after 300ms"), std::string::npos)
      << r.status().message();
  EXPECT_FALSE(Alive(pid)) << "the timed-out child must be gone";
  EXPECT_EQ(ReadFile(dir_ / "slow.out"), "old output");
  auto next = executor_->Run(Request("warm.probe", "after", Json::object()), {});
  ASSERT_TRUE(next.ok()) << next.status().message();
  EXPECT_NE(WorkerPid(*next), pid);
  EXPECT_EQ(next->metrics["warm"]["reused"], false);  // a new child sets up again
  EXPECT_EQ(executor_->children_started(), 2u);
  EXPECT_EQ(executor_->children_alive(), 1u);
}

TEST_F(WarmSubprocessTest, AChildThatDiesMidRequestFailsItWithItsStderrAndIsReplaced) {
  WriteFile(dir_ / "boom.out", "old output");
  auto r = executor_->Run(Request("warm.probe", "boom", {{"crash", true}}), {});
  ASSERT_EQ(r.status().code(), Code::kStageFailed);
  const std::string& m = r.status().message();
  EXPECT_NE(m.find("stage 'boom' (warm.probe) (persistent subprocess pid "), std::string::npos)
      << m;
  EXPECT_NE(m.find("was killed by SIGABRT without reporting a result"), std::string::npos) << m;
  EXPECT_NE(m.find("probe boom about to die"), std::string::npos) << m;
  EXPECT_EQ(ReadFile(dir_ / "boom.out"), "old output");
  EXPECT_EQ(ListFiles(dir_.path()), std::vector<std::string>{"boom.out"});  // no temp left
  auto next = executor_->Run(Request("warm.probe", "next", Json::object()), {});
  ASSERT_TRUE(next.ok()) << next.status().message();
  EXPECT_EQ(
      ReadFile(dir_ / "next.out"),
      "probe next " + std::to_string(DeriveSeed(JobSpec{"j", 5, Json::object()}, "next")) + "\n");
  EXPECT_EQ(executor_->children_started(), 2u);
}

TEST_F(WarmSubprocessTest, AnIdleChildThatDiedIsReplacedBeforeTheNextRequest) {
  auto first = executor_->Run(Request("warm.probe", "one", Json::object()), {});
  ASSERT_TRUE(first.ok()) << first.status().message();
  pid_t pid = WorkerPid(*first);
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  // Dead (a zombie, its socket closed) before the next request goes out.
  for (int i = 0; i < 500; ++i) {
    std::string stat = ReadFile("/proc/" + std::to_string(pid) + "/stat");
    if (stat.find(") Z ") != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  auto second = executor_->Run(Request("warm.probe", "two", Json::object()), {});
  ASSERT_TRUE(second.ok()) << second.status().message();
  EXPECT_NE(WorkerPid(*second), pid);
  EXPECT_EQ(executor_->children_started(), 2u);
  EXPECT_EQ(executor_->children_alive(), 1u);
}

TEST_F(WarmSubprocessTest, SetupAndStageFailuresKeepTheChild) {
  auto bad = executor_->Run(Request("warm.probe", "bad", {{"setup", {{"fail", "no model"}}}}), {});
  ASSERT_EQ(bad.status().code(), Code::kStageFailed);
  EXPECT_NE(
      bad.status().message().find("stage 'bad' (warm.probe) failed: warm setup failed: no model"),
      std::string::npos)
      << bad.status().message();
  auto threw = executor_->Run(Request("warm.probe", "threw", {{"throw", "bad pixel"}}), {});
  ASSERT_EQ(threw.status().code(), Code::kStageFailed);
  EXPECT_NE(threw.status().message().find("failed: bad pixel"), std::string::npos);
  auto good = executor_->Run(Request("warm.probe", "good", Json::object()), {});
  ASSERT_TRUE(good.ok()) << good.status().message();
  EXPECT_EQ(executor_->children_started(), 1u);
}

TEST_F(WarmSubprocessTest, PlainStagesUseAFreshProcessUnlessAskedOtherwise) {
  auto a = executor_->Run(Request("warm.collect", "a", Json::object()), {});
  ASSERT_TRUE(a.ok()) << a.status().message();
  EXPECT_EQ(executor_->children_started(), 0u);
  auto all = Make(SubprocessExecutor::Options::Persistent::kAll);
  for (int i = 0; i < 3; ++i) {
    auto b = all->Run(Request("warm.collect", "b" + std::to_string(i), Json::object()), {});
    ASSERT_TRUE(b.ok()) << b.status().message();
  }
  EXPECT_EQ(all->children_started(), 1u);
  EXPECT_EQ(ReadFile(dir_ / "a.out"), ReadFile(dir_ / "b0.out"));
}

TEST(WarmServe, AnswersOneLinePerRequestAndExitsAtEndOfInput) {
  TempDir dir;
  std::string lines;
  for (const char* name : {"x", "y"}) {
    StageRequest r;
    r.stage = "warm.probe";
    r.instance = name;
    r.output = dir / (std::string(name) + ".out");
    r.executor = "subprocess";
    lines += CanonicalJson(r.ToJson()) + "\n";
  }
  lines += "not json\n";
  auto res = testing::RunCommand(
      {STAGEKIT_CLI, "stage", "--serve", "--stages", STAGEKIT_EXAMPLE_STAGES}, lines);
  ASSERT_EQ(res.exit_code, 0) << testing::Show(res);
  std::vector<std::string> replies;
  std::size_t at = 0;
  for (std::size_t nl; (nl = res.out.find('\n', at)) != std::string::npos; at = nl + 1)
    replies.push_back(res.out.substr(at, nl - at));
  ASSERT_EQ(replies.size(), 3u) << res.out;
  Json first = Json::parse(replies[0]), second = Json::parse(replies[1]);
  EXPECT_EQ(first["metrics"]["warm"]["reused"], false);
  EXPECT_EQ(second["metrics"]["warm"]["reused"], true);
  EXPECT_EQ(Json::parse(replies[2])["error"]["code"], "bad_request");
  EXPECT_EQ(ReadFile(dir / "x.out").rfind("probe x ", 0), 0u);
}

}  // namespace
}  // namespace stagekit
