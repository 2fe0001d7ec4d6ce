#include <sys/stat.h>

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <thread>

#include "stagekit/pipeline.h"
#include "util/files.h"
#include "util/text.h"
#include "util/threads.h"

namespace stagekit {

namespace fs = std::filesystem;

// Threads a synchronous executor's run uses at most, whatever --jobs says.
constexpr std::size_t kMaxSchedulerThreads = 4096;

std::string_view StageStateName(StageState state) {
  switch (state) {
    case StageState::kPending:
      return "pending";
    case StageState::kRunning:
      return "running";
    case StageState::kSucceeded:
      return "succeeded";
    case StageState::kFailed:
      return "failed";
    case StageState::kNotRun:
      return "not_run";
  }
  return "unknown";
}

std::optional<RunOptions::Outputs> ParseOutputs(std::string_view text) {
  if (text == "all") return RunOptions::Outputs::kAll;
  if (text == "final") return RunOptions::Outputs::kFinal;
  if (text == "none") return RunOptions::Outputs::kNone;
  return std::nullopt;
}

std::string_view OutputsName(RunOptions::Outputs outputs) {
  switch (outputs) {
    case RunOptions::Outputs::kAll:
      return "all";
    case RunOptions::Outputs::kFinal:
      return "final";
    case RunOptions::Outputs::kNone:
      return "none";
  }
  return "all";
}

namespace {

// One run of a pipeline: the plan made from the pipeline (a request and
// fetch options per stage, who reads whom), then the loop that launches
// ready stages, asks the cache, and settles what finished. All mutable
// state below `mu_` is guarded by it.
class PipelineRun {
 public:
  PipelineRun(const Pipeline& pipeline, const fs::path& out_dir, StageExecutor& executor,
              const RunOptions& options)
      : pipeline_(pipeline),
        out_dir_(out_dir),
        executor_(executor),
        options_(options),
        n_(pipeline.stages.size()),
        shuffle_(options.order_seed) {}

  RunResult Run() {
    PlanRequests();
    PlanFetching();
    if (Status s = CheckPathsAreUtf8(); !s.ok()) return Finish(std::move(s));
    if (Status s = CheckOutputsAreNotInputs(); !s.ok()) return Finish(std::move(s));
    if (Status s = PrepareOutputDirs(); !s.ok()) return Finish(std::move(s));
    for (std::size_t i = 0; i < n_; ++i) {
      if (waiting_on_[i] == 0) ready_.push_back(i);
    }
    if (executor_.asynchronous()) {
      RunAsynchronous();
    } else {
      RunOnThreads();
    }
    return Finish(failure_);
  }

 private:
  // A stage taken from the ready queue, marked running.
  struct Launch {
    std::size_t i = 0;
    std::string token;  // the stage's cache key, taken before it runs
    std::optional<RunStats> hit;
  };

  double Seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }
  std::size_t IndexOf(const std::string& stage) const { return index_.at(stage); }

  // A request per stage (inputs from other stages are their output files
  // under --out), who reads whom, and how many producers each one waits for.
  void PlanRequests() {
    for (std::size_t i = 0; i < n_; ++i) index_[pipeline_.stages[i].name] = i;
    requests_.resize(n_);
    users_.resize(n_);
    waiting_on_.assign(n_, 0);
    result_.stages.resize(n_);
    for (std::size_t i = 0; i < n_; ++i) {
      const PipelineStage& st = pipeline_.stages[i];
      StageRequest& req = requests_[i];
      req.stage = st.stage;
      req.instance = st.name;
      req.output = out_dir_ / st.output;
      req.job = pipeline_.job;
      req.kwargs = st.kwargs;
      req.executor = std::string(executor_.name());
      req.threads = std::max(1, static_cast<int>(std::ceil(st.options.resources.cpus)));
      std::set<std::size_t> deps;
      for (const auto& [name, ref] : st.inputs) {
        if (ref.from_stage.empty()) {
          req.inputs[name] = ref.file;
        } else {
          std::size_t d = IndexOf(ref.from_stage);
          req.inputs[name] = out_dir_ / pipeline_.stages[d].output;
          deps.insert(d);
        }
      }
      for (std::size_t d : deps) users_[d].push_back(i);
      waiting_on_[i] = deps.size();
      result_.stages[i].name = st.name;
      result_.stages[i].output = req.output;
    }
  }

