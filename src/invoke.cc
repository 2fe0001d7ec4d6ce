#include "stagekit/invoke.h"

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>

#include <fcntl.h>

#include "fd.h"
#include "sha256.h"

namespace stagekit {
namespace {

namespace fs = std::filesystem;

std::string Errno() { return std::strerror(errno); }

std::string StageLabel(const StageRequest& req) {
  if (req.instance.empty() || req.instance == req.stage) return "stage '" + req.stage + "'";
  return "stage '" + req.instance + "' (" + req.stage + ")";
}

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
    std::string where = "input '" + name + "' of " + StageLabel(req) + " ('" + path.string() + "')";
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
  std::string where = "output directory '" + dir.string() + "' of " + StageLabel(req);
  if (::stat(dir.c_str(), &st) != 0) {
    return Status(Code::kOutputError, where + " cannot be used: " + Errno());
  }
  if (!S_ISDIR(st.st_mode)) return Status(Code::kOutputError, where + " is not a directory");
  if (::access(dir.c_str(), W_OK | X_OK) != 0) {
    return Status(Code::kOutputError, where + " is not writable: " + Errno());
  }
  if (::stat(req.output.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
    return Status(Code::kOutputError,
                  "output '" + req.output.string() + "' of " + StageLabel(req) + " is a directory");
  }
  return OkStatus();
}

// Why a stage could not produce its output. Looked for only once it failed:
// these checks cost system calls that a run that works does not need.
Status Diagnose(const StageRequest& req) {
  for (const auto& [name, path] : req.inputs) {
    if (::access(path.c_str(), R_OK) != 0) {
      return Status(Code::kInputError, "input '" + name + "' of " + StageLabel(req) + " ('" +
                                           path.string() + "') cannot be read: " + Errno());
    }
  }
  return CheckOutputLocation(req);
}

constexpr const char* kNoOutput =
    " wrote no output: a stage must write one regular file at ctx.output() (or call "
    "ctx.WriteOutput)";

std::atomic<unsigned long> g_temp_serial{0};

}  // namespace

fs::path TempOutputPath(const fs::path& output, long pid, unsigned long serial) {
  fs::path name = "." + output.filename().string() + ".stagekit-" + std::to_string(pid) + "-" +
                  std::to_string(serial) + ".tmp";
  return output.parent_path() / name;
}

void RemoveTempOutputs(const fs::path& output, long pid) {
  std::string prefix = "." + output.filename().string() + ".stagekit-" + std::to_string(pid) + "-";
  fs::path dir = output.parent_path().empty() ? fs::path(".") : output.parent_path();
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::string file = it->path().filename().string();
    if (file.rfind(prefix, 0) == 0) fs::remove(it->path(), ec);
  }
}

const std::string& HostName() {
  static const std::string host = [] {
    char buf[256] = {};
    if (::gethostname(buf, sizeof(buf) - 1) != 0) return std::string("unknown");
    return std::string(buf);
  }();
  return host;
}

Result<RunStats> Invoke(const StageRequest& req, const Registry& registry) {
  const Registry::Entry* entry = registry.Find(req.stage);
  if (entry == nullptr) return UnknownStage(req, registry);

  Result<std::uint64_t> bytes_in = CheckInputs(req);
  if (!bytes_in.ok()) return bytes_in.status();

  const fs::path temp = TempOutputPath(req.output, ::getpid(), g_temp_serial++);
  StageContext ctx(req.stage, req.instance.empty() ? req.stage : req.instance, &req.inputs, temp,
                   &req.job, &req.kwargs, req.threads);

  auto start = std::chrono::steady_clock::now();
  std::string failure;
  try {
    entry->fn(ctx);
  } catch (const std::exception& e) {
    failure = e.what();
  } catch (...) {
    failure = "threw an exception that is not a std::exception";
  }
  double wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  std::error_code ec;
  if (!failure.empty()) {
    fs::remove(temp, ec);
    if (Status why = Diagnose(req); !why.ok()) return why;
    return Status(Code::kStageFailed, StageLabel(req) + " failed: " + failure);
  }
  // O_NOFOLLOW: a symlink is not an output.
  internal::UniqueFd fd(::open(temp.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  struct stat st {};
  if (!fd || ::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
    fd.Reset();
    fs::remove_all(temp, ec);
    if (Status why = Diagnose(req); !why.ok()) return why;
    return Status(Code::kStageFailed, StageLabel(req) + kNoOutput);
  }
  auto digest = st.st_size == 0 ? Result<std::pair<internal::Sha256Digest, std::uint64_t>>(
                                      std::make_pair(internal::Sha256(""), std::uint64_t{0}))
                                : internal::Sha256Fd(fd.get(), temp);
  fd.Reset();
  if (!digest.ok()) {
    fs::remove(temp, ec);
    return Status(Code::kOutputError, StageLabel(req) + ": " + digest.status().message());
  }
  if (::rename(temp.c_str(), req.output.c_str()) != 0) {
    std::string err = Errno();
    fs::remove(temp, ec);
    if (Status why = CheckOutputLocation(req); !why.ok()) return why;
    return Status(Code::kOutputError, "cannot move the output of " + StageLabel(req) +
                                          " into place at '" + req.output.string() + "': " + err);
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
  stats.output_digest = "sha256:" + internal::HexDigest(digest->first);
  stats.metrics = ctx.metrics();
  return stats;
}

}  // namespace stagekit
