// stagekit run PIPELINE: run every stage of a pipeline on one executor.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <iostream>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "cli.h"
#include "deploy/s3.h"
#include "operate/cost.h"
#include "stagekit/cache.h"
#include "stagekit/ray.h"
#include "util/outcome.h"
#include "util/process.h"
#include "util/text.h"

namespace stagekit::cli {
namespace {

struct RunCommand {
  std::string pipeline;
  std::string executor = "inprocess";
  LibraryOptions libs;
  ExecOptions exec;
  RayCliOptions ray;
  std::string artifacts;
  bool no_artifacts = false;
  std::string endpoint_url;
  CostCli cost;
  double budget = -1;
  ReportCli report;
  bool resume = false;  // restore cached stages instead of running them
  bool no_cache = false;
  std::string cache_dir;
  std::string outputs = "all";
  bool dry_run = false;  // show the stages, run nothing
};

// Forwards to the progress display and keeps the mean stage time, which the
// budget check uses to price one more stage.
class BudgetObserver : public RunObserver {
 public:
  explicit BudgetObserver(RunObserver* next) : next_(next) {}
  void OnStagesAdded(const PipelineStage& tmpl, std::size_t count) override {
    if (next_ != nullptr) next_->OnStagesAdded(tmpl, count);
  }
  void OnStageStarted(const PipelineStage& stage) override {
    if (next_ != nullptr) next_->OnStageStarted(stage);
  }
  void OnStageFinished(const PipelineStage& stage, const StageOutcome& outcome) override {
    if (outcome.stats) {
      ++finished_;
      total_s_ += outcome.stats->wall_s;
    }
    if (next_ != nullptr) next_->OnStageFinished(stage, outcome);
  }
  double MeanStageSeconds() const { return finished_ == 0 ? 0 : total_s_ / finished_; }

 private:
  RunObserver* next_;
  int finished_ = 0;
  double total_s_ = 0;
};

// Opens the real executor when the first stage has to run, so that a
// --resume run whose every stage is restored from the cache starts no cluster.
class LazyExecutor final : public StageExecutor {
 public:
  using Opener = std::function<Result<std::unique_ptr<StageExecutor>>()>;
  LazyExecutor(std::string name, Opener open) : name_(std::move(name)), open_(std::move(open)) {}
  std::string_view name() const override { return name_; }
  Result<RunStats> Run(const StageRequest& request, const StageOptions& options) override {
    StageExecutor* inner = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (inner_ == nullptr && status_.ok()) {
        auto opened = open_();
        if (opened.ok()) {
          inner_ = std::move(opened).value();
        } else {
          status_ = opened.status();
        }
      }
      if (!status_.ok()) return status_;
      inner = inner_.get();
    }
    return inner->Run(request, options);
  }
  // The real executor, once a stage needed it.
  const StageExecutor* inner() const {
    std::lock_guard<std::mutex> lock(mu_);
    return inner_.get();
  }