  // What each stage's executor is told about fetching its output; an output
  // that stays remote is not a file here, so the cache neither keys on it
  // nor stores it.
  void PlanFetching() {
    const bool remote = executor_.outputs_stay_remote();
    stage_options_.resize(n_);
    cacheable_.assign(n_, true);
    std::set<std::string> consumers;
    for (const PipelineStage& st : pipeline_.stages) {
      for (const auto& [name, ref] : st.inputs) consumers.insert(ref.from_stage);
    }
    for (std::size_t i = 0; i < n_; ++i) {
      const PipelineStage& st = pipeline_.stages[i];
      stage_options_[i] = st.options;
      bool fetch = true;
      if (options_.outputs == RunOptions::Outputs::kNone) {
        fetch = false;
      } else if (st.keep) {
        fetch = *st.keep;
      } else if (options_.outputs == RunOptions::Outputs::kFinal) {
        fetch = consumers.count(st.name) == 0;
      }
      stage_options_[i].fetch_output = fetch || !remote;
      cacheable_[i] = stage_options_[i].fetch_output;
      result_.stages[i].fetched = stage_options_[i].fetch_output;
      stage_options_[i].readers = static_cast<int>(users_[i].size());
      if (remote && !options_.artifacts.empty()) {
        std::string uri = options_.artifacts;
        while (uri.size() > 5 && uri.back() == '/') uri.pop_back();
        fs::path rel = fs::path(result_.stages[i].output).lexically_relative(out_dir_);
        if (rel.empty() || *rel.begin() == "..")
          rel = fs::path(result_.stages[i].output).filename();
        stage_options_[i].artifact = uri + "/" + rel.generic_string();
      }
    }
  }

  // Paths travel as JSON (UTF-8) in requests, records and Ray messages: an
  // --out folder or a pipeline folder whose path is not UTF-8 is refused
  // before anything runs (it once failed mid-run with a JSON library error).
  Status CheckPathsAreUtf8() const {
    auto bad = [](const fs::path& p) {
      return util::InvalidUtf8At(p.native()) != std::string_view::npos;
    };
    if (bad(out_dir_)) {
      return Status(Code::kOutputError, "the output folder '" + out_dir_.string() +
                                            "' has a path that is not UTF-8; choose an --out "
                                            "folder (and a working directory) whose path is UTF-8");
    }
    for (std::size_t i = 0; i < n_; ++i) {
      for (const auto& [name, path] : requests_[i].inputs) {
        if (bad(path)) {
          return Status(Code::kInputError, "input '" + name + "' of stage '" +
                                               pipeline_.stages[i].name + "' (" + path.string() +
                                               ") has a path that is not UTF-8; rename it, or "
                                               "its folder, to UTF-8");
        }
      }
    }
    return OkStatus();
  }

