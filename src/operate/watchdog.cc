#include "operate/watchdog.h"

#include "util/files.h"

#include <signal.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "deploy/jobs.h"
#include "deploy/ship.h"
#include "stagekit/executor.h"
#include "stagekit/stage.h"
#include "util/process.h"
#include "util/text.h"

namespace stagekit::operate {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// One line for the log: newlines folded, long text cut.
std::string OneLine(std::string_view text, std::size_t max = 200) {
  std::string out = util::Trim(text);
  for (char& c : out) {
    if (c == '\n' || c == '\r' || c == '\t') c = ' ';
  }
  if (out.size() > max) out = out.substr(0, max) + "...";
  return out;
}

bool ParseNumber(const std::string& text, double& out) {
  if (text.empty()) return false;
  const char* begin = text.c_str();
  char* end = nullptr;
  out = std::strtod(begin, &end);
  return end == begin + text.size() && std::isfinite(out);
}

// 2025-06-01T12:00:00.123Z
std::string Timestamp() {
  auto now = std::chrono::system_clock::now();
  std::time_t t = std::chrono::system_clock::to_time_t(now);
  long ms = static_cast<long>(
      std::chrono::duration_cast<milliseconds>(now.time_since_epoch()).count() % 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  char out[80];
  std::snprintf(out, sizeof out, "%s.%03ldZ", buf, ms);
  return out;
}

void Log(std::ostream& log, const std::string& name, const std::string& text) {
  log << Timestamp() << " " << name << " " << text << std::endl;  // flushed: a log to tail
}

void SleepUnlessInterrupted(Clock::time_point until) {
  while (!util::Interrupted()) {
    auto now = Clock::now();
    if (now >= until) return;
    std::this_thread::sleep_for(std::min<Clock::duration>(until - now, milliseconds(20)));
  }
}

// The streak of consecutive idle samples, and whether it is due.
struct Streak {
  std::int64_t samples = 0;
  std::int64_t start_ms = 0;  // when its first sample was taken (clock of the caller)
};

std::string SampleLine(std::int64_t n, const Sample& s, const Streak& streak, std::int64_t now_ms,
                       const WatchdogOptions& o) {
  std::int64_t idle_ms = streak.samples > 0 ? now_ms - streak.start_ms : 0;
  std::ostringstream line;
  line << "sample=" << n << " value=\"" << s.value << "\" verdict=" << VerdictName(s.verdict)
       << " streak=" << streak.samples << "/" << SamplesNeeded(o)
       << " idle_for=" << util::FormatMs(milliseconds(idle_ms)) << "/" << util::FormatMs(o.window);
  return line.str();
}

bool Due(const Streak& streak, std::int64_t now_ms, const WatchdogOptions& o) {
  return streak.samples >= SamplesNeeded(o) && now_ms - streak.start_ms >= o.window.count();
}

void Update(Streak& streak, const Sample& s, std::int64_t now_ms) {
  if (s.verdict == Verdict::kIdle) {
    if (streak.samples == 0) streak.start_ms = now_ms;
    ++streak.samples;
  } else {
    streak = Streak{};
  }
}

// Runs the action once and turns its end into the watchdog's status.
Status RunAction(const WatchdogOptions& o, std::ostream& log) {
  Log(log, o.name,
      "fire: every sample idle for " + util::FormatMs(o.window) + "; running: sh -c " +
          util::ShellQuote(o.action));
  util::ChildSpec spec;
  spec.argv = {"/bin/sh", "-c", o.action};
  spec.timeout = o.action_timeout;
  spec.stdout_keep = 4096;
  spec.stderr_keep = 4096;
  spec.cancelled = util::Interrupted;
  util::ChildResult r = util::RunChild(spec);
  std::string output = OneLine(r.out + (r.out.empty() || r.err.empty() ? "" : " ") + r.err, 1000);
  std::string shown = output.empty() ? "" : " output=\"" + output + "\"";
  if (!r.spawn_status.ok()) {
    Log(log, o.name, "action failed to start: " + r.spawn_status.message());
    return Status(Code::kInternal, "cannot run the action: " + r.spawn_status.message());
  }
  if (r.interrupted) {
    Log(log, o.name, "action stopped: interrupted" + shown);
    return Status(Code::kInterrupted, o.name + ": interrupted while the action ran");
  }
  if (r.timed_out) {
    Log(log, o.name, "action timed out after " + util::FormatMs(o.action_timeout) + shown);
    return Status(static_cast<Code>(124), o.name + ": the action timed out after " +
                                              util::FormatMs(o.action_timeout) +
                                              " and was stopped");
  }
  int code = r.exited ? r.exit_code : 128 + r.term_signal;
  Log(log, o.name,
      "action exit=" + std::to_string(code) +
          (r.exited ? "" : " (killed by " + util::SignalName(r.term_signal) + ")") + shown);
  if (code == 0) return OkStatus();
  return Status(static_cast<Code>(code), o.name + ": the action exited " + std::to_string(code) +
                                             " (sh -c " + util::ShellQuote(o.action) + ")");
}

std::int64_t WallMs() {
  return std::chrono::duration_cast<milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::int64_t SteadyMs() {
  return std::chrono::duration_cast<milliseconds>(Clock::now().time_since_epoch()).count();
}

// --once: one sample against the streak kept in the state file.
Status RunOnce(const WatchdogOptions& o, const std::function<Sample()>& probe, std::ostream& log) {
  Streak streak;
  std::int64_t last_ms = 0, count = 0;
  {
    auto text = util::ReadFile(o.state_file, 1 << 20);  // a state file is ~200 bytes
    if (text.ok()) {
      Json j = Json::parse(*text, nullptr, false);
      if (j.is_object() && j.value("watchdog", "") == o.name) {
        streak.samples = j.value("streak_samples", std::int64_t{0});
        streak.start_ms = j.value("streak_start_ms", std::int64_t{0});
        last_ms = j.value("last_sample_ms", std::int64_t{0});
        count = j.value("samples", std::int64_t{0});
      } else {
        Log(log, o.name, "state file " + o.state_file + " unreadable or not ours: new streak");
      }
    }
  }
  std::int64_t now = WallMs();
  if (streak.samples > 0 && o.max_gap.count() > 0 && now - last_ms > o.max_gap.count()) {
    Log(log, o.name,
        "gap: last sample " + util::FormatMs(milliseconds(now - last_ms)) + " ago (over " +
            util::FormatMs(o.max_gap) + "): new streak");
    streak = Streak{};
  }
  Sample s = probe();
  if (util::Interrupted()) return Status(Code::kInterrupted, o.name + ": interrupted");
  Update(streak, s, now);
  Log(log, o.name, SampleLine(++count, s, streak, now, o));
  bool due = Due(streak, now, o);
  Json state = {{"watchdog", o.name},
                {"samples", count},
                {"last_sample_ms", now},
                {"streak_samples", due ? 0 : streak.samples},
                {"streak_start_ms", due ? 0 : streak.start_ms}};
  // Saved before acting: an action that reboots the node leaves no due streak.
  std::error_code ec;
  fs::path path(o.state_file);
  if (path.has_parent_path()) fs::create_directories(path.parent_path(), ec);
  if (Status written = util::WriteFileAtomically(path, state.dump() + "\n"); !written.ok()) {
    return Status(Code::kOutputError, "cannot write the state file: " + written.message());
  }
  if (!due) return OkStatus();
  return RunAction(o, log);
}

}  // namespace

const char* VerdictName(Verdict v) {
  switch (v) {
    case Verdict::kIdle:
      return "idle";
    case Verdict::kBusy:
      return "busy";
    case Verdict::kUnknown:
      break;
  }
  return "unknown";
}

Sample ParseGpuUtilization(const std::string& text, double below) {
  std::istringstream in(text);
  std::string line, values;
  bool all_below = true;
  int gpus = 0;
  while (std::getline(in, line)) {
    std::string v = util::Trim(line);
    if (v.empty()) continue;
    if (v.back() == '%') v = util::Trim(v.substr(0, v.size() - 1));
    double pct = 0;
    if (!ParseNumber(v, pct) || pct < 0 || pct > 100) {
      return {Verdict::kUnknown, "not a utilisation: " + OneLine(line, 80)};
    }
    if (!values.empty()) values += ",";
    values += v;
    ++gpus;
    if (pct >= below) all_below = false;
  }
  if (gpus == 0) return {Verdict::kUnknown, "no GPU utilisation in the probe's output"};
  return {all_below ? Verdict::kIdle : Verdict::kBusy, values};
}

Sample ParseHeadProbe(const std::string& text) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    std::string v = util::Trim(line);
    if (v.empty()) continue;
    std::string lower = v;
    for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (lower == "idle") return {Verdict::kIdle, "idle"};
    if (lower == "busy") return {Verdict::kBusy, "busy"};
    bool digits = std::all_of(v.begin(), v.end(), [](char c) { return std::isdigit(c); });
    if (digits && v.size() < 18) {
      long long n = std::stoll(v);
      return {n == 0 ? Verdict::kIdle : Verdict::kBusy, "count=" + v};
    }
    return {Verdict::kUnknown, "not idle, busy or a count: " + OneLine(v, 80)};
  }
  return {Verdict::kUnknown, "empty probe output"};
}

