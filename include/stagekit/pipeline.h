// Pipelines: a YAML file naming stage libraries, a job spec and stages, and a
// scheduler that runs the resulting graph on any StageExecutor.
//
//   name: wordcount                  # optional; default: the file's stem
//   libraries: [stagekit_examples]   # names (lib<name>.so on the search path) or paths
//   job: {name: wc, seed: 7, params: {}}
//   artifacts: s3://bucket/prefix    # optional; `run` syncs the outputs there after success
//   stages:
//     - name: map_00
//       stage: wordcount.map         # registered stage name
//       inputs: {text: corpus/a.txt} # file (relative to this file) ...
//       output: map_00.tsv           # default: <name>.out
//       kwargs: {min_length: 2}
//       resources: {cpus: 1, gpus: 0.01, memory: 1GiB, custom: {"vm:g4dn.2xlarge": 1}}
//       timeout: 30s
//     - name: reduce
//       stage: wordcount.reduce
//       inputs: {part0: {from: map_00}}   # ... or another stage's output
#ifndef STAGEKIT_PIPELINE_H_
#define STAGEKIT_PIPELINE_H_

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "stagekit/executor.h"
#include "stagekit/export.h"
#include "stagekit/invoke.h"
#include "stagekit/status.h"

namespace stagekit {

struct STAGEKIT_API InputRef {
  std::string from_stage;      // set when the input is another stage's output
  std::filesystem::path file;  // absolute, set when the input is a file
  // A collect from a dynamic foreach stage (from_stage "map[*]"), before the
  // run made its instances: the key filter ("*", "a*"). The scheduler turns
  // the input into one input NAME[KEY] per matching instance.
  std::string collect;
};

struct DynamicForeach;  // how a dynamic foreach stage makes its instances (pipeline.cc)

struct STAGEKIT_API PipelineStage {
  std::string name;   // unique within the pipeline
  std::string stage;  // registered stage name
  std::map<std::string, InputRef> inputs;
  std::string output;  // relative file name under the run's output directory
  Json kwargs = Json::object();
  StageOptions options;
  // `keep: true`: the driver fetches this output whatever `run --outputs`
  // says (unless none); `keep: false`: never. Unset: as --outputs says.
  std::optional<bool> keep;
  int line = 0;  // where it is declared
  // A dynamic foreach stage (`foreach: {from: STAGE}`), named NAME[*]: not a
  // stage that runs but the template of its instances NAME[KEY], made when
  // STAGE's output (its item list) exists. See ExpandDynamicStage.
  std::string foreach_from;
  std::shared_ptr<const DynamicForeach> dynamic;
};

struct STAGEKIT_API Pipeline {
  std::filesystem::path file;  // absolute
  std::string name;
  std::vector<std::string> libraries;  // as written
  JobSpec job;
  std::string artifacts;              // s3://bucket/prefix, or empty
  std::vector<PipelineStage> stages;  // in a topological order

