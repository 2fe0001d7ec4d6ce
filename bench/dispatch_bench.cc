// What dispatching a stage costs, next to the floor each executor stands on:
//
//   BM_PlainCall             the no-op stage body called directly, plus the
//                            rename that puts its output in place: the floor
//   BM_InProcessDispatch     InProcessExecutor::Run of the same stage
//                            (difference to BM_PlainCall = stagekit overhead)
//   BM_SpawnFloor            posix_spawn + waitpid of /bin/true: the floor
//   BM_SpawnCxxFloor         posix_spawn + waitpid of a no-op C++ program
//                            (loads libstdc++, as any C++ runner must)
//   BM_SpawnRunner           posix_spawn + waitpid of `stagekit --version`:
//                            exec + dynamic linking of the runner, no stage
//   BM_SubprocessDispatch    SubprocessExecutor::Run of bench.noop
//   BM_PipelineThroughput    RunPipeline over 1,000 independent no-op stages,
//                            in-process, jobs=1 and jobs=2
//
// Every benchmark reports wall time (UseRealTime) per dispatched stage, plus
// items_per_second (stages/s) and `per_stage` (seconds per stage).
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include "stagekit/executor.h"
#include "stagekit/invoke.h"
#include "stagekit/pipeline.h"
#include "stagekit/stage.h"

extern char** environ;