Sample ParseRayStatus(const std::string& text) {
  std::istringstream in(text);
  std::string line, section;
  bool saw_usage = false, saw_demands = false;
  std::vector<std::string> used, demands;
  while (std::getline(in, line)) {
    std::string v = util::Trim(line);
    if (!line.empty() && !std::isspace(static_cast<unsigned char>(line[0])) && !v.empty() &&
        v.back() == ':') {
      section = v;
      if (section == "Total Usage:" || section == "Usage:") saw_usage = true;
      if (section == "Pending Demands:" || section == "Demands:") saw_demands = true;
      continue;
    }
    if (v.empty()) continue;
    if (section == "Total Usage:" || section == "Usage:") {
      // "0.0/2.0 CPU", "1.0/1.0 GPU (1.0 used of 1.0 reserved in placement groups)"
      std::istringstream fields(v);
      std::string amount, resource;
      fields >> amount >> resource;
      if (resource == "memory" || resource == "object_store_memory") continue;
      std::size_t slash = amount.find('/');
      double n = 0;
      if (slash == std::string::npos || !ParseNumber(amount.substr(0, slash), n)) continue;
      if (n > 0) used.push_back(amount + " " + resource);
    } else if (section == "Pending Demands:" || section == "Demands:") {
      if (v != "(no resource demands)") demands.push_back(v);
    }
  }
  if (!saw_usage) return {Verdict::kUnknown, "no 'Total Usage:' in `ray status` output"};
  std::string value = "in use: " + (used.empty() ? std::string("none") : "");
  for (std::size_t i = 0; i < used.size(); ++i) value += (i ? ", " : "") + used[i];
  value += "; demands: " + std::to_string(demands.size());
  if (!saw_demands) value += " (no demand section)";
  return {used.empty() && demands.empty() ? Verdict::kIdle : Verdict::kBusy, OneLine(value, 200)};
}