 private:
  std::string name_;
  Opener open_;
  mutable std::mutex mu_;
  std::unique_ptr<StageExecutor> inner_;
  Status status_;
};

// Whether `run --resume` would restore every stage of the pipeline.
bool AllCached(DiskCache& cache, const Pipeline& pipeline) {
  for (const StageExplanation& e : cache.Explain(pipeline)) {
    if (!e.cached) return false;
  }
  return true;
}

// What a cost record needs to know about a run, filled in as it goes.
struct RunCost {
  bool started = false;  // resources may have been used: write a record
  std::string pipeline;
  std::string executor;
  std::map<std::string, int> nodes;
  std::chrono::system_clock::time_point start = std::chrono::system_clock::now();
  std::chrono::steady_clock::time_point steady = std::chrono::steady_clock::now();
};

// What nodes uploaded themselves (RunStats::artifact) in this run: the
// outputs' paths relative to the output folder, their bytes, and a message
// for each upload that failed on a node and that the driver cannot make up
// for (it did not fetch the output).
struct NodeUploads {
  std::set<std::string> uploaded;
  std::uint64_t bytes = 0;
  std::vector<std::string> failed;
};

NodeUploads CollectNodeUploads(const RunResult& result, const std::filesystem::path& out_dir) {
  NodeUploads nodes;
  std::error_code ec;
  const auto base = std::filesystem::absolute(out_dir, ec).lexically_normal();
  for (const StageOutcome& o : result.stages) {
    if (o.state != StageState::kSucceeded || o.cached || !o.stats) continue;
    const Json& a = o.stats->artifact;
    if (!a.is_object()) continue;
    if (a.contains("error")) {
      if (!o.fetched) {
        nodes.failed.push_back(
            "stage '" + o.name +
            "' could not upload its output from its node: " + a["error"].get<std::string>());
      }
      continue;
    }
    nodes.uploaded.insert(std::filesystem::absolute(o.output, ec)
                              .lexically_normal()
                              .lexically_relative(base)
                              .generic_string());
    nodes.bytes += o.stats->bytes_out;
  }
  return nodes;
}

Status RunInner(const RunCommand& cmd, const operate::PriceBook& prices, RunCost& cost);

Status Run(const RunCommand& cmd) {
  auto prices = cmd.cost.Prices();
  if (!prices.ok()) return prices.status();
  RunCost cost;
  Status status = RunInner(cmd, *prices, cost);
  if (!cost.started || cmd.cost.no_record) return status;
  // Every run that started leaves a record, failed and interrupted ones too.
  const double wall =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - cost.steady).count();
  operate::CostRecord record;
  record.command = "run";
  record.pipeline = cost.pipeline;
  record.executor = cost.executor;
  record.start = util::IsoTime(cost.start);
  record.end = util::IsoTime(std::chrono::system_clock::now());
  record.wall_s = wall;
  record.outcome =
      status.ok() ? std::string("succeeded") : std::string(util::OutcomeName(status.code()));
  record.exit_code = util::ExitCode(status);
  record.node_types = cost.nodes;
  for (const auto& [type, count] : cost.nodes) {
    record.node_seconds[type] = wall * count;
    auto it = prices->spot_cap.find(type);
    if (it != prices->spot_cap.end() && it->second) {
      record.spot_price_caps[type] = prices->usd_per_hour.at(type);
    }
  }
  auto rate = operate::BurnRate(cost.nodes, *prices, &record.unpriced_node_type);
  if (rate) record.estimated_usd = *rate * wall / 3600;
  if (cmd.budget >= 0) record.budget_usd = cmd.budget;
  if (Status s = operate::AppendCostRecord(cmd.cost.Log(), record); !s.ok()) {
    std::cerr << "stagekit: warning: " << s.message() << "\n";
  }
  return status;
}

// The S3 location the outputs go to ("" for none), checked.
Result<std::string> ArtifactsUri(const RunCommand& cmd, const Pipeline& pipeline) {
  const std::string artifacts = cmd.no_artifacts        ? ""
                                : cmd.artifacts.empty() ? pipeline.artifacts
                                                        : cmd.artifacts;
  if (!artifacts.empty()) {
    if (Status s = deploy::CheckS3Uri(artifacts); !s.ok()) return s;
  }
  return artifacts;
}

// Opens the run's cache into `cache` unless --no-cache; a failure only warns, except with --resume.
Status OpenRunCache(const RunCommand& cmd, const std::string& pipeline,
                    std::unique_ptr<DiskCache>& cache) {
  if (cmd.no_cache) return OkStatus();
  DiskCache::Options cache_options;
  cache_options.pipeline = pipeline;
  cache_options.cancel = &util::ProcessCancel();
  auto opened = DiskCache::Open(CacheDir(cmd.cache_dir), cache_options);
  if (!opened.ok() && cmd.resume) return opened.status();
  if (opened.ok()) {
    cache = std::move(opened).value();
  } else {
    std::cerr << "stagekit: warning: " << opened.status().message() << "\n";
  }
  return OkStatus();
}

// The run's executor: on Ray, one that starts lazily when --resume should restore every stage.
Result<std::unique_ptr<StageExecutor>> OpenExecutor(
    const RunCommand& cmd, const Pipeline& pipeline, DiskCache* cache,
    const std::vector<std::filesystem::path>& libraries, const RayCliOptions& ray_options) {
  if (cmd.executor == "ray" && cmd.resume && cache != nullptr && cmd.budget < 0 &&
      AllCached(*cache, pipeline)) {
    // Nothing should need to run: start (or attach to) a cluster only if a
    // stage misses after all, e.g. because its cache entry went bad.
    return std::unique_ptr<StageExecutor>(
        std::make_unique<LazyExecutor>(cmd.executor, [&cmd, &libraries, &ray_options] {
          return MakeExecutor(cmd.executor, libraries, ray_options);
        }));
  }
  return MakeExecutor(cmd.executor, libraries, ray_options);
}

