#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include "paths.h"
#include "process.h"
#include "stagekit/executor.h"

namespace stagekit {
namespace {

namespace fs = std::filesystem;

// The last non-empty line of the child's stdout.
std::string_view LastLine(std::string_view out) {
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.remove_suffix(1);
  std::size_t nl = out.rfind('\n');
  return nl == std::string_view::npos ? out : out.substr(nl + 1);
}

std::string Label(const StageRequest& req) {
  if (req.instance.empty() || req.instance == req.stage) return "stage '" + req.stage + "'";
  return "stage '" + req.instance + "' (" + req.stage + ")";
}

std::string Tails(const internal::ChildResult& c, std::size_t max) {
  return "\n  stdout tail:\n" + internal::Tail(c.out, max) + "\n  stderr tail:\n" +
         internal::Tail(c.err, max);
}

std::string FormatMs(std::chrono::milliseconds ms) {
  if (ms.count() % 1000 == 0) return std::to_string(ms.count() / 1000) + "s";
  return std::to_string(ms.count()) + "ms";
}

}  // namespace

SubprocessExecutor::SubprocessExecutor(Options options) : options_(std::move(options)) {
  if (options_.runner.empty()) options_.runner = internal::DefaultRunner();
}

Result<RunStats> SubprocessExecutor::Run(const StageRequest& request, const StageOptions& options) {
  StageRequest req = request;
  req.executor = std::string(name());
  if (req.instance.empty()) req.instance = req.stage;

  internal::ChildSpec spec;
  spec.argv = {options_.runner.string(), "stage", req.stage};
  for (const fs::path& lib : options_.libraries) {
    spec.argv.push_back("--stages");
    spec.argv.push_back(lib.string());
  }
  spec.stdin_data = CanonicalJson(req.ToJson());
  spec.stdin_data.push_back('\n');
  spec.timeout = options.timeout;
  spec.kill_grace = options_.kill_grace;
  spec.stderr_keep = std::max<std::size_t>(options_.tail_bytes * 4, 4096);

  internal::ChildResult c = internal::RunChild(spec);
  if (!c.spawn_status.ok()) {
    return Status(Code::kInternal, "cannot run " + Label(req) +
                                       " in a subprocess: " + c.spawn_status.message() +
                                       " (set STAGEKIT_RUNNER to the stagekit binary)");
  }
  bool success = c.exited && c.exit_code == 0;
  if (!success) RemoveTempOutputs(req.output, c.pid);

  if (c.timed_out) {
    return Status(Code::kTimeout, Label(req) + " timed out after " + FormatMs(*options.timeout) +
                                      " and was stopped (SIGTERM, then SIGKILL after " +
                                      FormatMs(options_.kill_grace) +
                                      "); raise its timeout or make it faster" +
                                      Tails(c, options_.tail_bytes));
  }
  if (c.interrupted) {
    return Status(Code::kInterrupted, Label(req) + " was stopped by an interrupt");
  }

  // The child reports RunStats or a structured error as its last stdout line.
  Json reply = Json::parse(LastLine(c.out), nullptr, /*allow_exceptions=*/false);
  if (!reply.is_discarded() && reply.is_object()) {
    Result<RunStats> stats = RunStatsOrErrorFromJson(reply);
    if (stats.ok() && success) return stats;
    if (!stats.ok() && !success) {
      std::string message = stats.status().message();
      if (stats.status().code() == Code::kStageFailed) message += Tails(c, options_.tail_bytes);
      return Status(stats.status().code(), message);
    }
  }
  std::string how = c.term_signal != 0 ? "was killed by " + internal::SignalName(c.term_signal)
                                       : "exited with code " + std::to_string(c.exit_code);
  return Status(Code::kStageFailed, Label(req) + " (subprocess pid " + std::to_string(c.pid) +
                                        ") " + how + " without reporting a result" +
                                        Tails(c, options_.tail_bytes));
}

}  // namespace stagekit