ProbeOutput RunProbe(const std::vector<std::string>& argv, milliseconds timeout) {
  util::ChildSpec spec;
  spec.argv = argv;
  spec.timeout = timeout;
  spec.kill_grace = milliseconds(1000);
  spec.stdout_keep = 1 << 16;
  spec.stderr_keep = 2048;
  spec.cancelled = util::Interrupted;
  util::ChildResult r = util::RunChild(spec);
  ProbeOutput out;
  out.out = r.out;
  if (!r.spawn_status.ok()) {
    out.why = "probe failed to start: " + r.spawn_status.message();
  } else if (r.timed_out) {
    out.why = "probe timed out after " + util::FormatMs(timeout);
  } else if (r.interrupted) {
    out.why = "probe interrupted";
  } else if (!r.exited) {
    out.why = "probe killed by " + util::SignalName(r.term_signal);
  } else if (r.exit_code != 0) {
    std::string err = OneLine(r.err.empty() ? r.out : r.err, 160);
    out.why = "probe exit " + std::to_string(r.exit_code) + (err.empty() ? "" : ": " + err);
  } else {
    out.ok = true;
  }
  return out;
}

Sample DashboardProbe(const std::string& address, const std::string& token, milliseconds timeout,
                      bool drivers_busy) {
  deploy::JobsClient client(address, token);
  client.SetTimeout(timeout);
  auto jobs = client.List();
  if (!jobs.ok()) return {Verdict::kUnknown, OneLine(jobs.status().message(), 200)};
  // JobDetails (dashboard/modules/job/pydantic_models.py): type SUBMISSION
  // (the Jobs API) or DRIVER (a script that called ray.init()).
  int active_jobs = 0, drivers = 0;
  for (const Json& job : *jobs) {
    if (!job.is_object()) continue;
    std::string status = job.value("status", "");
    if (status != "PENDING" && status != "RUNNING") continue;
    if (job.value("type", "") == "DRIVER") {
      ++drivers;
    } else {
      ++active_jobs;
    }
  }
  // Ray's state API (dashboard/modules/state/state_head.py, /api/v0/tasks):
  // repeated filter_keys/filter_predicates/filter_values triples are ANDed;
  // "!=" leaves every task that has not ended, i.e. running or pending.
  auto tasks = client.ListTasks(
      "filter_keys=state&filter_predicates=%21%3D&filter_values=FINISHED"
      "&filter_keys=state&filter_predicates=%21%3D&filter_values=FAILED&limit=100&timeout=" +
      std::to_string(std::max<long long>(1, timeout.count() / 1000)));
  if (!tasks.ok()) return {Verdict::kUnknown, OneLine(tasks.status().message(), 200)};
  const Json& t = *tasks;
  long long active_tasks = 0;
  if (t.contains("num_filtered") && t["num_filtered"].is_number_integer()) {
    active_tasks = t["num_filtered"].get<long long>();
  } else if (t.contains("result") && t["result"].is_array()) {
    active_tasks = static_cast<long long>(t["result"].size());
  } else {
    return {Verdict::kUnknown, "the state API answered without num_filtered or result"};
  }
  std::string value = "jobs=" + std::to_string(active_jobs) +
                      " drivers=" + std::to_string(drivers) +
                      " tasks=" + std::to_string(active_tasks);
  std::string warning = t.value("partial_failure_warning", "");
  if (!warning.empty()) {
    // Some raylets did not answer: what is missing might be busy.
    return {Verdict::kUnknown, value + " partial: " + OneLine(warning, 120)};
  }
  bool idle = active_jobs == 0 && active_tasks == 0 && (!drivers_busy || drivers == 0);
  return {idle ? Verdict::kIdle : Verdict::kBusy, value};
}