// kUsage when --budget is given but some node type in use has no price.
Status CheckBudgetPriced(const RunCommand& cmd, const operate::PriceBook& prices,
                         const RunCost& cost, const std::optional<double>& rate,
                         std::string unpriced) {
  if (cmd.budget >= 0 && (!rate || prices.empty())) {
    if (unpriced.empty()) unpriced = cost.nodes.begin()->first;
    return Status(Code::kUsage, "--budget needs a price for every node type in use, and '" +
                                    unpriced + "' has none; give --cluster SPEC or --price " +
                                    unpriced + "=USD_PER_HOUR");
  }
  return OkStatus();
}

// Runs the pipeline's stages with the progress display, the cache and the budget check.
RunResult RunStages(const RunCommand& cmd, const Pipeline& pipeline,
                    const std::filesystem::path& out_dir, StageExecutor& executor, int jobs,
                    DiskCache* cache, const std::string& artifacts,
                    const std::optional<double>& rate, const RunCost& cost) {
  std::unique_ptr<RunObserver> progress =
      MakeProgress(pipeline.stages.size(), cmd.exec.quiet || cmd.exec.json, "");
  BudgetObserver budget(progress.get());
  RunOptions options;
  options.cancel = &util::ProcessCancel();
  options.jobs = jobs;
  options.observer = &budget;
  options.cache = cache;
  options.lookup_cache = cmd.resume && cache != nullptr;
  options.outputs = ParseOutputs(cmd.outputs).value_or(RunOptions::Outputs::kAll);
  // On Ray, each output goes to S3 from the node that made it as it is made;
  // the driver then syncs only what no node uploaded (the run's record,
  // outputs restored from the cache, uploads that failed but were fetched).
  options.artifacts = artifacts;
  if (cmd.budget >= 0) {
    // Launch a stage only if the run's cost so far, plus one more stage of
    // the mean length at the cluster's hourly rate, stays within the budget.
    options.before_launch = [&]() -> Status {
      const double elapsed_h =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - cost.steady).count() /
          3600;
      const double spent = *rate * elapsed_h;
      const double next = *rate * budget.MeanStageSeconds() / 3600;
      if (spent + next <= cmd.budget) return OkStatus();
      char buf[256];
      std::snprintf(buf, sizeof buf,
                    "the budget of $%.2f would be exceeded ($%.4f spent at $%.3f/h, about $%.4f "
                    "for one more stage); launched no more stages",
                    cmd.budget, spent, *rate, next);
      return Status(util::kBudgetExceeded, buf);
    };
  }
  RunResult result = RunPipeline(pipeline, out_dir, executor, options);
  progress.reset();
  return result;
}

// The run's summary, also written beside its outputs unless the output folder failed.
analyse::RunRecord SummariseRun(const RunCommand& cmd, const Pipeline& pipeline,
                                const RunResult& result, const StageExecutor& executor, int jobs,
                                const std::filesystem::path& out_dir, const std::string& artifacts,
                                const std::optional<double>& rate, const operate::PriceBook& prices,
                                const RunCost& cost) {
  analyse::RunRecord summary = RunSummary(pipeline, result, executor.name(), jobs, out_dir);
  summary.outputs = cmd.outputs;
  const auto* lazy = dynamic_cast<const LazyExecutor*>(&executor);
  if (lazy == nullptr) {
    AddExecutorDetails(executor, summary);
  } else if (lazy->inner() != nullptr) {
    AddExecutorDetails(*lazy->inner(), summary);
  } else {
    summary.started_executor = false;  // every stage was restored: no cluster was used
  }
  if (!artifacts.empty()) summary.artifacts.emplace().uri = artifacts;
  if (rate && !prices.empty()) {
    // For the report; the cost record written after the run prices the whole command.
    analyse::CostEstimate& estimate = summary.cost.emplace();
    estimate.node_types = cost.nodes;
    estimate.usd_per_hour = *rate;
    estimate.wall_s = result.wall_s;
    estimate.estimated_usd = *rate * result.wall_s / 3600;
    if (cmd.budget >= 0) estimate.budget_usd = cmd.budget;
  }
  if (result.status.code() != Code::kOutputError || !result.failed_stage.empty()) {
    // Best effort: the record of the run sits beside its outputs.
    (void)util::WriteFileAtomically(out_dir / ".stagekit-run.json",
                                    summary.ToJson().dump(2) + "\n");
  }
  return summary;
}