  // No output may be one of the pipeline's input files: the run would
  // overwrite what the user gave it. Compared by path and, for files that
  // exist, by device and inode (links, bind mounts, '..' through symlinks).
  Status CheckOutputsAreNotInputs() const {
    std::map<std::string, std::string> input_paths;  // path -> "input 'x' of stage 'y'"
    std::map<std::pair<dev_t, ino_t>, std::string> input_ids;
    for (const PipelineStage& st : pipeline_.stages) {
      for (const auto& [name, ref] : st.inputs) {
        if (!ref.from_stage.empty()) continue;
        const std::string what = "input '" + name + "' of stage '" + st.name + "'";
        std::error_code ec;
        input_paths.emplace(fs::absolute(ref.file, ec).lexically_normal().string(), what);
        struct stat in_st {};
        if (::stat(ref.file.c_str(), &in_st) == 0) {
          input_ids.emplace(std::make_pair(in_st.st_dev, in_st.st_ino), what);
        }
      }
    }
    for (std::size_t i = 0; i < n_; ++i) {
      const fs::path& out = requests_[i].output;
      auto by_path = input_paths.find(out.string());
      std::string clash = by_path != input_paths.end() ? by_path->second : "";
      struct stat out_st {};
      if (clash.empty() && ::stat(out.c_str(), &out_st) == 0) {
        auto by_id = input_ids.find(std::make_pair(out_st.st_dev, out_st.st_ino));
        if (by_id != input_ids.end()) clash = by_id->second;
      }
      if (!clash.empty()) {
        return Status(Code::kInvalidPipeline,
                      "the output of stage '" + pipeline_.stages[i].name + "' (" + out.string() +
                          ") is the file of " + clash +
                          "; the run would overwrite its own input: choose another --out "
                          "or another 'output'");
      }
    }
    return OkStatus();
  }

  // Creates each output's folder and clears what killed earlier runs left there.
  Status PrepareOutputDirs() const {
    std::set<fs::path> out_dirs;
    for (std::size_t i = 0; i < n_; ++i) {
      const fs::path dir = requests_[i].output.parent_path();
      if (!out_dirs.insert(dir).second) continue;
      std::error_code ec;
      fs::create_directories(dir, ec);
      if (ec) {
        return Status(Code::kOutputError, "cannot create output directory '" + dir.string() +
                                              "': " + ec.message() +
                                              "; choose another --out directory");
      }
      // What a killed or crashed earlier run left there (its process is gone).
      util::RemoveStaleTemps(dir);
    }
    return OkStatus();
  }

  RunResult Finish(Status status) {
    result_.status = std::move(status);
    for (StageOutcome& o : result_.stages) {
      if (o.state == StageState::kPending) o.state = StageState::kNotRun;
    }
    result_.wall_s = Seconds();
    return std::move(result_);
  }

  // Stops the run (lock held): Ctrl-C, or a failed before_launch hook.
  // True when the run may go on launching.
  bool MayLaunch() {
    if (!stop_ && Cancelled(options_.cancel)) {
      Stop(Status(Code::kInterrupted, "interrupted; running stages were stopped"));
    }
    if (!stop_ && !ready_.empty() && options_.before_launch) {
      if (Status s = options_.before_launch(); !s.ok()) Stop(std::move(s));
    }
    return !stop_ && !ready_.empty();
  }

  void Stop(Status why) {
    stop_ = true;
    failure_ = std::move(why);
    cv_.notify_all();
  }

  // The digests of the stage's inputs that other stages produced.
  std::map<std::string, std::string> UpstreamDigests(std::size_t i) const {
    std::map<std::string, std::string> digests;
    for (const auto& [name, ref] : pipeline_.stages[i].inputs) {
      if (ref.from_stage.empty()) continue;
      const StageOutcome& up = result_.stages[IndexOf(ref.from_stage)];
      if (up.stats) digests[name] = up.stats->output_digest;
    }
    return digests;
  }

  // Takes the next ready stage (lock held, released while the cache is
  // asked): marks it running in `slot`, and says whether the cache had it.
  // Nothing when the run was interrupted meanwhile.
  std::optional<Launch> TakeReady(int slot, std::unique_lock<std::mutex>& lock) {
    if (options_.order_seed != 0 && ready_.size() > 1) {
      std::swap(ready_.front(), ready_[shuffle_() % ready_.size()]);
    }
    Launch l;
    l.i = ready_.front();
    ready_.pop_front();
    ++running_;
    StageOutcome& outcome = result_.stages[l.i];
    outcome.state = StageState::kRunning;
    outcome.slot = slot;
    outcome.start_s = Seconds();
    if (options_.cache != nullptr && cacheable_[l.i]) AskCache(l, lock);
    if (!l.hit && !stop_ && Cancelled(options_.cancel)) {
      // Ctrl-C while the cache hashed the stage's inputs: it never starts.
      outcome.state = StageState::kPending;
      outcome.slot = -1;
      outcome.start_s = -1;
      --running_;
      Stop(Status(Code::kInterrupted, "interrupted; running stages were stopped"));
      return std::nullopt;
    }
    if (!l.hit && options_.observer != nullptr) {
      options_.observer->OnStageStarted(pipeline_.stages[l.i]);
    }
    return l;
  }