std::int64_t SamplesNeeded(const WatchdogOptions& o) {
  std::int64_t interval = std::max<std::int64_t>(1, o.interval.count());
  return (o.window.count() + interval - 1) / interval + 1;
}

Status RunWatchdog(const WatchdogOptions& o, const std::function<Sample()>& probe,
                   std::ostream& log) {
  if (o.window.count() <= 0 || o.interval.count() <= 0) {
    return Status(Code::kUsage, "--for and --interval must be positive");
  }
  if (o.action.empty()) return Status(Code::kUsage, "--then needs a command");
  if (o.once) {
    if (o.state_file.empty()) return Status(Code::kUsage, "--once needs --state FILE");
    return RunOnce(o, probe, log);
  }
  Log(log, o.name,
      "start: act after " + util::FormatMs(o.window) + " idle (" +
          std::to_string(SamplesNeeded(o)) + " samples every " + util::FormatMs(o.interval) +
          "); action: sh -c " + util::ShellQuote(o.action) + (o.keep_going ? "; keep going" : ""));
  Streak streak;
  std::int64_t count = 0;
  for (;;) {
    if (util::Interrupted()) {
      Log(log, o.name, "stop: interrupted");
      return Status(Code::kInterrupted, o.name + ": interrupted");
    }
    const Clock::time_point taken = Clock::now();
    const std::int64_t taken_ms = SteadyMs();
    Sample s = probe();
    if (util::Interrupted()) {
      Log(log, o.name, "stop: interrupted");
      return Status(Code::kInterrupted, o.name + ": interrupted");
    }
    Update(streak, s, taken_ms);
    Log(log, o.name, SampleLine(++count, s, streak, taken_ms, o));
    if (Due(streak, taken_ms, o)) {
      Status st = RunAction(o, log);
      if (!o.keep_going || st.code() == Code::kInterrupted) return st;
      streak = Streak{};
      Log(log, o.name, "keep going: new window");
    }
    SleepUnlessInterrupted(taken + o.interval);
  }
}

