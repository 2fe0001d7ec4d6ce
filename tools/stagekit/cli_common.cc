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
#include "stagekit/executor.h"
#include "stagekit/ray.h"
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
         "Placement override, STAGE:KEY=VALUE[,...] with STAGE a name or '*' and KEY cpus, gpus, "
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

Result<std::unique_ptr<StageExecutor>> MakeExecutor(const std::string& name,
                                                    const std::vector<fs::path>& libraries,
                                                    const RayCliOptions& ray) {
  if (name == "inprocess") return std::unique_ptr<StageExecutor>(new InProcessExecutor());
  if (name == "subprocess") {
    SubprocessExecutor::Options options;
    options.libraries = libraries;
    return std::unique_ptr<StageExecutor>(new SubprocessExecutor(options));
  }
  if (name == "ray") {
    RayOptions options;
    options.address = ray.address;
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

void AddExecutorDetails(const StageExecutor& executor, Json& summary) {
  if (Json d = executor.Describe(); !d.empty()) summary[std::string(executor.name())] = d;
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

Json RunSummary(const Pipeline& pipeline, const RunResult& result, std::string_view executor,
                int jobs, const fs::path& out_dir) {
  Json stages = Json::array();
  for (std::size_t i = 0; i < result.stages.size(); ++i) {
    const StageOutcome& o = result.stages[i];
    const PipelineStage& st = pipeline.stages[i];
    Json entry{
        {"name", o.name},
        {"stage", st.stage},
        {"state", StageStateName(o.state)},
        {"output", o.output.string()},
        {"resources", st.options.resources.ToJson()},
        {"timeout_s", st.options.timeout
                          ? Json(static_cast<double>(st.options.timeout->count()) / 1000.0)
                          : Json(nullptr)},
        {"stats", o.stats ? o.stats->ToJson() : Json(nullptr)},
        {"cached", o.cached},
        {"fetched", o.fetched},
        {"start_s", o.start_s < 0 ? Json(nullptr) : Json(o.start_s)},
        {"end_s", o.end_s < 0 ? Json(nullptr) : Json(o.end_s)},
        {"slot", o.slot < 0 ? Json(nullptr) : Json(o.slot)},
        {"error", o.state == StageState::kFailed ? ErrorToJson(o.status)["error"] : Json(nullptr)}};
    stages.push_back(std::move(entry));
  }
  // Where bytes went: per node that ran stages, what they produced and what
  // of it the driver fetched into the output folder (cached stages ran
  // nowhere and are not counted).
  Json by_node = Json::object();
  std::uint64_t fetched = 0, left = 0, outputs_fetched = 0, outputs_left = 0, uploaded = 0;
  for (const StageOutcome& o : result.stages) {
    if (!o.stats || o.cached) continue;
    Json& n = by_node[o.stats->node.empty() ? o.stats->host : o.stats->node];
    if (n.is_null()) n = {{"stages", 0}, {"bytes_produced", 0}, {"bytes_fetched", 0}};
    n["stages"] = n["stages"].get<std::uint64_t>() + 1;
    n["bytes_produced"] = n["bytes_produced"].get<std::uint64_t>() + o.stats->bytes_out;
    const Json& artifact = o.stats->artifact;
    if (artifact.is_object() && artifact.contains("node") && !artifact.contains("error")) {
      // Usually the node that made it (Ray runs the upload beside the bytes).
      Json& u = by_node[artifact["node"].get<std::string>()];
      if (u.is_null()) u = {{"stages", 0}, {"bytes_produced", 0}, {"bytes_fetched", 0}};
      u["bytes_uploaded"] = u.value("bytes_uploaded", std::uint64_t{0}) + o.stats->bytes_out;
      uploaded += o.stats->bytes_out;
    }
    if (o.fetched) {
      n["bytes_fetched"] = n["bytes_fetched"].get<std::uint64_t>() + o.stats->bytes_out;
      fetched += o.stats->bytes_out;
      ++outputs_fetched;
    } else {
      left += o.stats->bytes_out;
      ++outputs_left;
    }
  }
  Json data{{"by_node", by_node},
            {"outputs_fetched", outputs_fetched},
            {"bytes_fetched", fetched},
            {"outputs_left_on_cluster", outputs_left},
            {"bytes_left_on_cluster", left},
            {"bytes_uploaded_from_nodes", uploaded}};
  return Json{
      {"pipeline", pipeline.name},
      {"file", pipeline.file.string()},
      {"executor", executor},
      {"jobs", jobs},
      {"out_dir", out_dir.string()},
      {"status", result.status.ok() ? "succeeded" : "failed"},
      {"error", result.status.ok() ? Json(nullptr) : ErrorToJson(result.status)["error"]},
      {"failed_stage", result.failed_stage.empty() ? Json(nullptr) : Json(result.failed_stage)},
      {"wall_s", result.wall_s},
      {"job", pipeline.job.ToJson()},
      {"data", data},
      {"stages", stages}};
}

std::string FirstLine(const std::string& text) { return text.substr(0, text.find('\n')); }

namespace {

using Clock = std::chrono::steady_clock;

// Plain lines for logs and pipes.
class LineProgress : public RunObserver {
 public:
  explicit LineProgress(std::string prefix) : prefix_(std::move(prefix)) {}
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
