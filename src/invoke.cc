#include "stagekit/invoke.h"

#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include <fcntl.h>

#include "util/digest.h"
#include "util/fd.h"
#include "util/files.h"
#include "util/text.h"
#include "warm.h"

namespace stagekit {
namespace {

namespace fs = std::filesystem;

std::string Errno() { return std::strerror(errno); }

Status UnknownStage(const StageRequest& req, const Registry& registry) {
  std::string message = "unknown stage '" + req.stage + "'";
  std::vector<std::string> close = registry.Suggest(req.stage);
  if (!close.empty()) {
    message += "; did you mean ";
    for (std::size_t i = 0; i < close.size(); ++i) {
      message += (i == 0 ? "'" : ", '") + close[i] + "'";
    }
    message += "?";
  } else {
    message += "; load the library that registers it with --stages (see `stagekit list`)";
  }
  return Status(Code::kUnknownStage, message);
}

Result<std::uint64_t> CheckInputs(const StageRequest& req) {
  std::uint64_t total = 0;
  for (const auto& [name, path] : req.inputs) {
    struct stat st {};
    std::string where = "input '" + name + "' of " + req.Label() + " ('" + path.string() + "')";
    if (::stat(path.c_str(), &st) != 0) {
      return Status(Code::kInputError, where + " cannot be opened: " + Errno() +
                                           "; check the path or the stage that should produce it");
    }
    if (!S_ISREG(st.st_mode)) {
      return Status(Code::kInputError, where + " is not a regular file");
    }
    total += static_cast<std::uint64_t>(st.st_size);
  }
  return total;
}

Status CheckOutputLocation(const StageRequest& req) {
  fs::path dir = req.output.parent_path();
  if (dir.empty()) dir = ".";
  struct stat st {};
  std::string where = "output directory '" + dir.string() + "' of " + req.Label();
  if (::stat(dir.c_str(), &st) != 0) {
    return Status(Code::kOutputError, where + " cannot be used: " + Errno());
  }
  if (!S_ISDIR(st.st_mode)) return Status(Code::kOutputError, where + " is not a directory");
  if (::access(dir.c_str(), W_OK | X_OK) != 0) {
    return Status(Code::kOutputError, where + " is not writable: " + Errno());
  }
  if (::stat(req.output.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
    return Status(Code::kOutputError,
                  "output '" + req.output.string() + "' of " + req.Label() + " is a directory");
  }
  return OkStatus();
}

// A stage that failed on a full file system (ENOSPC, or out of inodes) most
// often says only "cannot write": told apart here, while its partial output
// still takes the space, so that the run exits 7 (output not writable)
// rather than 1, and says what to do.
Status CheckSpace(const StageRequest& req) {
  fs::path dir = req.output.parent_path();
  if (dir.empty()) dir = ".";
  struct statvfs vfs {};
  if (::statvfs(dir.c_str(), &vfs) != 0) return OkStatus();
  // Root may write into the blocks kept for it; others may not.
  const std::uint64_t blocks = ::geteuid() == 0 ? vfs.f_bfree : vfs.f_bavail;
  const std::uint64_t free_bytes = blocks * vfs.f_frsize;
  const bool no_inodes = vfs.f_files > 0 && vfs.f_favail == 0;
  constexpr std::uint64_t kFull = std::uint64_t{1} << 20;
  if (free_bytes >= kFull && !no_inodes) return OkStatus();
  // The subprocess executor's child writes into a private folder of the run's.
  const fs::path shown = util::IsTempName(dir.filename().string()) ? dir.parent_path() : dir;
  return Status(
      Code::kOutputError,
      "output directory '" + shown.string() + "' of " + req.Label() +
          " is on a full file system (" +
          (no_inodes ? std::string("no inodes left") : util::HumanBytes(free_bytes) + " free") +
          "), so the stage could not write its output; free space or choose another "
          "--out");
}

// Why a stage could not produce its output. Looked for only once it failed:
// these checks cost system calls that a run that works does not need.
Status Diagnose(const StageRequest& req) {
  for (const auto& [name, path] : req.inputs) {
    if (::access(path.c_str(), R_OK) != 0) {
      return Status(Code::kInputError, "input '" + name + "' of " + req.Label() + " ('" +
                                           path.string() + "') cannot be read: " + Errno());
    }
  }
  return CheckOutputLocation(req);
}

constexpr const char* kNoOutput =
    " wrote no output: a stage must write one regular file at ctx.output() (or call "
    "ctx.WriteOutput)";

// Warm instances of one key. Not thread-safe stages: a stack of idle
// instances, each used by one caller at a time, so the number of setups never
// exceeds the number of callers at once. Thread-safe stages: one shared
// instance, set up under the slot's lock.
struct WarmSlot {
  std::mutex mu;
  const WarmStageOps* ops = nullptr;
  std::vector<void*> idle;
  void* shared = nullptr;
  int shared_users = 0;
  std::mutex setup_mu;  // thread-safe stages: one setup at a time
  int setups = 0;
};

class WarmPool {
 public:
  WarmSlot& Slot(const std::string& key, const WarmStageOps* ops) {
    std::lock_guard<std::mutex> lock(mu_);
    std::unique_ptr<WarmSlot>& slot = slots_[key];
    if (!slot) {
      slot = std::make_unique<WarmSlot>();
      slot->ops = ops;
    }
    return *slot;
  }
  std::size_t Drop() {
    std::vector<std::pair<const WarmStageOps*, void*>> doomed;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& [key, slot] : slots_) {
        std::lock_guard<std::mutex> slot_lock(slot->mu);
        for (void* p : slot->idle) doomed.emplace_back(slot->ops, p);
        slot->idle.clear();
        if (slot->shared != nullptr && slot->shared_users == 0) {
          doomed.emplace_back(slot->ops, slot->shared);
          slot->shared = nullptr;
        }
        if (slot->shared == nullptr) slot->setups = 0;  // counts start again
      }
    }
    for (auto& [ops, p] : doomed) ops->destroy(p);
    return doomed.size();
  }

