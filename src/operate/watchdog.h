// Idle watchdogs, the cost backstops of a GPU cluster: `gpu-idle` (every GPU
// of this node under a utilisation threshold) and `head-idle` (no Ray job or
// task running or pending). A watchdog samples a probe every interval and
// runs an action once a full window of consecutive samples was idle. A probe
// that fails, hangs or answers nonsense gives an "unknown" sample, which
// breaks the idle streak exactly like a busy one: a broken probe can never
// shut a node down. Also: the systemd unit and cron entry that install one.
#ifndef STAGEKIT_OPERATE_WATCHDOG_H_
#define STAGEKIT_OPERATE_WATCHDOG_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include "stagekit/status.h"

namespace stagekit::operate {

enum class Verdict { kIdle, kBusy, kUnknown };
const char* VerdictName(Verdict v);  // "idle", "busy", "unknown"

// One probe reading: the verdict and what was seen, for the log.
struct Sample {
  Verdict verdict = Verdict::kUnknown;
  std::string value;  // e.g. "3,0" (per-GPU %), "jobs=0 tasks=2", or why unknown
};

// `nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits`
// output (one number per GPU and line): idle only when there is at least one
// GPU and every one is below `below`; unknown for no numbers or any line that
// is not a number ("[N/A]", an error text).
Sample ParseGpuUtilization(const std::string& text, double below);

// A head-idle --probe's output: "idle", "busy" or a count of running/pending
// things (0 is idle, more is busy), on its first non-empty line; anything else
// is unknown.
Sample ParseHeadProbe(const std::string& text);

// `ray status` output: busy when a CPU, GPU or custom resource is in use or
// there are pending resource demands; memory and object store use are
// ignored (objects can outlive their tasks). Unknown without a Usage section.
Sample ParseRayStatus(const std::string& text);

// Runs `argv` with a deadline; a spawn failure, non-zero exit or timeout gives
// ok=false and why (kept short for one log line).
struct ProbeOutput {
  bool ok = false;
  std::string out;
  std::string why;  // when !ok: "exit 1: <stderr>", "timed out after 2s", ...
};
ProbeOutput RunProbe(const std::vector<std::string>& argv, std::chrono::milliseconds timeout);

// The head-idle probe through the dashboard: GET /api/jobs/ (any PENDING or
// RUNNING submitted job is busy; a running DRIVER job, a connected ray.init()
// script, only with `drivers_busy`: its tasks count anyway) and the state API's
// GET /api/v0/tasks?filter_keys=state&filter_predicates=!%3D&filter_values=FINISHED
//   &filter_keys=state&filter_predicates=!%3D&filter_values=FAILED
// (any task not finished or failed, i.e. running or pending, is busy).
// `address` and `token` as for JobsClient; errors and timeouts are unknown.
Sample DashboardProbe(const std::string& address, const std::string& token,
                      std::chrono::milliseconds timeout, bool drivers_busy = false);

struct WatchdogOptions {
  std::string name = "watchdog";             // "gpu-idle" / "head-idle", in log lines
  std::chrono::milliseconds window{600000};  // --for: how long idle before acting
  std::chrono::milliseconds interval{30000};
  std::string action;  // run as `sh -c ACTION`
  std::chrono::milliseconds action_timeout{600000};
  bool keep_going = false;  // after acting, start a new window instead of exiting
  // --once: take one sample, keep the streak in `state_file`, act when due.
  bool once = false;
  std::string state_file;
  // A gap between samples longer than this (missed cron runs, a reboot)
  // starts a new streak in --once mode.
  std::chrono::milliseconds max_gap{0};
};

// Consecutive idle samples needed: enough to cover the window at the interval,
// ceil(window / interval) + 1 (both ends of the window are sampled).
std::int64_t SamplesNeeded(const WatchdogOptions& options);

// Samples until a full window is idle, runs the action, and returns its exit
// status (0 = OkStatus(), otherwise a Status whose code is the action's exit
// status, 128+signal when it was killed). With keep_going it only returns on
// interrupt. kInterrupted when Interrupted() becomes true. Every decision is
// written to `log`, one line each, with a UTC timestamp.
Status RunWatchdog(const WatchdogOptions& options, const std::function<Sample()>& probe,
                   std::ostream& log);

// ---- installing ----

// Quotes one argument for a systemd ExecStart= line (shells: ShellQuote in
// tools/ship.h).
std::string SystemdQuote(const std::string& arg);

struct InstallPlan {
  std::string path;                            // the file it writes
  std::string content;                         // its text
  std::vector<std::vector<std::string>> then;  // commands run after writing (systemctl)
};

// A systemd service that runs `argv` (the watchdog, absolute binary path
// first) for ever: Restart=always, so a crash or an exit after acting brings
// it back with a fresh window.
InstallPlan SystemdPlan(const std::string& name, const std::vector<std::string>& argv,
                        const std::string& unit_dir, const std::vector<std::string>& env);
// An /etc/cron.d entry running `argv` (a --once invocation) every `minutes`
// minutes as root, with `env` lines (PATH=...) above it.
InstallPlan CronPlan(const std::string& name, const std::vector<std::string>& argv, int minutes,
                     const std::string& cron_dir, const std::vector<std::string>& env);

}  // namespace stagekit::operate

#endif  // STAGEKIT_OPERATE_WATCHDOG_H_