std::string SystemdQuote(const std::string& arg) {
  // systemd.service(5) "Command lines": double quotes with C-style escapes;
  // % starts a specifier (%%) and $ a variable ($$), also inside quotes.
  std::string out = "\"";
  for (char c : arg) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '%':
        out += "%%";
        break;
      case '$':
        out += "$$";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        out += c;
    }
  }
  return out + "\"";
}

InstallPlan SystemdPlan(const std::string& name, const std::vector<std::string>& argv,
                        const std::string& unit_dir, const std::vector<std::string>& env) {
  std::string exec;
  for (const std::string& a : argv) exec += (exec.empty() ? "" : " ") + SystemdQuote(a);
  std::ostringstream s;
  s << "# Written by `stagekit watchdog install`; remove with:\n"
    << "#   systemctl disable --now " << name << ".service && rm " << unit_dir << "/" << name
    << ".service\n"
    << "[Unit]\n"
    << "Description=stagekit " << (argv.size() > 2 ? argv[2] : "watchdog") << " watchdog\n"
    << "After=network-online.target\n"
    << "Wants=network-online.target\n\n"
    << "[Service]\n"
    << "Type=simple\n";
  for (const std::string& e : env) {
    // Environment= expands specifiers but not variables: keep $ as it is.
    std::string quoted = SystemdQuote(e), plain;
    for (std::size_t i = 0; i < quoted.size(); ++i) {
      plain += quoted[i];
      if (quoted[i] == '$' && i + 1 < quoted.size() && quoted[i + 1] == '$') ++i;
    }
    s << "Environment=" << plain << "\n";
  }
  s << "ExecStart=" << exec << "\n"
    << "# Always back: after a crash, and after acting (with a fresh window).\n"
    << "Restart=always\n"
    << "RestartSec=30\n\n"
    << "[Install]\n"
    << "WantedBy=multi-user.target\n";
  InstallPlan plan;
  plan.path = (fs::path(unit_dir) / (name + ".service")).string();
  plan.content = s.str();
  plan.then = {{"systemctl", "daemon-reload"}, {"systemctl", "enable", "--now", name + ".service"}};
  return plan;
}

InstallPlan CronPlan(const std::string& name, const std::vector<std::string>& argv, int minutes,
                     const std::string& cron_dir, const std::vector<std::string>& env) {
  std::string command;
  for (const std::string& a : argv) command += (command.empty() ? "" : " ") + util::ShellQuote(a);
  std::string escaped;  // crontab(5): an unescaped % ends the command
  for (char c : command) {
    if (c == '%') escaped += '\\';
    escaped += c;
  }
  std::ostringstream s;
  s << "# Written by `stagekit watchdog install`; remove this file to uninstall.\n"
    << "# One --once sample every " << minutes
    << " minute(s); the idle streak is kept in the --state file.\n";
  for (const std::string& e : env) s << e << "\n";
  s << "*/" << minutes << " * * * * root " << escaped << "\n";
  InstallPlan plan;
  plan.path = (fs::path(cron_dir) / name).string();
  plan.content = s.str();
  return plan;
}

}  // namespace stagekit::operate