 private:
  std::mutex mu_;
  std::map<std::string, std::unique_ptr<WarmSlot>> slots_;
};

// Never destroyed: instances may live in stage libraries that outlive static
// destruction order; they stay reachable, so leak checkers do not complain.
WarmPool& Pool() {
  static WarmPool* pool = new WarmPool();
  return *pool;
}

const std::string& WorkerName() {
  static const std::string name = "pid:" + std::to_string(::getpid());
  return name;
}

// Creates a warm stage's instance, timing it. Returns the failure message,
// empty on success.
std::string WarmSetup(const WarmStageOps& ops, WarmContext& wctx, void*& instance,
                      double& setup_s) {
  auto t0 = std::chrono::steady_clock::now();
  try {
    instance = ops.create(wctx);
  } catch (const std::exception& e) {
    return std::string("warm setup failed: ") + e.what();
  } catch (...) {
    return "warm setup threw an exception that is not a std::exception";
  }
  setup_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return "";
}

// Runs a warm stage's instance once. Returns the failure message, empty on success.
std::string WarmRun(const WarmStageOps& ops, void* instance, StageContext& ctx) {
  try {
    ops.run(instance, ctx);
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "threw an exception that is not a std::exception";
  }
  return "";
}

// What a warm stage's run says about its instance: reused or made, and how
// many its slot has made so far.
struct WarmUse {
  bool reused = false;
  int setups = 0;
  double setup_s = 0;
  bool setup_failed = false;
  std::string failure;
};

// A thread-safe stage: one instance per slot, shared by concurrent runs.
WarmUse RunShared(const WarmStageOps& ops, WarmSlot& slot, WarmContext& wctx, StageContext& ctx) {
  WarmUse use;
  void* instance = nullptr;
  {
    std::lock_guard<std::mutex> setup_lock(slot.setup_mu);
    std::unique_lock<std::mutex> lock(slot.mu);
    if (slot.shared == nullptr) {
      lock.unlock();
      use.failure = WarmSetup(ops, wctx, instance, use.setup_s);
      use.setup_failed = !use.failure.empty();
      if (use.setup_failed) return use;
      lock.lock();
      slot.shared = instance;
      ++slot.setups;
    } else {
      use.reused = true;
    }
    instance = slot.shared;
    ++slot.shared_users;
    use.setups = slot.setups;
  }
  use.failure = WarmRun(ops, instance, ctx);
  std::lock_guard<std::mutex> lock(slot.mu);
  --slot.shared_users;
  return use;
}

// A stage that is not thread-safe: an idle instance of the slot if there is
// one, a new one otherwise; it goes back to the idle list after the run.
WarmUse RunPooled(const WarmStageOps& ops, WarmSlot& slot, WarmContext& wctx, StageContext& ctx) {
  WarmUse use;
  void* instance = nullptr;
  {
    std::lock_guard<std::mutex> lock(slot.mu);
    if (!slot.idle.empty()) {
      instance = slot.idle.back();
      slot.idle.pop_back();
      use.reused = true;
      use.setups = slot.setups;
    }
  }
  if (!use.reused) {
    use.failure = WarmSetup(ops, wctx, instance, use.setup_s);
    use.setup_failed = !use.failure.empty();
    if (use.setup_failed) return use;
    std::lock_guard<std::mutex> lock(slot.mu);
    use.setups = ++slot.setups;
  }
  use.failure = WarmRun(ops, instance, ctx);
  std::lock_guard<std::mutex> lock(slot.mu);
  slot.idle.push_back(instance);
  return use;
}

// Runs a warm stage with an instance from the pool (or, cold, a fresh one it
// tears down after). Returns the failure message, empty on success.
std::string RunWarmStage(const Registry::Entry& entry, const StageRequest& req, StageContext& ctx,
                         bool warm, Json& metrics) {
  const WarmStageOps& ops = *entry.warm;
  WarmContext wctx(req.stage, &req.job, internal::WarmSetupOf(req.kwargs));
  metrics = {{"worker", WorkerName()}, {"reused", false}, {"setup_s", 0.0}};
  if (!warm) {
    double setup_s = 0;
    void* instance = nullptr;
    if (std::string err = WarmSetup(ops, wctx, instance, setup_s); !err.empty()) return err;
    std::string failure = WarmRun(ops, instance, ctx);
    ops.destroy(instance);
    metrics["setups"] = 1;
    metrics["setup_s"] = setup_s;
    metrics["mode"] = "cold";
    return failure;
  }
  WarmSlot& slot = Pool().Slot(
      internal::WarmKey(req) + '\0' + std::to_string(reinterpret_cast<std::uintptr_t>(&ops)), &ops);
  WarmUse use = ops.thread_safe ? RunShared(ops, slot, wctx, ctx) : RunPooled(ops, slot, wctx, ctx);
  if (use.setup_failed) return use.failure;
  metrics["reused"] = use.reused;
  metrics["setups"] = use.setups;
  metrics["setup_s"] = use.setup_s;
  return use.failure;
}

}  // namespace

