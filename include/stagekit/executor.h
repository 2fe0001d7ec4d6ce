// Executors: the transports that carry a StageRequest to Invoke().
#ifndef STAGEKIT_EXECUTOR_H_
#define STAGEKIT_EXECUTOR_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "stagekit/export.h"
#include "stagekit/invoke.h"
#include "stagekit/status.h"

namespace stagekit {

// Placement hints. The Ray executor turns them into task resources; the local
// executors validate and record them.
struct STAGEKIT_API Resources {
  double cpus = 1;
  double gpus = 0;  // fractional allowed (0.01 co-locates, < 1)
  std::uint64_t memory_bytes = 0;
  std::map<std::string, double> custom;  // e.g. {"vm:g4dn.2xlarge": 1}

  // kInvalidPipeline when a value is negative, not finite, or a fraction
  // above 1 (Ray accepts fractions only below 1).
  Status Validate() const;
  Json ToJson() const;
};

// Parses "512MiB", "4GiB", "1.5GB", "1000" (bytes). kInvalidPipeline on error.
STAGEKIT_API Result<std::uint64_t> ParseBytes(std::string_view text);
// Parses "30s", "5m", "250ms", "1h", "2.5" (seconds). kInvalidPipeline on error.
STAGEKIT_API Result<std::chrono::milliseconds> ParseDuration(std::string_view text);

// Cancellation, passed explicitly: the caller owns the flag and hands it to
// what should stop when it is set (RunOptions::cancel, the executors'
// options). Executors then stop their children and the scheduler launches
// nothing more. Lock-free, so a signal handler may set it
// (InstallInterruptHandlers).
class CancelFlag {
 public:
  void Cancel() noexcept { flag_.store(true, std::memory_order_relaxed); }
  void Reset() noexcept { flag_.store(false, std::memory_order_relaxed); }
  bool cancelled() const noexcept { return flag_.load(std::memory_order_relaxed); }
  // While on, InstallInterruptHandlers' handler ends the process at once
  // (exit 130, "stagekit: interrupted") instead of setting the flag: for
  // long work that has nothing to clean up and no loop that could check the
  // flag, such as parsing a 200,000-stage pipeline file.
  void SetExitAtOnce(bool on) noexcept { exit_at_once_.store(on, std::memory_order_relaxed); }
  bool exits_at_once() const noexcept { return exit_at_once_.load(std::memory_order_relaxed); }

 private:
  std::atomic<bool> flag_{false};
  std::atomic<bool> exit_at_once_{false};
};

// Whether `flag` is set; nullptr: never cancelled.
inline bool Cancelled(const CancelFlag* flag) noexcept {
  return flag != nullptr && flag->cancelled();
}

struct STAGEKIT_API StageOptions {
  Resources resources;
  // Enforced by the subprocess (and Ray) executors; the in-process executor
  // cannot stop a running function and only reports the overrun.
  std::optional<std::chrono::milliseconds> timeout;
  // Whether the driver needs the output as a file in the output folder (the
  // scheduler decides it from `run --outputs` and the stage's `keep`). An
  // executor whose outputs stay remote (Ray) leaves an output it need not
  // fetch in the object store, where the stages that read it get it by
  // reference; the others write every output, since files are how their
  // stages pass data.
  bool fetch_output = true;
  // How many stages of the run read this output. An executor that keeps
  // outputs remote releases one once that many readers have succeeded.
  int readers = 0;
  // s3://BUCKET/KEY: an executor that keeps outputs remote uploads the
  // output there from the node that holds it, once the stage succeeded, and
  // says how it went in RunStats::artifact. Empty: no upload. The local
  // executors ignore it (their outputs are files the driver syncs).
  std::string artifact;
};

// A stage an asynchronous executor finished: the ticket it was submitted
// under, and what Run() would have returned.
struct STAGEKIT_API StageCompletion {
  std::uint64_t ticket = 0;
  Result<RunStats> stats = Status(Code::kInternal, "not run");
  // The output is made and stages that read it may start (they get it by
  // reference), but the stage is not done: the driver's copy is still on its
  // way, and a completion without this flag for the same ticket follows.
  // Only for an output with readers (StageOptions::readers) that is fetched.
  bool made_only = false;
};

// The interface every transport implements. Run() may be called from several
// threads at once.
class STAGEKIT_API StageExecutor {
 public:
  virtual ~StageExecutor() = default;
  virtual std::string_view name() const = 0;
  virtual Result<RunStats> Run(const StageRequest& request, const StageOptions& options) = 0;
  // True when outputs are made away from the driver and reach its output
  // folder only when fetched (StageOptions::fetch_output); false when every
  // output is a file there as soon as its stage succeeded.
  virtual bool outputs_stay_remote() const { return false; }