  // The stage's cache key, and its cached result if --resume may use it.
  void AskCache(Launch& l, std::unique_lock<std::mutex>& lock) {
    const std::map<std::string, std::string> upstream = UpstreamDigests(l.i);
    // Inputs whose producers were released early (made, still fetched):
    // the stage reads them by reference, their files may be stale.
    std::set<std::string> by_reference;
    for (const auto& [name, ref] : pipeline_.stages[l.i].inputs) {
      if (ref.from_stage.empty()) continue;
      if (result_.stages[IndexOf(ref.from_stage)].state != StageState::kSucceeded) {
        by_reference.insert(name);
      }
    }
    const PipelineStage& stage = pipeline_.stages[l.i];
    lock.unlock();
    l.token = by_reference.empty() ? options_.cache->Prepare(stage, requests_[l.i], upstream)
                                   : options_.cache->PrepareByReference(stage, requests_[l.i],
                                                                        upstream, by_reference);
    if (options_.lookup_cache && !l.token.empty()) {
      l.hit = options_.cache->Lookup(stage, requests_[l.i], l.token);
    }
    lock.lock();
  }

  // Readies the stages that waited only for stage i (lock held). Readers of
  // a stage its executor said was made before it ended (its output on its
  // way to the driver) are readied then, not again.
  void ReleaseReaders(std::size_t i) {
    if (readers_released_[i]) return;
    readers_released_[i] = true;
    for (std::size_t u : users_[i]) {
      if (--waiting_on_[u] == 0) ready_.push_back(u);
    }
  }

  // Records a stage's end (lock held, released while the cache stores it)
  // and readies the stages that waited only for it.
  void Settle(const Launch& l, Result<RunStats> stats, std::unique_lock<std::mutex>& lock) {
    const std::size_t i = l.i;
    StageOutcome& outcome = result_.stages[i];
    if (l.hit) {
      outcome.cached = true;
    } else if (options_.cache != nullptr && !l.token.empty()) {
      lock.unlock();
      // Where this run uploaded the output is this run's news, not the output's.
      std::optional<RunStats> kept;
      if (stats.ok()) {
        kept = *stats;
        kept->artifact = nullptr;
      }
      options_.cache->Store(pipeline_.stages[i], requests_[i], l.token, kept ? &*kept : nullptr);
      lock.lock();
    }
    --running_;
    outcome.end_s = Seconds();
    if (stats.ok()) {
      outcome.state = StageState::kSucceeded;
      outcome.stats = std::move(stats).value();
      ReleaseReaders(i);
    } else {
      outcome.state = StageState::kFailed;
      outcome.status = stats.status();
      if (!stop_) {
        stop_ = true;
        failure_ = stats.status();
        result_.failed_stage = pipeline_.stages[i].name;
      }
    }
    if (options_.observer != nullptr) {
      options_.observer->OnStageFinished(pipeline_.stages[i], outcome);
    }
    cv_.notify_all();
  }