namespace internal {

std::string WarmKey(const StageRequest& req) {
  return req.stage + '\0' + req.job.Canonical() + '\0' + CanonicalJson(WarmSetupOf(req.kwargs));
}

bool IsWarmStage(const Registry& registry, const std::string& stage) {
  const Registry::Entry* e = registry.Find(stage);
  return e != nullptr && e->warm != nullptr;
}

}  // namespace internal

std::size_t DropWarmInstances() { return Pool().Drop(); }

void RemoveTempOutputs(const fs::path& output, long pid) {
  const std::string prefix = ".stagekit-tmp." + std::to_string(pid) + ".";
  fs::path dir = output.parent_path().empty() ? fs::path(".") : output.parent_path();
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::string file = it->path().filename().string();
    std::error_code rec;
    if (file.rfind(prefix, 0) == 0) fs::remove_all(it->path(), rec);
  }
}

const std::string& HostName() { return util::HostName(); }

Result<RunStats> Invoke(const StageRequest& req, const Registry& registry) {
  return InvokeWarm(req, registry, /*warm=*/true);
}

namespace {

// Calls the stage (warm or plain); the failure's text, or "" when it returned.
std::string CallStage(const Registry::Entry& entry, const StageRequest& req, StageContext& ctx,
                      bool warm, Json& warm_metrics) {
  if (entry.warm != nullptr) return RunWarmStage(entry, req, ctx, warm, warm_metrics);
  try {
    entry.fn(ctx);
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "threw an exception that is not a std::exception";
  }
  return std::string();
}

// The digest and size of the file the stage wrote at `temp`: kStageFailed
// when it wrote none (or a link, or a folder), which is then removed.
Result<std::pair<util::Sha256Digest, std::uint64_t>> HashStageOutput(const StageRequest& req,
                                                                     const fs::path& temp) {
  std::error_code ec;
  // O_NOFOLLOW: a symlink is not an output.
  util::UniqueFd fd(::open(temp.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  struct stat st {};
  if (!fd || ::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
    fd.Reset();
    fs::remove_all(temp, ec);
    if (Status why = Diagnose(req); !why.ok()) return why;
    return Status(Code::kStageFailed, req.Label() + kNoOutput);
  }
  auto digest = st.st_size == 0 ? Result<std::pair<util::Sha256Digest, std::uint64_t>>(
                                      std::make_pair(util::Sha256(""), std::uint64_t{0}))
                                : util::Sha256Fd(fd.get(), temp);
  fd.Reset();
  if (!digest.ok()) {
    fs::remove(temp, ec);
    return Status(Code::kOutputError, req.Label() + ": " + digest.status().message());
  }
  return digest;
}

}  // namespace

Result<RunStats> InvokeWarm(const StageRequest& req, const Registry& registry, bool warm) {
  const Registry::Entry* entry = registry.Find(req.stage);
  if (entry == nullptr) return UnknownStage(req, registry);

  Result<std::uint64_t> bytes_in = CheckInputs(req);
  if (!bytes_in.ok()) return bytes_in.status();

  // The stage writes into a private folder beside the output (mode 0700, an
  // unpredictable name made with mkdir): nobody else can put a link where it
  // writes, and its file keeps the output's own name.
  if (Status s = util::CheckReplaceable(req.output, "output of " + req.Label()); !s.ok()) {
    return s;
  }
  fs::path out_dir = req.output.parent_path();
  if (out_dir.empty()) out_dir = ".";
  auto scratch = util::MakePrivateDir(out_dir);
  if (!scratch.ok()) {
    if (Status why = CheckOutputLocation(req); !why.ok()) return why;
    return Status(Code::kOutputError, req.Label() + ": " + scratch.status().message());
  }
  struct RemoveScratch {
    fs::path dir;
    ~RemoveScratch() {
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
  } remove_scratch{*scratch};
  const fs::path temp = *scratch / req.output.filename();
  StageContext ctx(req.stage, req.instance.empty() ? req.stage : req.instance, &req.inputs, temp,
                   &req.job, &req.kwargs, req.threads);

  auto start = std::chrono::steady_clock::now();
  Json warm_metrics;
  const std::string failure = CallStage(*entry, req, ctx, warm, warm_metrics);
  double wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!failure.empty()) {
    const Status full = CheckSpace(req);  // before its partial output is removed
    std::error_code ec;
    fs::remove(temp, ec);
    if (!full.ok()) return full;
    if (Status why = Diagnose(req); !why.ok()) return why;
    return Status(Code::kStageFailed, req.Label() + " failed: " + failure);
  }
  auto digest = HashStageOutput(req, temp);
  if (!digest.ok()) return digest.status();
  if (Status s = util::PublishFile(temp, req.output, "output of " + req.Label()); !s.ok()) {
    if (Status why = CheckOutputLocation(req); !why.ok()) return why;
    return s;
  }

  RunStats stats;
  stats.stage = req.stage;
  stats.executor = req.executor;
  stats.attempt = req.attempt;
  stats.host = HostName();
  stats.node = HostName();
  stats.wall_s = wall_s;
  stats.bytes_in = *bytes_in;
  stats.bytes_out = digest->second;
  stats.output_digest = "sha256:" + util::HexDigest(digest->first);
  stats.metrics = ctx.metrics();
  if (!warm_metrics.is_null()) stats.metrics["warm"] = std::move(warm_metrics);
  return stats;
}

}  // namespace stagekit