  // The nodes stages run on, as [{"node": "ip:port", "resources": {"CPU":
  // 4, ...}}]; empty for executors that run on this machine.
  virtual Json Nodes() const { return Json::array(); }
  // What a run summary records about the executor's back end (Ray: address,
  // private head, nodes, counters); an empty object for the local ones.
  virtual Json Describe() const { return Json::object(); }

  // Submit-then-complete, for executors that await many stages at once
  // without a thread each (Ray: one loop and ray::Wait over every running
  // stage). When asynchronous(), the scheduler starts stages with Submit()
  // and collects them with AwaitCompletions(), from one thread; --jobs then
  // costs no driver thread per stage. The defaults run the stage in Submit()
  // itself, through Run().
  virtual bool asynchronous() const { return false; }
  // Starts a stage; its result comes back from AwaitCompletions() under
  // `ticket`, which the caller chooses and never reuses while it runs.
  virtual void Submit(std::uint64_t ticket, const StageRequest& request,
                      const StageOptions& options);
  // Waits up to `timeout` for a submitted stage to finish; returns every one
  // that has (none when the time ran out).
  virtual std::vector<StageCompletion> AwaitCompletions(std::chrono::milliseconds timeout);

 private:
  std::vector<StageCompletion> completed_;  // by the default Submit()
};

// Calls Invoke() in the calling thread.
class STAGEKIT_API InProcessExecutor final : public StageExecutor {
 public:
  // warm: whether warm stages keep their set-up instance between runs
  // (InvokeWarm); false is the cold baseline (the CLI's STAGEKIT_WARM=0).
  explicit InProcessExecutor(const Registry& registry = Registry::Global(), bool warm = true)
      : registry_(registry), warm_(warm) {}
  std::string_view name() const override { return "inprocess"; }
  Result<RunStats> Run(const StageRequest& request, const StageOptions& options) override;

 private:
  const Registry& registry_;
  bool warm_ = true;
};

// Runs `RUNNER stage NAME --stages LIB...` per stage, request JSON on stdin,
// RunStats JSON as the last line of stdout.
//
// Warm stages (STAGEKIT_WARM_STAGE, when this process has loaded the library
// that registers them) run instead in persistent children, `RUNNER stage
// --serve --stages LIB...`, one request at a time each, so that a child sets
// up a warm stage once and reuses it. There are never more children than
// Run() calls at once. A child that times out is killed and replaced; one that
// dies mid-request fails that request (with its stderr tail) and is replaced;
// children exit when the executor is destroyed, or on end of their stdin when
// this process dies.
//
// A child never writes the output itself: it writes into a private folder this
// process made beside it, and this process renames the file into place only
// when the child reported success in time. A child that outlives this process
// (kill -9), times out, or is stopped by an interrupt can never replace an
// output, in particular not one a later run wrote.
class STAGEKIT_API SubprocessExecutor final : public StageExecutor {
 public:
  struct Options {
    // The stage runner. Empty: DefaultRunner(), the lean runner
    // `stagekit-stage` beside the current executable or libstagekit, else
    // the stagekit command line (`stagekit stage` speaks the same protocol).
    std::filesystem::path runner;
    std::vector<std::filesystem::path> libraries;  // passed as --stages
    // Timeout policy: SIGTERM at the deadline, SIGKILL `kill_grace` later.
    std::chrono::milliseconds kill_grace{2000};
    std::size_t tail_bytes = 2048;  // how much of stdout/stderr a failure shows
    // Which stages run in persistent children: kWarmStages (default; none
    // without `warm`), kAll (plain stages too: saves a process start per
    // stage but gives up a fresh process per stage), or kNone.
    enum class Persistent { kNone, kWarmStages, kAll };
    Persistent persistent = Persistent::kWarmStages;
    // false: warm stages set up and tear down on every run (the runner's
    // --cold; the CLI's STAGEKIT_WARM=0), in fresh children.
    bool warm = true;
    // Once set, running children are stopped (kInterrupted); nullptr: never.
    const CancelFlag* cancel = nullptr;
  };
  explicit SubprocessExecutor(Options options);
  ~SubprocessExecutor() override;
  SubprocessExecutor(const SubprocessExecutor&) = delete;
  SubprocessExecutor& operator=(const SubprocessExecutor&) = delete;
  std::string_view name() const override { return "subprocess"; }
  Result<RunStats> Run(const StageRequest& request, const StageOptions& options) override;
  const std::filesystem::path& runner() const { return options_.runner; }
  // Persistent children started so far, and alive now.
  std::size_t children_started() const;
  std::size_t children_alive() const;

 private:
  class Children;
  Result<RunStats> RunFresh(const StageRequest& req, const StageOptions& options);
  Result<RunStats> RunOnce(const StageRequest& req, const StageOptions& options);
  Options options_;
  std::unique_ptr<Children> children_;
};

}  // namespace stagekit

#endif  // STAGEKIT_EXECUTOR_H_