  const PipelineStage* Find(std::string_view name) const;
  // Whether a stage has `foreach: {from: STAGE}`: its instances are known
  // only at run time (RunResult::pipeline has them).
  bool dynamic() const;
};

// Parses and validates a pipeline file. kInvalidPipeline with
// "FILE:LINE:COLUMN: ..." for syntax errors, unknown keys, bad values,
// duplicate stage names, references to unknown stages and cycles (naming the
// stages on the cycle); kInputError when the file cannot be read or is not
// a regular file. Limits: the file at most kMaxPipelineBytes; kwargs and
// job.params nested at most 64 levels and, YAML aliases expanded, at most
// 1,000,000 values in one stage's kwargs (or the params), 10,000,000 in all
// (kInvalidPipeline past any of them).
inline constexpr std::uint64_t kMaxPipelineBytes = 64ull << 20;
STAGEKIT_API Result<Pipeline> LoadPipeline(const std::filesystem::path& file);
STAGEKIT_API Result<Pipeline> ParsePipeline(std::string_view yaml_text,
                                            const std::filesystem::path& file);

// At most this many instances per foreach (static or dynamic).
inline constexpr std::size_t kMaxForeachItems = 100000;

// Dynamic fan-out. An item list is JSON Lines: one item per line, a JSON
// object of scalars ({"start": 0, "end": 4096}: {start} and {end}; its key,
// the instance's name, "start=0,end=4096" unless the object has a "key")
// or one scalar ({item}, key the value). Blank lines are skipped. Limits:
// the file at most kMaxItemListBytes, a line at most kMaxItemLineBytes,
// fanout's 100,000 items and 200-byte keys.
inline constexpr std::uint64_t kMaxItemListBytes = 64ull << 20;
inline constexpr std::size_t kMaxItemLineBytes = 64 << 10;
// The instances of dynamic foreach stage `tmpl` for the item list in
// `items_file` (the output of stage tmpl.foreach_from), in item order, as
// the pipeline file would have declared them. kInvalidPipeline naming the
// producing stage, the file and the line for a malformed or oversized list
// or an instance the pipeline could not hold; kInputError when the file
// cannot be read.
STAGEKIT_API Result<std::vector<PipelineStage>> ExpandDynamicStage(
    const PipelineStage& tmpl, const std::filesystem::path& items_file);

// Points `st`'s collects from dynamic foreach stage `tmpl` (NAME[*]) at its
// instances (NAME[KEY], in item order): each such input INPUT becomes one
// input INPUT[KEY] per instance whose KEY the collect's filter matches.
// Returns the inputs added, as (input, instance) pairs.
STAGEKIT_API std::vector<std::pair<std::string, std::string>> PointCollects(
    PipelineStage& st, const std::string& tmpl, const std::vector<std::string>& instances);

// Turns library entries into paths: an entry with a '/' or ending in ".so" is a
// path relative to the pipeline file; a bare name N is the first lib<N>.so (or
// N.so) found in `search_dirs`. kLibraryError naming the places looked in.
STAGEKIT_API Result<std::vector<std::filesystem::path>> ResolveLibraries(
    const Pipeline& pipeline, const std::vector<std::filesystem::path>& search_dirs);

// Applies a command-line placement override, "STAGE:KEY=VALUE[,KEY=VALUE...]":
// STAGE is a stage name or "*" for every stage; KEY is cpus, gpus, memory
// (e.g. 4GiB) or a custom resource name (e.g. vm:g4dn.2xlarge=1, 0 removes it).
// kUsage naming the problem; unknown stage names included.
STAGEKIT_API Status ApplyResourceOverride(Pipeline& pipeline, std::string_view spec);

// The stage library directories of this stagekit installation
// (<libdir>/stagekit/stages), for the build tree and the install tree.
STAGEKIT_API std::vector<std::filesystem::path> DefaultStageDirs();

// kUnknownStage (with suggestions) for the first stage whose registered name
// is not in the registry.
STAGEKIT_API Status CheckStagesRegistered(const Pipeline& pipeline, const Registry& registry);

// ---------------------------------------------------------------------------
// Scheduling

enum class StageState { kPending, kRunning, kSucceeded, kFailed, kNotRun };
STAGEKIT_API std::string_view StageStateName(StageState state);

struct STAGEKIT_API StageOutcome {
  std::string name;
  StageState state = StageState::kPending;
  std::optional<RunStats> stats;
  Status status;  // for kFailed
  std::filesystem::path output;
  bool cached = false;  // succeeded by restoring a cached output; nothing ran
  // Whether the output is a file at `output` once the stage succeeded; false
  // when it stayed on the cluster (RunOptions::outputs).
  bool fetched = true;
  // When it ran, in seconds since the run started (steady clock), and which
  // scheduler slot (0 .. jobs-1) ran it; -1 when it never started.
  double start_s = -1;
  double end_s = -1;
  int slot = -1;
};

// Hooks for progress displays and traces; called from scheduler threads, one
// call at a time.
class STAGEKIT_API RunObserver {
 public:
  virtual ~RunObserver() = default;
  // A dynamic foreach stage was expanded into `count` instances (which then
  // start and finish as any stage does).
  virtual void OnStagesAdded(const PipelineStage& /*tmpl*/, std::size_t /*count*/) {}
  virtual void OnStageStarted(const PipelineStage& /*stage*/) {}
  virtual void OnStageFinished(const PipelineStage& /*stage*/, const StageOutcome& /*outcome*/) {}
};

// A store of stage outputs that the scheduler asks before it launches a stage
// and tells after a stage succeeded (see stagekit/cache.h for the one on
// disk). Called from scheduler threads, several at once.
class STAGEKIT_API StageCache {
 public:
  virtual ~StageCache() = default;
  // Called before a stage is looked up or launched: computes its key from its
  // inputs as they are now and returns a token for Lookup and Store ("" when
  // the key cannot be computed; the stage is then neither restored nor
  // stored). `upstream` maps each input that is another stage's output to
  // that output's digest ("sha256:<hex>"), so that it need not be hashed again.
  virtual std::string Prepare(const PipelineStage& stage, const StageRequest& request,
                              const std::map<std::string, std::string>& upstream) = 0;
  // As Prepare, for a stage launched while the outputs it reads by the names
  // in `by_reference` are not files yet (Ray: it reads them from the object
  // store while the driver still fetches its copies): those are keyed on
  // their digest in `upstream` alone, never on the file at their path. The
  // default keys nothing (the stage is neither restored nor stored).
  virtual std::string PrepareByReference(const PipelineStage& /*stage*/,
                                         const StageRequest& /*request*/,
                                         const std::map<std::string, std::string>& /*upstream*/,
                                         const std::set<std::string>& /*by_reference*/) {
    return "";
  }
  // When an entry matches, restores its output at request.output and returns
  // the RunStats recorded when it was made; nullopt otherwise.
  virtual std::optional<RunStats> Lookup(const PipelineStage& stage, const StageRequest& request,
                                         const std::string& token) = 0;
  // After the stage ran: records its output when `stats` is set (it
  // succeeded), forgets the token either way. Failures to store are the
  // cache's to report; they never fail the run.
  virtual void Store(const PipelineStage& stage, const StageRequest& request,
                     const std::string& token, const RunStats* stats) = 0;
};

struct STAGEKIT_API RunOptions {
  // Stages in flight at once. An asynchronous executor (Ray) has them all
  // awaited by the calling thread; the others get a thread per stage in
  // flight, at most 4096.
  int jobs = 1;
  RunObserver* observer = nullptr;
  // Asked before each stage is launched (one call at a time); a non-OK
  // Status launches nothing more, lets running stages finish and becomes the
  // run's status (e.g. a budget that ran out).
  std::function<Status()> before_launch;
  StageCache* cache = nullptr;
  bool lookup_cache = false;  // ask `cache` before launching (run --resume); else only store
  // 0: stages that are ready start in pipeline order. Otherwise the ready
  // stages are taken in an order shuffled with this seed (the determinism
  // audit's scheduling-order perturbation).
  std::uint64_t order_seed = 0;
  // Which outputs the driver fetches into the output folder when the
  // executor keeps outputs remote (Ray): every one (the default), the final
  // ones (no stage reads them) plus those marked `keep: true`, or none.
  // Local executors write every output whatever this says.
  enum class Outputs { kAll, kFinal, kNone };
  Outputs outputs = Outputs::kAll;
  // s3://BUCKET[/PREFIX]: with an executor that keeps outputs remote, every
  // stage's output is uploaded from the node that made it to
  // ARTIFACTS/<its path below the output folder> as soon as it is made
  // (StageOptions::artifact). Empty, or a local executor: nothing here.
  std::string artifacts;
  // Once set, nothing more is launched and the run ends kInterrupted (the
  // executor's own options say whether running stages are stopped too);
  // nullptr: never.
  const CancelFlag* cancel = nullptr;
};

// "all" / "final" / "none" and back; nullopt for anything else.
STAGEKIT_API std::optional<RunOptions::Outputs> ParseOutputs(std::string_view text);
STAGEKIT_API std::string_view OutputsName(RunOptions::Outputs outputs);

struct STAGEKIT_API RunResult {
  Status status;  // the first failure, or OK
  std::string failed_stage;
  std::vector<StageOutcome> stages;  // pipeline order (RunResult::Ran's)
  double wall_s = 0;
  // For a pipeline with dynamic foreach stages: the pipeline as it ran, each
  // expanded template replaced by its instances (in item order) and its
  // collects by their inputs; a template that never expanded (its producer
  // failed) is left out. Null for other pipelines.
  std::shared_ptr<const Pipeline> pipeline;

  // The pipeline `stages` lines up with: `pipeline` when set, else `ran`.
  const Pipeline& Ran(const Pipeline& ran) const { return pipeline ? *pipeline : ran; }
};

// Runs every stage whose inputs are ready, up to options.jobs at once. On the
// first failure (or interrupt) it launches nothing more, lets running stages
// finish, and returns that failure. Outputs go to out_dir/<stage.output>;
// out_dir is created if needed (kOutputError if it cannot be).
STAGEKIT_API RunResult RunPipeline(const Pipeline& pipeline, const std::filesystem::path& out_dir,
                                   StageExecutor& executor, const RunOptions& options);

}  // namespace stagekit

#endif  // STAGEKIT_PIPELINE_H_