  // One thread: up to --jobs stages submitted, their completions awaited
  // together. Slots are reused lowest first, as threads would be.
  void RunAsynchronous() {
    std::unique_lock<std::mutex> lock(mu_);
    const std::size_t jobs = static_cast<std::size_t>(std::max(options_.jobs, 1));
    std::set<int> free_slots;
    for (std::size_t t = 0; t < std::min(jobs, n_); ++t) free_slots.insert(static_cast<int>(t));
    std::map<std::uint64_t, Launch> in_flight;
    std::uint64_t next_ticket = 1;
    for (;;) {
      while (!free_slots.empty() && MayLaunch()) {
        const int slot = *free_slots.begin();
        std::optional<Launch> taken = TakeReady(slot, lock);
        if (!taken) continue;
        Launch l = std::move(*taken);
        if (l.hit) {
          RunStats hit = *l.hit;
          Settle(l, std::move(hit), lock);
          continue;
        }
        free_slots.erase(slot);
        const std::uint64_t ticket = next_ticket++;
        lock.unlock();
        executor_.Submit(ticket, requests_[l.i], stage_options_[l.i]);
        lock.lock();
        in_flight.emplace(ticket, std::move(l));
      }
      if (in_flight.empty()) break;  // nothing can start and nothing will finish
      lock.unlock();
      std::vector<StageCompletion> done =
          executor_.AwaitCompletions(std::chrono::milliseconds(100));
      lock.lock();
      for (StageCompletion& c : done) {
        auto it = in_flight.find(c.ticket);
        if (it == in_flight.end()) continue;
        if (c.made_only) {
          // Its readers start on the result by reference while the driver
          // fetches its copy; the stage keeps its slot until then.
          if (c.stats.ok() && !stop_) {
            result_.stages[it->second.i].stats = *c.stats;  // its digest keys its readers' cache
            ReleaseReaders(it->second.i);
          }
          continue;
        }
        Launch l = std::move(it->second);
        in_flight.erase(it);
        free_slots.insert(result_.stages[l.i].slot);
        Settle(l, std::move(c.stats), lock);
      }
    }
  }

  // A synchronous executor: --jobs threads, each running one stage at a time.
  void RunOnThreads() {
    const std::size_t threads = std::max<std::size_t>(
        1, std::min<std::size_t>(
               {static_cast<std::size_t>(std::max(options_.jobs, 1)), n_, kMaxSchedulerThreads}));
    util::RunOnThreads(threads, [&](std::size_t t) { Worker(static_cast<int>(t)); });
  }

  void Worker(int slot) {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      if (MayLaunch()) {
        std::optional<Launch> taken = TakeReady(slot, lock);
        if (!taken) continue;
        Launch l = std::move(*taken);
        Result<RunStats> stats = Status(Code::kInternal, "not run");
        if (l.hit) {
          stats = *l.hit;
        } else {
          lock.unlock();
          stats = executor_.Run(requests_[l.i], stage_options_[l.i]);
          lock.lock();
        }
        Settle(l, std::move(stats), lock);
        continue;
      }
      if (running_ == 0) break;  // nothing can start and nothing will finish
      cv_.wait_for(lock, std::chrono::milliseconds(100));
    }
    cv_.notify_all();
  }

  const Pipeline& pipeline_;
  const fs::path out_dir_;
  StageExecutor& executor_;
  const RunOptions& options_;
  const std::size_t n_;
  const std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();

  // The plan: fixed before the first stage starts.
  std::map<std::string, std::size_t> index_;
  std::vector<StageRequest> requests_;
  std::vector<StageOptions> stage_options_;
  std::vector<std::vector<std::size_t>> users_;
  std::vector<bool> cacheable_;

  std::mutex mu_;
  std::condition_variable cv_;
  RunResult result_;
  std::vector<std::size_t> waiting_on_;
  std::vector<bool> readers_released_ = std::vector<bool>(n_, false);
  std::deque<std::size_t> ready_;
  bool stop_ = false;
  std::size_t running_ = 0;
  Status failure_;
  std::mt19937_64 shuffle_;
};

}  // namespace

RunResult RunPipeline(const Pipeline& pipeline, const fs::path& out_dir, StageExecutor& executor,
                      const RunOptions& options) {
  std::error_code ec;
  PipelineRun run(pipeline, fs::absolute(out_dir, ec).lexically_normal(), executor, options);
  return run.Run();
}

}  // namespace stagekit
