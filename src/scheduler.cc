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
        dynamic_(pipeline.dynamic()),
        shuffle_(options.order_seed) {}

  RunResult Run() {
    PlanRequests();
    PlanFetching();
    if (Status s = CheckPathsAreUtf8(); !s.ok()) return Finish(std::move(s));
    if (Status s = CheckOutputsAreNotInputs(0, n_); !s.ok()) return Finish(std::move(s));
    if (Status s = PrepareOutputDirs(0, n_); !s.ok()) return Finish(std::move(s));
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
  // Stage i as it runs: the pipeline's, an instance of a dynamic foreach,
  // or a collect of one with its inputs made known. The objects never move.
  const PipelineStage& Stage(std::size_t i) const { return *stage_[i]; }
  bool IsTemplate(std::size_t i) const { return !stage_[i]->foreach_from.empty(); }

  // A request per stage (inputs from other stages are their output files
  // under --out), who reads whom, and how many producers each one waits for.
  void PlanRequests() {
    stage_.reserve(n_);
    for (const PipelineStage& st : pipeline_.stages) stage_.push_back(&st);
    for (std::size_t i = 0; i < n_; ++i) index_[Stage(i).name] = i;
    users_.resize(n_);
    waiting_on_.assign(n_, 0);
    readers_released_.assign(n_, false);
    templates_released_.assign(n_, false);
    result_.stages.resize(n_);
    for (std::size_t i = 0; i < n_; ++i) PlanStage(i);
  }

  // Stage i's request, its producers (it waits for those whose readers are
  // not released yet) and its line in the result.
  void PlanStage(std::size_t i) {
    const PipelineStage& st = Stage(i);
    if (requests_.size() <= i) requests_.resize(i + 1);
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
        req.inputs[name] = out_dir_ / Stage(d).output;
        deps.insert(d);
      }
    }
    // A dynamic foreach waits for the stage that makes its items.
    if (!st.foreach_from.empty()) deps.insert(IndexOf(st.foreach_from));
    for (std::size_t d : deps) {
      if (readers_released_[d]) continue;
      users_[d].push_back(i);
      ++waiting_on_[i];
    }
    result_.stages[i].name = st.name;
    result_.stages[i].output = req.output;
  }

  // What each stage's executor is told about fetching its output; an output
  // that stays remote is not a file here, so the cache neither keys on it
  // nor stores it.
  void PlanFetching() {
    stage_options_.resize(n_);
    cacheable_.assign(n_, true);
    for (std::size_t i = 0; i < n_; ++i) PlanFetch(i);
  }

  void PlanFetch(std::size_t i) {
    const bool remote = executor_.outputs_stay_remote();
    const PipelineStage& st = Stage(i);
    int readers = 0;
    bool items = false;  // a dynamic foreach reads its item list on the driver
    for (std::size_t u : users_[i]) {
      if (IsTemplate(u)) {
        items = true;
      } else {
        ++readers;
      }
    }
    stage_options_[i] = st.options;
    bool fetch = true;
    if (options_.outputs == RunOptions::Outputs::kNone) {
      fetch = false;
    } else if (st.keep) {
      fetch = *st.keep;
    } else if (options_.outputs == RunOptions::Outputs::kFinal) {
      fetch = users_[i].empty();
    }
    stage_options_[i].fetch_output = fetch || items || !remote;
    cacheable_[i] = stage_options_[i].fetch_output;
    result_.stages[i].fetched = stage_options_[i].fetch_output;
    stage_options_[i].readers = readers;
    if (remote && !options_.artifacts.empty()) {
      std::string uri = options_.artifacts;
      while (uri.size() > 5 && uri.back() == '/') uri.pop_back();
      fs::path rel = fs::path(result_.stages[i].output).lexically_relative(out_dir_);
      if (rel.empty() || *rel.begin() == "..") rel = fs::path(result_.stages[i].output).filename();
      stage_options_[i].artifact = uri + "/" + rel.generic_string();
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
          return Status(Code::kInputError, "input '" + name + "' of stage '" + Stage(i).name +
                                               "' (" + path.string() +
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
  // Stages [first, end) are checked against every stage's inputs so far
  // (the instances of a dynamic foreach against the pipeline's and their own).
  Status CheckOutputsAreNotInputs(std::size_t first, std::size_t end) {
    for (std::size_t i = first; i < end; ++i) {
      const PipelineStage& st = Stage(i);
      for (const auto& [name, ref] : st.inputs) {
        if (!ref.from_stage.empty()) continue;
        const std::string what = "input '" + name + "' of stage '" + st.name + "'";
        std::error_code ec;
        input_paths_.emplace(fs::absolute(ref.file, ec).lexically_normal().string(), what);
        struct stat in_st {};
        if (::stat(ref.file.c_str(), &in_st) == 0) {
          input_ids_.emplace(std::make_pair(in_st.st_dev, in_st.st_ino), what);
        }
      }
    }
    for (std::size_t i = first; i < end; ++i) {
      if (IsTemplate(i)) continue;
      const fs::path& out = requests_[i].output;
      auto by_path = input_paths_.find(out.string());
      std::string clash = by_path != input_paths_.end() ? by_path->second : "";
      struct stat out_st {};
      if (clash.empty() && ::stat(out.c_str(), &out_st) == 0) {
        auto by_id = input_ids_.find(std::make_pair(out_st.st_dev, out_st.st_ino));
        if (by_id != input_ids_.end()) clash = by_id->second;
      }
      if (!clash.empty()) {
        return Status(Code::kInvalidPipeline,
                      "the output of stage '" + Stage(i).name + "' (" + out.string() +
                          ") is the file of " + clash +
                          "; the run would overwrite its own input: choose another --out "
                          "or another 'output'");
      }
    }
    return OkStatus();
  }

  // Creates each output's folder and clears what killed earlier runs left there.
  Status PrepareOutputDirs(std::size_t first, std::size_t end) const {
    std::set<fs::path> out_dirs;
    for (std::size_t i = first; i < end; ++i) {
      if (IsTemplate(i)) continue;
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
    if (dynamic_) AsRan();
    return std::move(result_);
  }

  // The result in the order of the pipeline as it ran: each expanded
  // template's place taken by its instances, in item order (whatever order
  // they were made in), a template never expanded left out with its collects'
  // inputs from it.
  void AsRan() {
    auto ran = std::make_shared<Pipeline>();
    ran->file = pipeline_.file;
    ran->name = pipeline_.name;
    ran->libraries = pipeline_.libraries;
    ran->job = pipeline_.job;
    ran->artifacts = pipeline_.artifacts;
    std::vector<StageOutcome> outcomes;
    auto take = [&](std::size_t i) {
      ran->stages.push_back(Stage(i));
      outcomes.push_back(std::move(result_.stages[i]));
    };
    for (std::size_t i = 0; i < n_; ++i) {
      if (!IsTemplate(i)) {
        take(i);
        std::map<std::string, InputRef>& inputs = ran->stages.back().inputs;
        for (auto it = inputs.begin(); it != inputs.end();) {
          it = it->second.collect.empty() ? std::next(it) : inputs.erase(it);
        }
        continue;
      }
      auto made = expanded_.find(i);
      if (made == expanded_.end()) continue;
      for (std::size_t j = made->second.first; j < made->second.second; ++j) take(j);
    }
    result_.stages = std::move(outcomes);
    result_.pipeline = std::move(ran);
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
    for (const auto& [name, ref] : Stage(i).inputs) {
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
    if (IsTemplate(l.i)) {
      Expand(l.i);
      return std::nullopt;
    }
    ++running_;
    result_.stages[l.i].state = StageState::kRunning;
    result_.stages[l.i].slot = slot;
    result_.stages[l.i].start_s = Seconds();
    if (options_.cache != nullptr && cacheable_[l.i]) AskCache(l, lock);
    StageOutcome& outcome = result_.stages[l.i];  // (the cache unlocked: stages may be added)
    if (!l.hit && !stop_ && Cancelled(options_.cancel)) {
      // Ctrl-C while the cache hashed the stage's inputs: it never starts.
      outcome.state = StageState::kPending;
      outcome.slot = -1;
      outcome.start_s = -1;
      --running_;
      Stop(Status(Code::kInterrupted, "interrupted; running stages were stopped"));
      return std::nullopt;
    }
    if (!l.hit && options_.observer != nullptr) options_.observer->OnStageStarted(Stage(l.i));
    return l;
  }

  // The stage's cache key, and its cached result if --resume may use it.
  void AskCache(Launch& l, std::unique_lock<std::mutex>& lock) {
    const std::map<std::string, std::string> upstream = UpstreamDigests(l.i);
    // Inputs whose producers were released early (made, still fetched):
    // the stage reads them by reference, their files may be stale.
    std::set<std::string> by_reference;
    for (const auto& [name, ref] : Stage(l.i).inputs) {
      if (ref.from_stage.empty()) continue;
      if (result_.stages[IndexOf(ref.from_stage)].state != StageState::kSucceeded) {
        by_reference.insert(name);
      }
    }
    const PipelineStage& stage = Stage(l.i);
    const StageRequest& request = requests_[l.i];
    lock.unlock();
    l.token = by_reference.empty()
                  ? options_.cache->Prepare(stage, request, upstream)
                  : options_.cache->PrepareByReference(stage, request, upstream, by_reference);
    if (options_.lookup_cache && !l.token.empty()) {
      l.hit = options_.cache->Lookup(stage, request, l.token);
    }
    lock.lock();
  }

  // Readies the stages that waited only for stage i (lock held). Readers of
  // a stage its executor said was made before it ended (its output on its
  // way to the driver) are readied then, not again; a dynamic foreach reads
  // its item list from the driver's copy, so it waits for the stage's end.
  void ReleaseReaders(std::size_t i) {
    const bool settled = result_.stages[i].state == StageState::kSucceeded;
    for (std::size_t u : users_[i]) {
      const bool now = IsTemplate(u) ? settled && !templates_released_[i] : !readers_released_[i];
      if (now && --waiting_on_[u] == 0) ready_.push_back(u);
    }
    readers_released_[i] = true;
    if (settled) templates_released_[i] = true;
  }

  // A dynamic foreach whose producer succeeded (lock held): its instances
  // made from the item list and added to the run, its collects pointed at
  // them. A bad item list fails the run as a failed stage would.
  void Expand(std::size_t t) {
    const PipelineStage& tmpl = Stage(t);
    auto made = ExpandDynamicStage(tmpl, requests_[IndexOf(tmpl.foreach_from)].output);
    Status status = made.ok() ? Adopt(t, *made) : made.status();
    StageOutcome& outcome = result_.stages[t];
    if (!status.ok()) {
      outcome.state = StageState::kFailed;
      outcome.status = status;
      if (!stop_) {
        stop_ = true;
        failure_ = std::move(status);
        result_.failed_stage = tmpl.name;
      }
      cv_.notify_all();
      return;
    }
    outcome.state = StageState::kSucceeded;
    ReleaseReaders(t);
    if (options_.observer != nullptr) options_.observer->OnStagesAdded(tmpl, made->size());
    cv_.notify_all();
  }

  // Adds template t's instances to the run (lock held); nothing is added
  // when one cannot be (an output another stage writes, or one of the
  // pipeline's inputs, or a folder that cannot be made).
  Status Adopt(std::size_t t, std::vector<PipelineStage>& made) {
    if (outputs_.empty()) {
      for (std::size_t i = 0; i < stage_.size(); ++i) {
        if (!IsTemplate(i)) outputs_.emplace(Stage(i).output, i);
      }
    }
    for (const PipelineStage& st : made) {
      if (std::string other = OutputClash(st.output); !other.empty()) {
        return Status(Code::kInvalidPipeline,
                      "instance '" + st.name + "' of '" + Stage(t).name + "' would write '" +
                          st.output + "', " + other +
                          "; put a {name} of the items in the stage's output");
      }
      for (const auto& [name, ref] : st.inputs) {
        auto out = outputs_.find(ref.file.lexically_relative(out_dir_).generic_string());
        if (ref.from_stage.empty() && out != outputs_.end()) {
          return Status(Code::kInvalidPipeline,
                        "input '" + name + "' of instance '" + st.name + "' is the output of '" +
                            Stage(out->second).name + "' in --out; read it with {from: " +
                            Stage(out->second).name + "} instead");
        }
      }
    }
    const std::size_t first = stage_.size();
    for (PipelineStage& st : made) {
      owned_.push_back(std::move(st));
      stage_.push_back(&owned_.back());
      index_[owned_.back().name] = stage_.size() - 1;
      outputs_.emplace(owned_.back().output, stage_.size() - 1);
    }
    const std::size_t end = stage_.size();
    users_.resize(end);
    waiting_on_.resize(end, 0);
    readers_released_.resize(end, false);
    templates_released_.resize(end, false);
    cacheable_.resize(end, true);
    stage_options_.resize(end);
    result_.stages.resize(end);
    for (std::size_t i = first; i < end; ++i) PlanStage(i);
    if (Status s = CheckOutputsAreNotInputs(first, end); !s.ok()) return s;
    if (Status s = PrepareOutputDirs(first, end); !s.ok()) return s;
    expanded_[t] = {first, end};
    for (std::size_t u : users_[t]) PointCollect(u, t, first, end);
    for (std::size_t i = first; i < end; ++i) {
      PlanFetch(i);
      if (waiting_on_[i] == 0) ready_.push_back(i);
    }
    return OkStatus();
  }

  // "" when `output` may be written, else what writes it (or around it).
  std::string OutputClash(const std::string& output) const {
    auto same = outputs_.find(output);
    if (same != outputs_.end()) return "which '" + Stage(same->second).name + "' writes too";
    auto inside = outputs_.lower_bound(output + "/");
    if (inside != outputs_.end() && inside->first.rfind(output + "/", 0) == 0) {
      return "a folder that holds the output of '" + Stage(inside->second).name + "'";
    }
    for (std::size_t slash = output.find('/'); slash != std::string::npos;
         slash = output.find('/', slash + 1)) {
      auto file = outputs_.find(output.substr(0, slash));
      if (file != outputs_.end()) {
        return "inside '" + file->first + "', the output file of '" + Stage(file->second).name +
               "'";
      }
    }
    return "";
  }

  // Collect stage u's inputs from template t become one input NAME[KEY]
  // per instance (in [first, end)) whose key its filter matches.
  void PointCollect(std::size_t u, std::size_t t, std::size_t first, std::size_t end) {
    PipelineStage copy = Stage(u);
    std::vector<std::string> instances;
    instances.reserve(end - first);
    for (std::size_t i = first; i < end; ++i) instances.push_back(Stage(i).name);
    StageRequest& req = requests_[u];
    for (auto it = req.inputs.begin(); it != req.inputs.end();) {
      auto ref = copy.inputs.find(it->first);
      const bool pending = ref != copy.inputs.end() && ref->second.from_stage == Stage(t).name;
      it = pending ? req.inputs.erase(it) : std::next(it);
    }
    for (const auto& [input, name] : PointCollects(copy, Stage(t).name, instances)) {
      const std::size_t i = IndexOf(name);
      req.inputs[input] = out_dir_ / Stage(i).output;
      users_[i].push_back(u);
      ++waiting_on_[u];
    }
    owned_.push_back(std::move(copy));
    stage_[u] = &owned_.back();
  }

  // Records a stage's end (lock held, released while the cache stores it)
  // and readies the stages that waited only for it.
  void Settle(const Launch& l, Result<RunStats> stats, std::unique_lock<std::mutex>& lock) {
    const std::size_t i = l.i;
    const PipelineStage& stage = Stage(i);
    const StageRequest& request = requests_[i];
    if (l.hit) {
      result_.stages[i].cached = true;
    } else if (options_.cache != nullptr && !l.token.empty()) {
      lock.unlock();
      // Where this run uploaded the output is this run's news, not the output's.
      std::optional<RunStats> kept;
      if (stats.ok()) {
        kept = *stats;
        kept->artifact = nullptr;
      }
      options_.cache->Store(stage, request, l.token, kept ? &*kept : nullptr);
      lock.lock();
    }
    --running_;
    StageOutcome& outcome = result_.stages[i];
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
        result_.failed_stage = stage.name;
      }
    }
    if (options_.observer != nullptr) options_.observer->OnStageFinished(stage, outcome);
    cv_.notify_all();
  }

  // One thread: up to --jobs stages submitted, their completions awaited
  // together. Slots are reused lowest first, as threads would be.
  void RunAsynchronous() {
    std::unique_lock<std::mutex> lock(mu_);
    const std::size_t jobs = static_cast<std::size_t>(std::max(options_.jobs, 1));
    std::set<int> free_slots;
    // (A dynamic foreach may add stages: the slots are as many as --jobs.)
    const std::size_t slots = dynamic_ ? jobs : std::min(jobs, n_);
    for (std::size_t t = 0; t < slots; ++t) free_slots.insert(static_cast<int>(t));
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
        const StageRequest& request = requests_[l.i];
        const StageOptions& stage_options = stage_options_[l.i];
        lock.unlock();
        executor_.Submit(ticket, request, stage_options);
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
    // (A dynamic foreach may add stages: the threads are as many as --jobs.)
    const std::size_t threads = std::max<std::size_t>(
        1, std::min<std::size_t>({static_cast<std::size_t>(std::max(options_.jobs, 1)),
                                  dynamic_ ? kMaxSchedulerThreads : n_, kMaxSchedulerThreads}));
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
          const StageRequest& request = requests_[l.i];
          const StageOptions& stage_options = stage_options_[l.i];
          lock.unlock();
          stats = executor_.Run(request, stage_options);
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
  const std::size_t n_;  // the pipeline's stages (a dynamic foreach adds more)
  const bool dynamic_;   // the pipeline has a dynamic foreach
  const std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();

  // The plan: made before the first stage starts, and grown (under mu_) when
  // a dynamic foreach is expanded. Deques: what is handed to the executor
  // and the cache with the lock released stays where it is.
  std::vector<const PipelineStage*> stage_;
  std::deque<PipelineStage> owned_;  // instances, and collects with their inputs known
  std::map<std::string, std::size_t> index_;
  std::deque<StageRequest> requests_;
  std::deque<StageOptions> stage_options_;
  std::vector<std::vector<std::size_t>> users_;
  std::vector<bool> cacheable_;
  std::map<std::size_t, std::pair<std::size_t, std::size_t>> expanded_;  // template -> instances
  std::map<std::string, std::size_t> outputs_;      // output -> stage, once a template expands
  std::map<std::string, std::string> input_paths_;  // path -> "input 'x' of stage 'y'"
  std::map<std::pair<dev_t, ino_t>, std::string> input_ids_;

  std::mutex mu_;
  std::condition_variable cv_;
  RunResult result_;
  std::vector<std::size_t> waiting_on_;
  std::vector<bool> readers_released_;
  std::vector<bool> templates_released_;
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