// Syncs the driver's share of the artifacts after a complete run, noting it in the summary.
Status SyncArtifacts(const RunResult& result, const std::filesystem::path& out_dir,
                     const std::string& artifacts, const deploy::S3Options& s3,
                     const StageExecutor& executor, analyse::RunRecord& summary) {
  // The driver's share of the artifacts leaves only from a complete run:
  // what it holds in the output folder, less what nodes uploaded.
  Status sync;
  if (artifacts.empty()) return sync;
  if (!summary.artifacts) summary.artifacts.emplace().uri = artifacts;
  analyse::ArtifactsRecord& record = *summary.artifacts;
  NodeUploads nodes = CollectNodeUploads(result, out_dir);
  if (executor.outputs_stay_remote()) {
    record.from_nodes = analyse::ArtifactsRecord::FromNodes{nodes.uploaded.size(), nodes.bytes,
                                                            nodes.failed.size()};
  }
  if (result.status.ok()) {
    const auto start = std::chrono::steady_clock::now();
    sync = deploy::S3UploadExcept(out_dir, artifacts, s3, nodes.uploaded);
    if (!nodes.failed.empty()) {
      // Not fetched and not uploaded: those outputs ended with the run.
      sync = Status(Code::kOutputError,
                    std::to_string(nodes.failed.size()) +
                        " output(s) left on the cluster could not be uploaded and are gone "
                        "with the run (rerun with --outputs all to keep a copy here); " +
                        nodes.failed.front() + (sync.ok() ? "" : "; and " + sync.message()));
    }
    record.synced = sync.ok();
    record.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (!sync.ok()) record.error = sync.message();
  } else {
    record.synced = false;
  }
  return sync;
}

// Writes --report/--trace and prints --json; an error when the sync or the report failed.
Status PublishSummary(const RunCommand& cmd, const analyse::RunRecord& summary,
                      const RunResult& result, const Status& sync,
                      const std::filesystem::path& out_dir) {
  const Status report = cmd.report.Write(summary, cmd.exec.quiet || cmd.exec.json);
  if (cmd.exec.json) std::cout << summary.ToJson().dump(2) << std::endl;
  if (!sync.ok()) {
    bool fetched = false;
    for (const StageOutcome& o : result.stages) fetched = fetched || o.fetched;
    return Status(sync.code(), "the run succeeded" +
                                   (fetched ? " and its outputs are in " + out_dir.string() : "") +
                                   ", but " + sync.message());
  }
  if (!report.ok()) {
    if (result.status.ok()) {
      return Status(report.code(), "the run succeeded and its outputs are in " + out_dir.string() +
                                       ", but " + report.message());
    }
    std::cerr << "stagekit: warning: " << report.message() << "\n";
  }
  return OkStatus();
}

// Prints the one-line outcome of the run and returns the run's status.
Status FinishRun(const RunCommand& cmd, const RunResult& result, const StageExecutor& executor,
                 int jobs, const std::filesystem::path& out_dir, const std::string& artifacts) {
  std::size_t ok = 0, failed = 0, not_run = 0, restored = 0;
  for (const StageOutcome& o : result.stages) {
    ok += o.state == StageState::kSucceeded;
    restored += o.state == StageState::kSucceeded && o.cached;
    failed += o.state == StageState::kFailed;
    not_run += o.state == StageState::kNotRun;
  }
  if (result.status.ok()) {
    if (!cmd.exec.quiet && !cmd.exec.json) {
      std::fprintf(stderr,
                   "stagekit: %zu stage%s succeeded in %.2fs (%s, %d jobs), %zu restored from the "
                   "cache; outputs in %s\n",
                   ok, ok == 1 ? "" : "s", result.wall_s, std::string(executor.name()).c_str(),
                   jobs, restored, out_dir.string().c_str());
      if (!artifacts.empty()) std::fprintf(stderr, "stagekit: synced to %s\n", artifacts.c_str());
    }
    return OkStatus();
  }
  if (!cmd.exec.json) {
    std::fprintf(stderr, "stagekit: %zu succeeded, %zu failed, %zu not run (%s)%s\n", ok, failed,
                 not_run, std::string(executor.name()).c_str(),
                 artifacts.empty() ? "" : "; artifacts not synced");
  }
  return result.status;
}

