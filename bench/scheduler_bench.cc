// The scheduler's own cost per stage at fan-out scale (Google Benchmark):
// RunPipeline over 100,000 stages with an executor that does no work (no
// file is written), so what is measured is planning, readiness, the
// threads' handoffs and the result. Cases:
//   BM_StaticFanout/N/jobs   N instances of a static foreach plus a collect
//   BM_DynamicFanout/N/jobs  the same made at run time from an item list of N
//                            lines (parsing, expansion and the collect's
//                            rewiring included)
// bench/fanout_bench.sh measures the same shapes end to end through the CLI.
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "stagekit/executor.h"
#include "stagekit/pipeline.h"

namespace {

namespace fs = std::filesystem;

// Succeeds at once without writing anything; the item list is the one
// exception (a dynamic foreach reads it from the producer's output path).
class NoWork : public stagekit::StageExecutor {
 public:
  explicit NoWork(std::string items) : items_(std::move(items)) {}
  std::string_view name() const override { return "nowork"; }
  stagekit::Result<stagekit::RunStats> Run(const stagekit::StageRequest& req,
                                           const stagekit::StageOptions&) override {
    if (req.stage == "split") std::ofstream(req.output) << items_;
    stagekit::RunStats s;
    s.stage = req.stage;
    s.output_digest = "sha256:" + std::string(64, '0');
    return s;
  }

 private:
  std::string items_;
};

fs::path WorkDir() {
  fs::path dir = fs::temp_directory_path() / ("stagekit-sched-bench-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  return dir;
}

void Run(benchmark::State& state, const stagekit::Pipeline& p, const std::string& items) {
  NoWork executor(items);
  stagekit::RunOptions options;
  options.jobs = static_cast<int>(state.range(1));
  const fs::path out = WorkDir() / "out";
  for (auto _ : state) {
    stagekit::RunResult r = stagekit::RunPipeline(p, out, executor, options);
    if (!r.status.ok()) {
      state.SkipWithError(r.status.ToString().c_str());
      break;
    }
    benchmark::DoNotOptimize(r);
  }
  // items_per_second: stages per second; the cost per stage is its inverse.
  state.SetItemsProcessed(state.iterations() * state.range(0));
  fs::remove_all(out.parent_path());
}

void BM_StaticFanout(benchmark::State& state) {
  const auto n = state.range(0);
  std::string yaml = "stages:\n  - name: m\n    stage: noop\n    foreach: {matrix: {a: [";
  for (int a = 0; a < 100; ++a) yaml += (a ? "," : "") + std::to_string(a);
  yaml += "], b: [";
  for (std::int64_t b = 0; b < n / 100; ++b) yaml += (b ? "," : "") + std::to_string(b);
  yaml += "]}}\n  - {name: all, stage: noop, inputs: {p: {from: \"m[*]\"}}}\n";
  auto p = stagekit::ParsePipeline(yaml, WorkDir() / "p.yaml");
  if (!p.ok()) {
    state.SkipWithError(p.status().message().c_str());
    return;
  }
  Run(state, *p, "");
}
BENCHMARK(BM_StaticFanout)
    ->Args({100000, 1})
    ->Args({100000, 8})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

void BM_DynamicFanout(benchmark::State& state) {
  const auto n = state.range(0);
  std::string items;
  for (std::int64_t i = 0; i < n; ++i) {
    items += "{\"key\": \"" + std::to_string(i) + "\", \"i\": " + std::to_string(i) + "}\n";
  }
  auto p = stagekit::ParsePipeline(
      "stages:\n  - {name: split, stage: split}\n"
      "  - {name: m, stage: noop, foreach: {from: split}, kwargs: {i: \"{i}\"}}\n"
      "  - {name: all, stage: noop, inputs: {p: {from: \"m[*]\"}}}\n",
      WorkDir() / "p.yaml");
  if (!p.ok()) {
    state.SkipWithError(p.status().message().c_str());
    return;
  }
  Run(state, *p, items);
}
BENCHMARK(BM_DynamicFanout)
    ->Args({10000, 1})
    ->Args({10000, 8})
    ->Args({100000, 8})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// The expansion itself: an item list of N lines read, checked and made
// into N instances (ExpandDynamicStage), without a run around it.
void BM_Expand(benchmark::State& state) {
  const auto n = state.range(0);
  const fs::path dir = WorkDir();
  {
    std::ofstream items(dir / "items.jsonl");
    for (std::int64_t i = 0; i < n; ++i) {
      items << "{\"key\": \"" << i << "\", \"i\": " << i << "}\n";
    }
  }
  auto p = stagekit::ParsePipeline(
      "stages:\n  - {name: split, stage: split}\n"
      "  - {name: m, stage: noop, foreach: {from: split}, kwargs: {i: \"{i}\"}}\n",
      dir / "p.yaml");
  if (!p.ok()) {
    state.SkipWithError(p.status().message().c_str());
    return;
  }
  for (auto _ : state) {
    auto made = stagekit::ExpandDynamicStage(p->stages[1], dir / "items.jsonl");
    if (!made.ok()) {
      state.SkipWithError(made.status().message().c_str());
      break;
    }
    benchmark::DoNotOptimize(made);
  }
  state.SetItemsProcessed(state.iterations() * n);
  fs::remove_all(dir);
}
BENCHMARK(BM_Expand)->Arg(10000)->Arg(100000)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
