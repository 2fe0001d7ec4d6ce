#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <sstream>
#include <thread>

#include "cli.h"
#include "stagekit/cache.h"
#include "stagekit/executor.h"
#include "stagekit/ray.h"
#include "util/outcome.h"
#include "util/process.h"
#include "util/text.h"

namespace stagekit::cli {

namespace fs = std::filesystem;

void LibraryOptions::AddTo(CLI::App* cmd) {
  cmd->add_option("--stages", stages, "Stage library (.so) to load; repeatable")->type_name("LIB");
  cmd->add_option("--stage-path", stage_path,
                  "Directory searched for libraries a pipeline names; repeatable "
                  "(also $STAGEKIT_STAGE_PATH)")
      ->type_name("DIR");
}

std::vector<fs::path> LibraryOptions::SearchDirs(const fs::path& pipeline_dir) const {
  std::vector<fs::path> dirs(stage_path.begin(), stage_path.end());
  if (const char* env = std::getenv("STAGEKIT_STAGE_PATH"); env != nullptr) {
    std::stringstream ss(env);
    std::string dir;
    while (std::getline(ss, dir, ':')) {
      if (!dir.empty()) dirs.emplace_back(dir);
    }
  }
  if (!pipeline_dir.empty()) dirs.push_back(pipeline_dir);
  for (const fs::path& dir : DefaultStageDirs()) dirs.push_back(dir);
  return dirs;
}

Status LoadLibraries(const std::vector<fs::path>& paths) {
  for (const fs::path& p : paths) {
    if (Status s = LoadStageLibrary(p); !s.ok()) return s;
  }
  return OkStatus();
}

Result<Pipeline> LoadPipelineWithLibraries(const std::string& file, const LibraryOptions& libs,
                                           std::vector<fs::path>& libraries) {
  // Nothing is started or written yet: Ctrl-C ends the program at once
  // rather than after a large file is parsed (seconds for 200,000 stages).
  struct ExitAtOnce {
    ExitAtOnce() { util::ProcessCancel().SetExitAtOnce(true); }
    ~ExitAtOnce() { util::ProcessCancel().SetExitAtOnce(false); }
  } exit_at_once;
  if (util::Interrupted()) return Status(Code::kInterrupted, "interrupted");
  Result<Pipeline> pipeline = LoadPipeline(file);
  if (!pipeline.ok()) return pipeline.status();
  auto resolved = ResolveLibraries(*pipeline, libs.SearchDirs(pipeline->file.parent_path()));
  if (!resolved.ok()) return resolved.status();
  std::error_code ec;
  for (const std::string& s : libs.stages) libraries.push_back(fs::absolute(s, ec));
  for (const fs::path& p : *resolved) libraries.push_back(fs::absolute(p, ec));
  if (Status s = LoadLibraries(libraries); !s.ok()) return s;
  if (Status s = CheckStagesRegistered(*pipeline, Registry::Global()); !s.ok()) return s;
  return pipeline;
}

void ExecOptions::AddTo(CLI::App* cmd, bool parity) {
  cmd->add_option("-j,--jobs", jobs,
                  "Stages run at once, up to 100000 (default: one per CPU; on Ray, the "
                  "cluster's CPUs). On Ray one driver thread awaits them all; the local "
                  "executors use a thread per stage, at most 4096")
      ->check(CLI::Range(1, 100000));
  cmd->add_option("-o,--out", out,
                  parity ? "Output directory; each executor writes to OUT/<executor> "
                           "(default: stagekit-out/<pipeline>/parity)"
                         : "Output directory (default: stagekit-out/<pipeline>)")
      ->type_name("DIR");
  cmd->add_option("--timeout", timeout,
                  "Timeout for stages that set none, e.g. 30s, 5m (subprocess and ray executors)")
      ->type_name("DURATION");
  cmd->add_option(
         "--resources", resources,
         "Placement override, STAGE:KEY=VALUE[,...] with STAGE a name or a pattern ('sample[*]', "
         "'*') and KEY cpus, gpus, "
         "memory or a custom resource (e.g. 'train:gpus=0.01,vm:g4dn.2xlarge=1'); repeatable")
      ->type_name("SPEC");
  cmd->add_flag("--json", json, "Print a machine-readable summary on stdout");
  cmd->add_flag("-q,--quiet", quiet, "No progress output");
}

int ExecOptions::Jobs(const StageExecutor& executor) const {
  if (jobs > 0) return jobs;
  double cpus = 0;
  for (const Json& node : executor.Nodes()) cpus += node["resources"].value("CPU", 0.0);
  if (cpus >= 1) return static_cast<int>(cpus);
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

void RayCliOptions::AddTo(CLI::App* cmd) {
  cmd->add_option(
         "--address", address,
         "Ray cluster (GCS ip:port) for the ray executor; default $RAY_ADDRESS, else a private "
         "local head that stagekit starts and stops")
      ->type_name("IP:PORT");
  cmd->add_option(
         "--ray-attempts", attempts,
         "Runs of a stage whose Ray worker or node dies (default 3); a stage's own errors are "
         "never retried")
      ->check(CLI::Range(1, 100));
  cmd->add_option("--fetch-window", fetch_window_mib,
                  "MiB of an output the driver holds at once when it fetches it from Ray "
                  "(default 32); a larger output comes in windows of this size")
      ->check(CLI::Range(1, 4096));
}

const Environment& Environment::Get() {
  static const Environment env = [] {
    auto var = [](const char* name) {
      const char* v = std::getenv(name);
      return std::string(v != nullptr ? v : "");
    };
    Environment e;
    e.ray_address = var("RAY_ADDRESS");
    e.ray_bin_dir = var("STAGEKIT_RAY_BIN_DIR");
    e.path = var("PATH");
    e.autoscaler_config = var("STAGEKIT_AUTOSCALER_CONFIG");
    e.runner = var("STAGEKIT_RUNNER");
    e.cache_dir = var("STAGEKIT_CACHE_DIR");
    const std::string warm = var("STAGEKIT_WARM");
    e.warm = !(warm == "0" || warm == "off" || warm == "false" || warm == "no");
    return e;
  }();
  return env;
}

fs::path CacheDir(const std::string& flag) {
  if (!flag.empty()) return flag;
  const Environment& env = Environment::Get();
  return env.cache_dir.empty() ? DiskCache::DefaultDir() : env.cache_dir;
}

Result<std::unique_ptr<StageExecutor>> MakeExecutor(const std::string& name,
                                                    const std::vector<fs::path>& libraries,
                                                    const RayCliOptions& ray) {
  const Environment& env = Environment::Get();
  if (name == "inprocess") {
    return std::unique_ptr<StageExecutor>(new InProcessExecutor(Registry::Global(), env.warm));
  }
  if (name == "subprocess") {
    SubprocessExecutor::Options options;
    options.libraries = libraries;
    options.runner = env.runner;
    options.cancel = &util::ProcessCancel();
    options.warm = env.warm;
    return std::unique_ptr<StageExecutor>(new SubprocessExecutor(options));
  }
  if (name == "ray") {
    RayOptions options;
    options.address = ray.address.empty() ? env.ray_address : ray.address;
    options.bin_dir = env.ray_bin_dir;
    options.search_path = env.path;
    options.autoscaler_config = env.autoscaler_config;
    options.warm = env.warm;
    options.cancel = &util::ProcessCancel();
    options.libraries = libraries;
    options.max_attempts = ray.attempts;
    options.fetch_window_bytes = static_cast<std::uint64_t>(ray.fetch_window_mib) << 20;
    options.s3_endpoint = ray.s3_endpoint;
    auto ex = RayExecutor::Open(options);
    if (!ex.ok()) return ex.status();
    return std::unique_ptr<StageExecutor>(std::move(ex).value());
  }
  return Status(Code::kUsage,
                "unknown executor '" + name + "'; choose inprocess, subprocess or ray");
}

void AddExecutorDetails(const StageExecutor& executor, analyse::RunRecord& summary) {
  // Written under the executor's name, which is the summary's executor.
  if (Json d = executor.Describe(); !d.empty()) summary.executor_details = std::move(d);
}

Status ApplyCommandLine(Pipeline& pipeline, const ExecOptions& exec) {
  if (!exec.timeout.empty()) {
    auto t = ParseDuration(exec.timeout);
    if (!t.ok()) return Status(Code::kUsage, "--timeout: " + t.status().message());
    for (PipelineStage& st : pipeline.stages) {
      if (!st.options.timeout) st.options.timeout = *t;
    }
  }
  for (const std::string& spec : exec.resources) {
    if (Status s = ApplyResourceOverride(pipeline, spec); !s.ok()) return s;
  }
  return OkStatus();
}

analyse::RunRecord RunSummary(const Pipeline& loaded, const RunResult& result,
                              std::string_view executor, int jobs, const fs::path& out_dir) {
  const Pipeline& pipeline = result.Ran(loaded);  // with a dynamic foreach's instances
  auto error_of = [](const Status& s) {
    return analyse::RecordError{std::string(util::OutcomeName(s.code())), s.message()};
  };
  analyse::RunRecord run;
  run.pipeline = pipeline.name;
  run.file = pipeline.file.string();
  run.executor = std::string(executor);
  run.jobs = jobs;
  run.out_dir = out_dir.string();
  run.status = result.status.ok() ? "succeeded" : "failed";
  if (!result.status.ok()) run.error = error_of(result.status);
  if (!result.failed_stage.empty()) run.failed_stage = result.failed_stage;
  run.wall_s = result.wall_s;
  run.job = pipeline.job;
  run.stages.reserve(result.stages.size());
  for (std::size_t i = 0; i < result.stages.size(); ++i) {
    const StageOutcome& o = result.stages[i];
    const PipelineStage& st = pipeline.stages[i];
    analyse::StageRecord& entry = run.stages.emplace_back();
    entry.name = o.name;
    entry.stage = st.stage;
    entry.state = std::string(StageStateName(o.state));
    entry.output = o.output.string();
    entry.resources = st.options.resources.ToJson();
    if (st.options.timeout) {
      entry.timeout_s = static_cast<double>(st.options.timeout->count()) / 1000.0;
    }
    entry.stats = o.stats;
    entry.cached = o.cached;
    entry.fetched = o.fetched;
    if (o.start_s >= 0) entry.start_s = o.start_s;
    if (o.end_s >= 0) entry.end_s = o.end_s;
    if (o.slot >= 0) entry.slot = o.slot;
    if (o.state == StageState::kFailed) entry.error = error_of(o.status);
  }
  // Where bytes went: per node that ran stages, what they produced and what
  // of it the driver fetched into the output folder (cached stages ran
  // nowhere and are not counted).
  analyse::DataPlane& data = run.data;
  for (const StageOutcome& o : result.stages) {
    if (!o.stats || o.cached) continue;
    analyse::NodeBytes& n = data.by_node[o.stats->node.empty() ? o.stats->host : o.stats->node];
    ++n.stages;
    n.bytes_produced += o.stats->bytes_out;
    const Json& artifact = o.stats->artifact;
    if (artifact.is_object() && artifact.contains("node") && !artifact.contains("error")) {
      // Usually the node that made it (Ray runs the upload beside the bytes).
      analyse::NodeBytes& u = data.by_node[artifact["node"].get<std::string>()];
      u.bytes_uploaded = u.bytes_uploaded.value_or(0) + o.stats->bytes_out;
      data.bytes_uploaded_from_nodes += o.stats->bytes_out;
    }
    if (o.fetched) {
      n.bytes_fetched += o.stats->bytes_out;
      data.bytes_fetched += o.stats->bytes_out;
      ++data.outputs_fetched;
    } else {
      data.bytes_left_on_cluster += o.stats->bytes_out;
      ++data.outputs_left_on_cluster;
    }
  }
  return run;
}

std::string FirstLine(const std::string& text) { return text.substr(0, text.find('\n')); }

namespace {

using Clock = std::chrono::steady_clock;

// Plain lines for logs and pipes.
class LineProgress : public RunObserver {
 public:
  explicit LineProgress(std::string prefix) : prefix_(std::move(prefix)) {}
  void OnStagesAdded(const PipelineStage& tmpl, std::size_t count) override {
    std::fprintf(stderr, "%sforeach %s: %zu instance%s from the items of '%s'\n", prefix_.c_str(),
                 tmpl.name.c_str(), count, count == 1 ? "" : "s", tmpl.foreach_from.c_str());
  }
  void OnStageFinished(const PipelineStage& st, const StageOutcome& o) override {
    if (o.state == StageState::kSucceeded) {
      std::fprintf(stderr, "%s%s %s (%s) %.3fs %s\n", prefix_.c_str(),
                   o.cached ? "cached " : "ok     ", st.name.c_str(), st.stage.c_str(),
                   o.stats->wall_s, util::HumanBytes(o.stats->bytes_out).c_str());
    } else {
      std::fprintf(stderr, "%sFAILED  %s (%s): %s\n", prefix_.c_str(), st.name.c_str(),
                   st.stage.c_str(), FirstLine(o.status.message()).c_str());
    }
  }

 private:
  std::string prefix_;
};

// One status line redrawn in place, with a ticking clock.
class TerminalProgress : public RunObserver {
 public:
  TerminalProgress(std::size_t total, std::string prefix)
      : total_(total), prefix_(std::move(prefix)), start_(Clock::now()) {
    ticker_ = std::thread([this] {
      std::unique_lock<std::mutex> lock(mu_);
      while (!done_) {
        Draw();
        cv_.wait_for(lock, std::chrono::milliseconds(200));
      }
    });
  }
  ~TerminalProgress() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
      Draw();
      std::fputs("\n", stderr);
    }
    cv_.notify_all();
    ticker_.join();
  }
  void OnStagesAdded(const PipelineStage& /*tmpl*/, std::size_t count) override {
    std::lock_guard<std::mutex> lock(mu_);
    total_ = total_ - 1 + count;  // the template's place taken by its instances
    Draw();
  }
  void OnStageStarted(const PipelineStage& st) override {
    std::lock_guard<std::mutex> lock(mu_);
    ++running_;
    last_ = st.name;
    Draw();
  }
  void OnStageFinished(const PipelineStage& st, const StageOutcome& o) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!o.cached) --running_;  // a cached stage never started
    if (o.state == StageState::kSucceeded) {
      ++done_count_;
      cached_ += o.cached ? 1 : 0;
    } else {
      ++failed_;
      std::fprintf(stderr, "\r\033[K%sFAILED  %s (%s): %s\n", prefix_.c_str(), st.name.c_str(),
                   st.stage.c_str(), FirstLine(o.status.message()).c_str());
    }
    Draw();
  }

 private:
  void Draw() {
    double elapsed = std::chrono::duration<double>(Clock::now() - start_).count();
    std::fprintf(stderr, "\r\033[K%s[%zu/%zu done, %zu cached] %zu running, %zu failed, %.1fs  %s",
                 prefix_.c_str(), done_count_, total_, cached_, running_, failed_, elapsed,
                 last_.c_str());
    std::fflush(stderr);
  }

  std::size_t total_;
  std::string prefix_;
  Clock::time_point start_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::size_t running_ = 0, done_count_ = 0, failed_ = 0, cached_ = 0;
  std::string last_;
  std::thread ticker_;
};

}  // namespace

std::unique_ptr<RunObserver> MakeProgress(std::size_t total, bool quiet, std::string prefix) {
  if (quiet) return nullptr;
  if (::isatty(STDERR_FILENO) != 0) return std::make_unique<TerminalProgress>(total, prefix);
  return std::make_unique<LineProgress>(prefix);
}

}  // namespace stagekit::cli