// --dry-run: every stage instance the run would start (foreach stages
// expanded; one over a stage's items as NAME[*]), what it reads and writes.
void ShowStages(const Pipeline& pipeline, bool json) {
  Json stages = Json::array();
  std::size_t width = 5, stage_width = 5;
  for (const PipelineStage& st : pipeline.stages) {
    width = std::max(width, st.name.size());
    stage_width = std::max(stage_width, st.stage.size());
  }
  if (!json) {
    std::printf("%-*s  %-*s  %s\n", static_cast<int>(width), "STAGE", static_cast<int>(stage_width),
                "RUNS", "OUTPUT  <- INPUTS");
  }
  for (const PipelineStage& st : pipeline.stages) {
    Json inputs = Json::object();
    std::string shown;
    for (const auto& [name, ref] : st.inputs) {
      const std::string from = ref.from_stage.empty() ? ref.file.string() : ref.from_stage;
      inputs[name] = ref.from_stage.empty() ? Json{{"file", from}} : Json{{"from", from}};
      shown += (shown.empty() ? "" : ", ") + name + "=" + from;
    }
    const std::string output =
        st.foreach_from.empty()
            ? st.output
            : "(one instance per item of '" + st.foreach_from + "', made at run time)";
    stages.push_back({{"name", st.name},
                      {"stage", st.stage},
                      {"output", output},
                      {"inputs", inputs},
                      {"kwargs", st.kwargs}});
    if (!st.foreach_from.empty()) stages.back()["foreach_from"] = st.foreach_from;
    if (!json) {
      std::printf("%-*s  %-*s  %s%s%s\n", static_cast<int>(width), st.name.c_str(),
                  static_cast<int>(stage_width), st.stage.c_str(), output.c_str(),
                  shown.empty() ? "" : "  <- ", shown.c_str());
    }
  }
  if (json) {
    std::cout << Json{{"pipeline", pipeline.name}, {"stages", stages}}.dump(2) << std::endl;
  } else {
    std::printf("%zu stages; --dry-run started none\n", pipeline.stages.size());
  }
}

Status RunInner(const RunCommand& cmd, const operate::PriceBook& prices, RunCost& cost) {
  std::vector<std::filesystem::path> libraries;
  Result<Pipeline> pipeline = LoadPipelineWithLibraries(cmd.pipeline, cmd.libs, libraries);
  if (!pipeline.ok()) return pipeline.status();
  if (Status s = ApplyCommandLine(*pipeline, cmd.exec); !s.ok()) return s;
  if (cmd.dry_run) {
    ShowStages(*pipeline, cmd.exec.json);
    return OkStatus();
  }
  const Result<std::string> artifacts = ArtifactsUri(cmd, *pipeline);
  if (!artifacts.ok()) return artifacts.status();
  cost.pipeline = pipeline->name;
  cost.executor = cmd.executor;
  cost.started = true;  // a private Ray head costs from here on
  // Every run stores its outputs so that a later --resume can restore them.
  std::unique_ptr<DiskCache> cache;
  if (Status s = OpenRunCache(cmd, pipeline->name, cache); !s.ok()) return s;
  const deploy::S3Options s3 = deploy::S3OptionsFromEnvironment(cmd.endpoint_url);
  RayCliOptions ray_options = cmd.ray;
  ray_options.s3_endpoint = s3.endpoint_url;
  Result<std::unique_ptr<StageExecutor>> executor =
      OpenExecutor(cmd, *pipeline, cache.get(), libraries, ray_options);
  if (!executor.ok()) return executor.status();
  cost.nodes = operate::NodeTypes((*executor)->Nodes(), prices);
  std::string unpriced;
  const auto rate = operate::BurnRate(cost.nodes, prices, &unpriced);
  if (Status s = CheckBudgetPriced(cmd, prices, cost, rate, unpriced); !s.ok()) return s;

  std::filesystem::path out_dir = cmd.exec.out.empty()
                                      ? std::filesystem::path("stagekit-out") / pipeline->name
                                      : std::filesystem::path(cmd.exec.out);
  const int jobs = cmd.exec.Jobs(**executor);
  RunResult result =
      RunStages(cmd, *pipeline, out_dir, **executor, jobs, cache.get(), *artifacts, rate, cost);
  analyse::RunRecord summary = SummariseRun(cmd, *pipeline, result, **executor, jobs, out_dir,
                                            *artifacts, rate, prices, cost);
  const Status sync = SyncArtifacts(result, out_dir, *artifacts, s3, **executor, summary);
  if (Status s = PublishSummary(cmd, summary, result, sync, out_dir); !s.ok()) return s;
  return FinishRun(cmd, result, **executor, jobs, out_dir, *artifacts);
}

}  // namespace

