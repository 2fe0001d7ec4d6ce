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

RunResult RunPipeline(const Pipeline& pipeline, const fs::path& out_dir_in, StageExecutor& executor,
                      const RunOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  RunResult result;
  const std::size_t n = pipeline.stages.size();
  std::error_code ec;
  const fs::path out_dir = fs::absolute(out_dir_in, ec).lexically_normal();

  std::map<std::string, std::size_t> index;
  for (std::size_t i = 0; i < n; ++i) index[pipeline.stages[i].name] = i;
  std::vector<StageRequest> requests(n);
  std::vector<std::vector<std::size_t>> users(n);
  std::vector<std::size_t> waiting_on(n, 0);
  result.stages.resize(n);
  for (std::size_t i = 0; i < n; ++i) {
    const PipelineStage& st = pipeline.stages[i];
    StageRequest& req = requests[i];
    req.stage = st.stage;
    req.instance = st.name;
    req.output = out_dir / st.output;
    req.job = pipeline.job;
    req.kwargs = st.kwargs;
    req.executor = std::string(executor.name());
    req.threads = std::max(1, static_cast<int>(std::ceil(st.options.resources.cpus)));
    std::set<std::size_t> deps;
    for (const auto& [name, ref] : st.inputs) {
      if (ref.from_stage.empty()) {
        req.inputs[name] = ref.file;
      } else {
        std::size_t d = index.at(ref.from_stage);
        req.inputs[name] = out_dir / pipeline.stages[d].output;
        deps.insert(d);
      }
    }
    for (std::size_t d : deps) users[d].push_back(i);
    waiting_on[i] = deps.size();
    result.stages[i].name = st.name;
    result.stages[i].output = req.output;
  }
  // What each stage's executor is told about fetching its output; an output
  // that stays remote is not a file here, so the cache neither keys on it
  // nor stores it.
  const bool remote = executor.outputs_stay_remote();
  std::vector<StageOptions> stage_options(n);
  std::vector<bool> cacheable(n, true);
  {
    std::set<std::string> consumers;
    for (const PipelineStage& st : pipeline.stages) {
      for (const auto& [name, ref] : st.inputs) consumers.insert(ref.from_stage);
    }
    for (std::size_t i = 0; i < n; ++i) {
      const PipelineStage& st = pipeline.stages[i];
      stage_options[i] = st.options;
      bool fetch = true;
      if (options.outputs == RunOptions::Outputs::kNone) {
        fetch = false;
      } else if (st.keep) {
        fetch = *st.keep;
      } else if (options.outputs == RunOptions::Outputs::kFinal) {
        fetch = consumers.count(st.name) == 0;
      }
      stage_options[i].fetch_output = fetch || !remote;
      cacheable[i] = stage_options[i].fetch_output;
      result.stages[i].fetched = stage_options[i].fetch_output;
      stage_options[i].readers = static_cast<int>(users[i].size());
      if (remote && !options.artifacts.empty()) {
        std::string uri = options.artifacts;
        while (uri.size() > 5 && uri.back() == '/') uri.pop_back();
        fs::path rel = fs::path(result.stages[i].output).lexically_relative(out_dir);
        if (rel.empty() || *rel.begin() == "..") rel = fs::path(result.stages[i].output).filename();
        stage_options[i].artifact = uri + "/" + rel.generic_string();
      }
    }
  }

  auto finish = [&](Status status) {
    result.status = std::move(status);
    for (StageOutcome& o : result.stages) {
      if (o.state == StageState::kPending) o.state = StageState::kNotRun;
    }
    result.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return result;
  };

  // No output may be one of the pipeline's input files: the run would
  // overwrite what the user gave it. Compared by path and, for files that
  // exist, by device and inode (links, bind mounts, '..' through symlinks).
  {
    std::map<std::string, std::string> input_paths;  // path -> "input 'x' of stage 'y'"
    std::map<std::pair<dev_t, ino_t>, std::string> input_ids;
    for (const PipelineStage& st : pipeline.stages) {
      for (const auto& [name, ref] : st.inputs) {
        if (!ref.from_stage.empty()) continue;
        const std::string what = "input '" + name + "' of stage '" + st.name + "'";
        std::error_code aec;
        input_paths.emplace(fs::absolute(ref.file, aec).lexically_normal().string(), what);
        struct stat in_st {};
        if (::stat(ref.file.c_str(), &in_st) == 0) {
          input_ids.emplace(std::make_pair(in_st.st_dev, in_st.st_ino), what);
        }
      }
    }
    for (std::size_t i = 0; i < n; ++i) {
      const fs::path& out = requests[i].output;
      auto by_path = input_paths.find(out.string());
      std::string clash = by_path != input_paths.end() ? by_path->second : "";
      struct stat out_st {};
      if (clash.empty() && ::stat(out.c_str(), &out_st) == 0) {
        auto by_id = input_ids.find(std::make_pair(out_st.st_dev, out_st.st_ino));
        if (by_id != input_ids.end()) clash = by_id->second;
      }
      if (!clash.empty()) {
        return finish(Status(Code::kInvalidPipeline,
                             "the output of stage '" + pipeline.stages[i].name + "' (" +
                                 out.string() + ") is the file of " + clash +
                                 "; the run would overwrite its own input: choose another --out "
                                 "or another 'output'"));
      }
    }
  }

  std::set<fs::path> out_dirs;
  for (std::size_t i = 0; i < n; ++i) {
    if (!out_dirs.insert(requests[i].output.parent_path()).second) continue;
    fs::create_directories(requests[i].output.parent_path(), ec);
    if (ec) {
      return finish(Status(Code::kOutputError, "cannot create output directory '" +
                                                   requests[i].output.parent_path().string() +
                                                   "': " + ec.message() +
                                                   "; choose another --out directory"));
    }
    // What a killed or crashed earlier run left there (its process is gone).
    util::RemoveStaleTemps(requests[i].output.parent_path());
  }

  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::size_t> ready;
  for (std::size_t i = 0; i < n; ++i) {
    if (waiting_on[i] == 0) ready.push_back(i);
  }
  bool stop = false;
  std::size_t running = 0;
  Status failure;
  std::mt19937_64 shuffle(options.order_seed);
  auto seconds = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  // The digests of the stage's inputs that other stages produced.
  auto upstream_digests = [&](std::size_t i) {
    std::map<std::string, std::string> digests;
    for (const auto& [name, ref] : pipeline.stages[i].inputs) {
      if (ref.from_stage.empty()) continue;
      const StageOutcome& up = result.stages[index.at(ref.from_stage)];
      if (up.stats) digests[name] = up.stats->output_digest;
    }
    return digests;
  };

  // Stops the run (with the lock held): Ctrl-C, or a failed before_launch
  // hook. True when the run may go on launching.
  auto may_launch = [&]() {
    if (!stop && Cancelled(options.cancel)) {
      stop = true;
      failure = Status(Code::kInterrupted, "interrupted; running stages were stopped");
      cv.notify_all();
    }
    if (!stop && !ready.empty() && options.before_launch) {
      if (Status s = options.before_launch(); !s.ok()) {
        stop = true;
        failure = std::move(s);
        cv.notify_all();
      }
    }
    return !stop && !ready.empty();
  };
  // Takes the next ready stage (lock held, released while the cache is
  // asked): marks it running in `slot`, and says whether the cache had it.
  struct Launch {
    std::size_t i = 0;
    std::string token;  // the stage's cache key, taken before it runs
    std::optional<RunStats> hit;
  };
  auto launch = [&](int slot, std::unique_lock<std::mutex>& lock) {
    if (options.order_seed != 0 && ready.size() > 1) {
      std::swap(ready.front(), ready[shuffle() % ready.size()]);
    }
    Launch l;
    l.i = ready.front();
    ready.pop_front();
    ++running;
    StageOutcome& outcome = result.stages[l.i];
    outcome.state = StageState::kRunning;
    outcome.slot = slot;
    outcome.start_s = seconds();
    if (options.cache != nullptr && cacheable[l.i]) {
      const std::map<std::string, std::string> upstream = upstream_digests(l.i);
      // Inputs whose producers were released early (made, still fetched):
      // the stage reads them by reference, their files may be stale.
      std::set<std::string> by_reference;
      for (const auto& [name, ref] : pipeline.stages[l.i].inputs) {
        if (ref.from_stage.empty()) continue;
        if (result.stages[index.at(ref.from_stage)].state != StageState::kSucceeded)
          by_reference.insert(name);
      }
      lock.unlock();
      l.token = by_reference.empty()
                    ? options.cache->Prepare(pipeline.stages[l.i], requests[l.i], upstream)
                    : options.cache->PrepareByReference(pipeline.stages[l.i], requests[l.i],
                                                        upstream, by_reference);
      if (options.lookup_cache && !l.token.empty()) {
        l.hit = options.cache->Lookup(pipeline.stages[l.i], requests[l.i], l.token);
      }
      lock.lock();
    }
    if (!l.hit && options.observer != nullptr)
      options.observer->OnStageStarted(pipeline.stages[l.i]);
    return l;
  };
  // Records a stage's end (lock held, released while the cache stores it)
  // and readies the stages that waited only for it.
  // Readers of a stage its executor said was made before it ended (its
  // output on its way to the driver): readied already, not again.
  std::vector<bool> readers_released(n, false);
  auto release_readers = [&](std::size_t i) {
    if (readers_released[i]) return;
    readers_released[i] = true;
    for (std::size_t u : users[i]) {
      if (--waiting_on[u] == 0) ready.push_back(u);
    }
  };
  auto settle = [&](const Launch& l, Result<RunStats> stats, std::unique_lock<std::mutex>& lock) {
    const std::size_t i = l.i;
    StageOutcome& outcome = result.stages[i];
    if (l.hit) {
      outcome.cached = true;
    } else if (options.cache != nullptr && !l.token.empty()) {
      lock.unlock();
      // Where this run uploaded the output is this run's news, not the output's.
      std::optional<RunStats> kept;
      if (stats.ok()) {
        kept = *stats;
        kept->artifact = nullptr;
      }
      options.cache->Store(pipeline.stages[i], requests[i], l.token, kept ? &*kept : nullptr);
      lock.lock();
    }
    --running;
    outcome.end_s = seconds();
    if (stats.ok()) {
      outcome.state = StageState::kSucceeded;
      outcome.stats = std::move(stats).value();
      release_readers(i);
    } else {
      outcome.state = StageState::kFailed;
      outcome.status = stats.status();
      if (!stop) {
        stop = true;
        failure = stats.status();
        result.failed_stage = pipeline.stages[i].name;
      }
    }
    if (options.observer != nullptr) options.observer->OnStageFinished(pipeline.stages[i], outcome);
    cv.notify_all();
  };

  if (executor.asynchronous()) {
    // One thread: up to --jobs stages submitted, their completions awaited
    // together. Slots are reused lowest first, as threads would be.
    std::unique_lock<std::mutex> lock(mu);
    const std::size_t jobs = static_cast<std::size_t>(std::max(options.jobs, 1));
    std::set<int> free_slots;
    for (std::size_t t = 0; t < std::min(jobs, n); ++t) free_slots.insert(static_cast<int>(t));
    std::map<std::uint64_t, Launch> in_flight;
    std::uint64_t next_ticket = 1;
    for (;;) {
      while (!free_slots.empty() && may_launch()) {
        const int slot = *free_slots.begin();
        Launch l = launch(slot, lock);
        if (l.hit) {
          RunStats hit = *l.hit;
          settle(l, std::move(hit), lock);
          continue;
        }
        free_slots.erase(slot);
        const std::uint64_t ticket = next_ticket++;
        lock.unlock();
        executor.Submit(ticket, requests[l.i], stage_options[l.i]);
        lock.lock();
        in_flight.emplace(ticket, std::move(l));
      }
      if (in_flight.empty()) break;  // nothing can start and nothing will finish
      lock.unlock();
      std::vector<StageCompletion> done = executor.AwaitCompletions(std::chrono::milliseconds(100));
      lock.lock();
      for (StageCompletion& c : done) {
        auto it = in_flight.find(c.ticket);
        if (it == in_flight.end()) continue;
        if (c.made_only) {
          // Its readers start on the result by reference while the driver
          // fetches its copy; the stage keeps its slot until then.
          if (c.stats.ok() && !stop) {
            result.stages[it->second.i].stats = *c.stats;  // its digest keys its readers' cache
            release_readers(it->second.i);
          }
          continue;
        }
        Launch l = std::move(it->second);
        in_flight.erase(it);
        free_slots.insert(result.stages[l.i].slot);
        settle(l, std::move(c.stats), lock);
      }
    }
    return finish(failure);
  }

  auto worker = [&](int slot) {
    std::unique_lock<std::mutex> lock(mu);
    for (;;) {
      if (may_launch()) {
        Launch l = launch(slot, lock);
        Result<RunStats> stats = Status(Code::kInternal, "not run");
        if (l.hit) {
          stats = *l.hit;
        } else {
          lock.unlock();
          stats = executor.Run(requests[l.i], stage_options[l.i]);
          lock.lock();
        }
        settle(l, std::move(stats), lock);
        continue;
      }
      if (running == 0) break;  // nothing can start and nothing will finish
      cv.wait_for(lock, std::chrono::milliseconds(100));
    }
    cv.notify_all();
  };

  const std::size_t threads = std::max<std::size_t>(
      1, std::min<std::size_t>(
             {static_cast<std::size_t>(std::max(options.jobs, 1)), n, kMaxSchedulerThreads}));
  util::RunOnThreads(threads, [&](std::size_t t) { worker(static_cast<int>(t)); });
  return finish(failure);
}

}  // namespace stagekit