namespace {

namespace fs = std::filesystem;

// The same body as bench.noop (bench_stages.cc) and test.noop.
void Noop(stagekit::StageContext& ctx) { ctx.WriteOutput(""); }

// A registry local to the benchmark, holding only the no-op stage.
const stagekit::Registry& BenchRegistry() {
  static stagekit::Registry* registry = [] {
    auto* r = new stagekit::Registry;
    r->Add("bench.noop", &Noop, __FILE__, __LINE__);
    return r;
  }();
  return *registry;
}

// A fresh temporary directory, removed when the benchmark function returns.
class TempDir {
 public:
  TempDir() {
    std::string base = (fs::temp_directory_path() / "stagekit-bench.XXXXXX").string();
    std::vector<char> buf(base.begin(), base.end());
    buf.push_back('\0');
    if (::mkdtemp(buf.data()) == nullptr) {
      std::perror("mkdtemp");
      std::abort();
    }
    path_ = buf.data();
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

void SetPerStage(benchmark::State& state, std::int64_t stages_per_iteration) {
  const std::int64_t items = static_cast<std::int64_t>(state.iterations()) * stages_per_iteration;
  state.SetItemsProcessed(items);
  state.counters["per_stage"] = benchmark::Counter(
      static_cast<double>(items), benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

stagekit::StageRequest NoopRequest(const fs::path& dir) {
  stagekit::StageRequest req;
  req.stage = "bench.noop";
  req.instance = "bench.noop";
  req.output = dir / "noop.out";
  req.job.name = "bench";
  req.job.seed = 1;
  return req;
}

// posix_spawn + waitpid; returns the exit status or -1.
int SpawnAndWait(const std::vector<const char*>& argv) {
  pid_t pid = 0;
  int rc = ::posix_spawn(&pid, argv[0], nullptr, nullptr, const_cast<char* const*>(argv.data()),
                         environ);
  if (rc != 0) return -1;
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return -1;
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// ---------------------------------------------------------------------------
// In-process

void BM_PlainCall(benchmark::State& state) {
  TempDir dir;
  const fs::path output = dir.path() / "noop.out";
  const fs::path temp = dir.path() / ".noop.out.tmp";
  const std::map<std::string, fs::path> inputs;
  stagekit::JobSpec job;
  job.name = "bench";
  job.seed = 1;
  const stagekit::Json kwargs = stagekit::Json::object();
  stagekit::StageContext ctx("bench.noop", "bench.noop", &inputs, temp, &job, &kwargs);
  for (auto _ : state) {
    Noop(ctx);
    if (::rename(temp.c_str(), output.c_str()) != 0) {
      state.SkipWithError(("rename: " + std::string(std::strerror(errno))).c_str());
      break;
    }
  }
  SetPerStage(state, 1);
}
BENCHMARK(BM_PlainCall)->UseRealTime();

// Runs `req` on `executor` once per iteration; the benchmark fails on the first error.
void DispatchLoop(benchmark::State& state, stagekit::StageExecutor& executor,
                  const stagekit::StageRequest& req) {
  const stagekit::StageOptions options;
  for (auto _ : state) {
    stagekit::Result<stagekit::RunStats> stats = executor.Run(req, options);
    if (!stats.ok()) {
      state.SkipWithError(stats.status().ToString().c_str());
      break;
    }
    benchmark::DoNotOptimize(stats);
  }
  SetPerStage(state, 1);
}

void BM_InProcessDispatch(benchmark::State& state) {
  TempDir dir;
  stagekit::InProcessExecutor executor(BenchRegistry());
  stagekit::StageRequest req = NoopRequest(dir.path());
  req.executor = "inprocess";
  DispatchLoop(state, executor, req);
}
BENCHMARK(BM_InProcessDispatch)->UseRealTime();

// ---------------------------------------------------------------------------
// Subprocess

void BM_SpawnFloor(benchmark::State& state) {
  const std::vector<const char*> argv = {"/bin/true", nullptr};
  for (auto _ : state) {
    if (SpawnAndWait(argv) != 0) {
      state.SkipWithError("posix_spawn /bin/true failed");
      break;
    }
  }
  SetPerStage(state, 1);
}
BENCHMARK(BM_SpawnFloor)->UseRealTime();

// The floor for any runner of C++ stages: loading libstdc++ alone costs about
// as much again as spawning /bin/true on these machines.
void BM_SpawnCxxFloor(benchmark::State& state) {
  const std::vector<const char*> argv = {STAGEKIT_BENCH_NOOP_CXX, nullptr};
  for (auto _ : state) {
    if (SpawnAndWait(argv) != 0) {
      state.SkipWithError("posix_spawn of the no-op C++ program failed");
      break;
    }
  }
  SetPerStage(state, 1);
}
BENCHMARK(BM_SpawnCxxFloor)->UseRealTime();

void BM_SpawnRunner(benchmark::State& state) {
  const std::vector<const char*> argv = {STAGEKIT_BENCH_CLI, "--version", nullptr};
  // Its stdout would interleave with the report; send it to /dev/null.
  posix_spawn_file_actions_t actions;
  ::posix_spawn_file_actions_init(&actions);
  ::posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
  for (auto _ : state) {
    pid_t pid = 0;
    int status = 0;
    if (::posix_spawn(&pid, argv[0], &actions, nullptr, const_cast<char* const*>(argv.data()),
                      environ) != 0 ||
        ::waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      state.SkipWithError("stagekit --version failed");
      break;
    }
  }
  ::posix_spawn_file_actions_destroy(&actions);
  SetPerStage(state, 1);
}
BENCHMARK(BM_SpawnRunner)->UseRealTime();

void BM_SubprocessDispatch(benchmark::State& state) {
  TempDir dir;
  stagekit::SubprocessExecutor::Options sub;
  sub.runner = STAGEKIT_BENCH_CLI;
  sub.libraries = {STAGEKIT_BENCH_STAGES};
  stagekit::SubprocessExecutor executor(sub);
  const stagekit::StageRequest req = NoopRequest(dir.path());
  DispatchLoop(state, executor, req);
}
BENCHMARK(BM_SubprocessDispatch)->UseRealTime();

// ---------------------------------------------------------------------------
// Pipelines

void BM_PipelineThroughput(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  const int jobs = static_cast<int>(state.range(1));
  TempDir dir;
  stagekit::Pipeline pipeline;
  pipeline.file = dir.path() / "throughput.yaml";
  pipeline.name = "throughput";
  pipeline.job.name = "bench";
  pipeline.job.seed = 1;
  pipeline.stages.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    stagekit::PipelineStage st;
    char name[32];
    std::snprintf(name, sizeof(name), "noop_%05zu", i);
    st.name = name;
    st.stage = "bench.noop";
    st.output = st.name + ".out";
    pipeline.stages.push_back(std::move(st));
  }
  stagekit::InProcessExecutor executor(BenchRegistry());
  stagekit::RunOptions options;
  options.jobs = jobs;
  const fs::path out_dir = dir.path() / "out";
  for (auto _ : state) {
    stagekit::RunResult result = stagekit::RunPipeline(pipeline, out_dir, executor, options);
    if (!result.status.ok()) {
      state.SkipWithError(result.status.ToString().c_str());
      break;
    }
    benchmark::DoNotOptimize(result);
  }
  SetPerStage(state, static_cast<std::int64_t>(n));
}
BENCHMARK(BM_PipelineThroughput)
    ->ArgNames({"stages", "jobs"})
    ->Args({1000, 1})
    ->Args({1000, 2})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::AddCustomContext("stagekit_runner", STAGEKIT_BENCH_CLI);
  benchmark::AddCustomContext("stage_library", STAGEKIT_BENCH_STAGES);
  benchmark::AddCustomContext("temp_dir", fs::temp_directory_path().string());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
