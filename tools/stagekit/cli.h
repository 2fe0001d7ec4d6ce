// Shared pieces of the stagekit command line tool. Each subcommand lives in
// its own cmd_<name>.cc and registers itself with Set<Name>Command(); only
// main() turns a Status into an exit code.
#ifndef STAGEKIT_TOOLS_CLI_H_
#define STAGEKIT_TOOLS_CLI_H_

#include <CLI/CLI.hpp>

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "analyse/run_record.h"
#include "deploy/package.h"
#include "deploy/ship.h"
#include "operate/cost.h"
#include "stagekit/pipeline.h"
#include "stagekit/status.h"
#include "util/files.h"
#include "util/text.h"

namespace stagekit::cli {

// What main() runs after parsing: the chosen subcommand's action.
using Action = std::function<Status()>;

// --stages / --stage-path, shared by every subcommand that loads stages.
struct LibraryOptions {
  std::vector<std::string> stages;      // explicit library paths
  std::vector<std::string> stage_path;  // extra search directories
  void AddTo(CLI::App* cmd);
  // --stage-path, $STAGEKIT_STAGE_PATH, `pipeline_dir` (if any), then the
  // stage directory next to the stagekit binary.
  std::vector<std::filesystem::path> SearchDirs(const std::filesystem::path& pipeline_dir) const;
};

// Loads the pipeline file, its libraries and --stages, and checks that every
// stage it uses is registered. `libraries` receives every loaded library
// path (for subprocess runners).
Result<Pipeline> LoadPipelineWithLibraries(const std::string& file, const LibraryOptions& libs,
                                           std::vector<std::filesystem::path>& libraries);
Status LoadLibraries(const std::vector<std::filesystem::path>& paths);

// Options shared by `run` and `parity`.
struct ExecOptions {
  int jobs = 0;  // 0: one per CPU
  std::string out;
  std::string timeout;                 // default per-stage timeout when the pipeline gives none
  std::vector<std::string> resources;  // placement overrides, STAGE:KEY=VALUE,...
  bool json = false;
  bool quiet = false;
  void AddTo(CLI::App* cmd, bool with_out_default_note);
  // -j, else one per CPU: of this machine, or of the whole cluster for ray.
  int Jobs(const StageExecutor& executor) const;
};

// What the command line takes from the environment, read in this one place
// (the library reads no settings from the environment; these become options).
struct Environment {
  std::string ray_address;                  // $RAY_ADDRESS: the cluster when --address is not given
  std::filesystem::path ray_bin_dir;        // $STAGEKIT_RAY_BIN_DIR: `ray` and `python`
  std::string path;                         // $PATH: where else Ray's `ray` may be
  std::filesystem::path autoscaler_config;  // $STAGEKIT_AUTOSCALER_CONFIG
  std::filesystem::path runner;             // $STAGEKIT_RUNNER: the subprocess stage runner
  std::filesystem::path cache_dir;          // $STAGEKIT_CACHE_DIR
  bool warm = true;                         // $STAGEKIT_WARM=0 (or off, false, no): cold
  // Read once, on first use.
  static const Environment& Get();
};

// --cache-dir when given, else $STAGEKIT_CACHE_DIR, else DiskCache::DefaultDir().
std::filesystem::path CacheDir(const std::string& flag);

// Options of the ray executor, shared by `run` and `parity`.
struct RayCliOptions {
  std::string address;
  int attempts = 3;
  int fetch_window_mib = 32;
  std::string s3_endpoint;  // where nodes upload artifacts (not a flag: run's --endpoint-url)
  void AddTo(CLI::App* cmd);
};

// Adds what only some executors know (the Ray cluster, object store use).
void AddExecutorDetails(const StageExecutor& executor, analyse::RunRecord& summary);

// Builds an executor by name; kUsage for unknown names, kRayUnavailable when
// the ray executor is asked for without Ray.
Result<std::unique_ptr<StageExecutor>> MakeExecutor(
    const std::string& name, const std::vector<std::filesystem::path>& libraries,
    const RayCliOptions& ray);

// Applies --timeout to stages without their own, then --resources overrides.
Status ApplyCommandLine(Pipeline& pipeline, const ExecOptions& exec);

// The summary of one run (what --json prints and what is written beside the outputs).
analyse::RunRecord RunSummary(const Pipeline& pipeline, const RunResult& result,
                              std::string_view executor, int jobs,
                              const std::filesystem::path& out_dir);
using util::WriteFileAtomically;

// A progress display on a terminal, plain log lines otherwise, nothing with quiet.
std::unique_ptr<RunObserver> MakeProgress(std::size_t total, bool quiet, std::string prefix);

using util::HumanBytes;
std::string FirstLine(const std::string& text);

// Packaging options shared by `ship` and `submit`.
struct ShipCli {
  std::string root;
  std::vector<std::string> includes;
  std::vector<std::string> excludes;
  bool no_default_excludes = false;
  bool no_gitignore = false;
  std::string max_size = "100MiB";
  int level = 0;
  bool keep_debug = false;
  void AddTo(CLI::App* cmd);
  std::vector<std::string> Patterns() const;  // the exclude patterns in force
};
// Cost records and prices, shared by `run`, `submit` and `cost`.
struct CostCli {
  std::string log;                  // default: operate::DefaultCostLog()
  std::string cluster;              // a cluster spec, for prices
  std::vector<std::string> prices;  // TYPE=USD
  bool no_record = false;
  void AddTo(CLI::App* cmd);
  std::filesystem::path Log() const;
  Result<operate::PriceBook> Prices() const;
};

// --report FILE.html / --trace FILE, shared by `run` and `parity` (see cmd_report.cc).
struct ReportCli {
  std::string html;
  std::string trace;
  void AddTo(CLI::App* cmd);
  // Writes what was asked for from a run summary or a parity document;
  // prints where unless `quiet`. kOutputError when a file cannot be written.
  Status Write(const analyse::RunRecord& run, bool quiet) const;
  Status Write(const analyse::ParityDocument& doc, bool quiet) const;
};

// Threads for hashing: one per CPU.
int Threads();
// A pipeline file (or a folder, shipped as it is) -> the package plan.
Result<deploy::ShipPlan> PlanFromCommandLine(const std::string& pipeline,
                                             const LibraryOptions& libs, const ShipCli& cli);

void SetRunCommand(CLI::App& app, Action& action);
void SetShipCommand(CLI::App& app, Action& action);
void SetFetchCommand(CLI::App& app, Action& action);
void SetCostCommand(CLI::App& app, Action& action);
void SetDoctorCommand(CLI::App& app, Action& action);
void SetSubmitCommand(CLI::App& app, Action& action);
void SetJobsCommand(CLI::App& app, Action& action);
void SetParityCommand(CLI::App& app, Action& action);
void SetStageCommand(CLI::App& app, Action& action);
void SetListCommand(CLI::App& app, Action& action);
void SetRayReaperCommand(CLI::App& app, Action& action);
void SetClusterCommand(CLI::App& app, Action& action);
void SetWatchdogCommand(CLI::App& app, Action& action);
void SetAuditCommand(CLI::App& app, Action& action);
void SetCacheCommand(CLI::App& app, Action& action);
void SetReportCommand(CLI::App& app, Action& action);

}  // namespace stagekit::cli

#endif  // STAGEKIT_TOOLS_CLI_H_