void SetRunCommand(CLI::App& app, Action& action) {
  auto cmd = std::make_shared<RunCommand>();
  CLI::App* sub = app.add_subcommand("run", "Run a pipeline on one executor");
  sub->add_option("PIPELINE", cmd->pipeline, "Pipeline file (YAML)")->required();
  sub->add_option("-e,--executor", cmd->executor,
                  "inprocess | subprocess | ray (default: inprocess)")
      ->check(CLI::IsMember({"inprocess", "subprocess", "ray"}));
  cmd->exec.AddTo(sub, false);
  cmd->libs.AddTo(sub);
  cmd->ray.AddTo(sub);
  sub->add_option("--artifacts", cmd->artifacts,
                  "Upload the outputs to this S3 location (default: the pipeline's `artifacts:`). "
                  "Local executors: `aws s3 sync` of the output directory after a successful "
                  "run. Ray: each output from the node that made it, as soon as it is made; the "
                  "driver syncs the rest of the output directory after a successful run")
      ->type_name("s3://BUCKET/PREFIX");
  sub->add_flag("--no-artifacts", cmd->no_artifacts, "Do not sync the outputs anywhere");
  sub->add_flag("--dry-run", cmd->dry_run,
                "Print the stages the run would start (each foreach expanded into its "
                "instances; one over a stage's items shown as NAME[*]) with their outputs and "
                "inputs; run nothing, write nothing");
  sub->add_option("--outputs", cmd->outputs,
                  "Which outputs the driver fetches into --out with -e ray: all (default), "
                  "final (those no stage reads, plus stages marked keep: true) or none. The "
                  "others stay in the cluster's object store, and the stages that read them "
                  "get them by reference. inprocess and subprocess write every output.")
      ->check(CLI::IsMember({"all", "final", "none"}));
  sub->add_option("--endpoint-url", cmd->endpoint_url,
                  "S3-compatible endpoint for the sync (default: $AWS_ENDPOINT_URL)");
  cmd->cost.AddTo(sub);
  cmd->report.AddTo(sub);
  sub->add_option("--budget", cmd->budget,
                  "Launch no more stages once the run's estimated cost (node prices from "
                  "--cluster/--price) would pass this many USD; exits 16")
      ->check(CLI::NonNegativeNumber)
      ->type_name("USD");
  CLI::Option* resume = sub->add_flag(
      "--resume", cmd->resume,
      "Restore every stage whose cache key (stage, library, input bytes, job, kwargs) is in the "
      "cache instead of running it; `stagekit cache explain` says why a stage will run");
  sub->add_flag("--no-cache", cmd->no_cache,
                "Neither restore from nor store into the cache (by default every run stores its "
                "outputs, so that a later --resume can restore them)")
      ->excludes(resume);
  sub->add_option("--cache-dir", cmd->cache_dir,
                  "Cache directory, local or shared (NFS) (default: $STAGEKIT_CACHE_DIR, else "
                  "$XDG_CACHE_HOME/stagekit, else ~/.cache/stagekit)")
      ->type_name("DIR");
  sub->callback([cmd, &action] { action = [cmd] { return Run(*cmd); }; });
}

}  // namespace stagekit::cli
