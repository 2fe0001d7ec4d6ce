// stagekit watchdog gpu-idle|head-idle: cost backstops that act (shut the
// node down, stop the cluster) once it has been idle for a full window, and
// `stagekit watchdog install` to run one under systemd or cron.
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "cli.h"
#include "deploy/jobs.h"
#include "operate/watchdog.h"
#include "stagekit/executor.h"
#include "util/outcome.h"
#include "util/process.h"

namespace stagekit::cli {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;

enum class Kind { kGpu, kHead };

const char* KindName(Kind k) { return k == Kind::kGpu ? "gpu-idle" : "head-idle"; }

// Options as given (durations as text), so `install` can hand them on as they are.
struct WatchdogCli {
  Kind kind = Kind::kGpu;
  double below = 5;
  std::string window;  // --for
  std::string interval;
  std::string action;
  std::string probe;
  std::string probe_timeout = "30s";
  std::string action_timeout = "10m";
  std::string log;
  bool keep_going = false;
  bool once = false;
  std::string state;
  // head-idle
  std::string address;
  std::string token_file;
  std::string source = "dashboard";
  bool drivers_busy = false;
  // install
  std::string as;
  std::string name;
  std::string unit_dir = "/etc/systemd/system";
  std::string cron_dir = "/etc/cron.d";
  bool dry_run = false;
  bool no_enable = false;
};

constexpr const char* kGpuHelp =
    R"(Run an action once every GPU of this node has stayed under a utilisation
threshold for a whole window, e.g. shut down an idle spot GPU worker:

  stagekit watchdog gpu-idle --below 5 --for 10m --then 'shutdown -h now'

Every --interval it takes a sample with
  nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits
(one number per GPU; the sample is idle only when every GPU is below --below).
The action (run as `sh -c CMD`) fires when ceil(--for / --interval) + 1 consecutive
samples, spanning at least --for, were idle: never sooner than --for after start.
A probe that fails, hangs past --probe-timeout or prints anything but numbers is
"unknown" and, like a busy sample, starts the window over: a broken probe never
fires the action. Every sample is logged (UTC time, values, verdict, streak) to
stderr or --log. After acting it exits with the action's exit status (124 when
the action timed out), unless --keep-going. Ctrl-C / SIGTERM: exit 130.

--probe CMD replaces nvidia-smi: a shell command printing one utilisation
percentage per line (one per GPU); a non-zero exit is "unknown".)";

constexpr const char* kHeadHelp =
    R"(Run an action once the Ray cluster has had no work for a whole window, e.g.
stop an idle head:

  stagekit watchdog head-idle --for 2h --then 'shutdown -h now'

A sample is idle when the head's dashboard (--address) reports
  - no PENDING or RUNNING submitted job: GET /api/jobs/ (the Jobs API; a
    running DRIVER entry, a connected ray.init() script, only counts with
    --drivers-busy: an idle notebook must not keep the head up), and
  - no task that has not ended: GET /api/v0/tasks?filter_keys=state&filter_predicates=!=
    &filter_values=FINISHED&filter_keys=state&filter_predicates=!=&filter_values=FAILED
    (Ray's state API; a partial answer counts as unknown).
With --source ray-status it runs `ray status` on this node instead: idle when no
CPU, GPU or custom resource is in use and there are no pending demands.
--probe CMD replaces both: a shell command printing "idle", "busy", or a count of
running/pending things (0 is idle); a non-zero exit or other output is unknown.
Unknown samples (dashboard down, timeout past --probe-timeout, a failing probe)
start the window over, like busy ones. Firing, logging, exit status: as gpu-idle.)";

constexpr const char* kInstallHelp =
    R"(Install a watchdog to run without you: the same options as the watchdog, plus
--as systemd|cron.

  systemd: a service (NAME.service in --unit-dir) running the watchdog for good,
           Restart=always: after a crash, a reboot, or acting it starts over with
           a fresh window. Then `systemctl daemon-reload` and
           `systemctl enable --now NAME.service` (skipped with --no-enable).
           Logs go to the journal (journalctl -u NAME) unless --log.
  cron:    a file in --cron-dir (/etc/cron.d/NAME) running one `--once` sample
           every --interval (whole minutes, default 1m) with the idle streak
           kept in --state (default /var/lib/stagekit/NAME.state); a gap longer
           than two intervals (missed runs, a reboot) starts the window over.
           Logs go to --log (default /var/log/NAME.log).

The files run this stagekit binary by its absolute path, with PATH (and
RAY_AUTH_TOKEN_PATH, never a token's value) from this environment. --dry-run
prints what would be written and run, and changes nothing.)";

void AddCommon(CLI::App* sub, WatchdogCli& c, bool install) {
  if (c.kind == Kind::kGpu) {
    sub->add_option("--below", c.below, "Idle threshold, GPU utilisation in % (default 5)")
        ->check(CLI::Range(0.0, 100.0));
  }
  sub->add_option("--for", c.window,
                  c.kind == Kind::kGpu ? "How long every sample must be idle, e.g. 10m"
                                       : "How long every sample must be idle, e.g. 2h")
      ->type_name("DURATION")
      ->required();
  sub->add_option("--then", c.action, "Action, run as `sh -c CMD` when the window is idle")
      ->type_name("CMD")
      ->required();
  sub->add_option("--interval", c.interval,
                  std::string("Time between samples (default ") +
                      (c.kind == Kind::kGpu ? "30s" : "60s") + "; 1m with --as cron)")
      ->type_name("DURATION");
  sub->add_option(
         "--probe", c.probe,
         c.kind == Kind::kGpu
             ? "Shell command printing one GPU utilisation % per line (replaces nvidia-smi)"
             : "Shell command printing idle, busy or a count (replaces the dashboard)")
      ->type_name("CMD");
  sub->add_option("--probe-timeout", c.probe_timeout,
                  "A probe running longer is stopped and its sample is unknown (default 30s)")
      ->type_name("DURATION");
  sub->add_option("--action-timeout", c.action_timeout,
                  "The action is stopped after this long (default 10m; exit 124)")
      ->type_name("DURATION");
  sub->add_option("--log", c.log, "Append the decision log to FILE instead of stderr")
      ->type_name("FILE");
  sub->add_flag("--keep-going", c.keep_going,
                "After acting, watch on (a fresh window) instead of exiting");
  if (!install) {
    sub->add_flag("--once", c.once,
                  "Take one sample, keep the streak in --state, act when due (for cron)");
    sub->add_option("--state", c.state, "Streak state file for --once")->type_name("FILE");
  }
  if (c.kind == Kind::kHead) {
    sub->add_option("--address", c.address,
                    "The head's dashboard, http://HOST:8265 (default: $RAY_API_SERVER_ADDRESS, "
                    "an http:// $RAY_ADDRESS, else http://127.0.0.1:8265)")
        ->type_name("URL");
    sub->add_option("--token-file", c.token_file,
                    "File with the cluster's token (default: $RAY_AUTH_TOKEN, "
                    "$RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token)")
        ->type_name("FILE");
    sub->add_option("--source", c.source,
                    "dashboard (Jobs and state APIs, default) or ray-status (`ray status`)")
        ->check(CLI::IsMember({"dashboard", "ray-status"}));
    sub->add_flag("--drivers-busy", c.drivers_busy,
                  "A connected driver (a running ray.init() script) is busy even with no task "
                  "running (default: only its tasks count)");
  }
}

Result<milliseconds> Duration(const std::string& flag, const std::string& text) {
  auto d = ParseDuration(text);
  if (!d.ok()) return Status(Code::kUsage, flag + ": " + d.status().message());
  return *d;
}

std::string DefaultInterval(const WatchdogCli& c) {
  return c.interval.empty() ? (c.kind == Kind::kGpu ? "30s" : "60s") : c.interval;
}

Status Run(const WatchdogCli& c) {
  operate::WatchdogOptions o;
  o.name = KindName(c.kind);
  auto window = Duration("--for", c.window);
  if (!window.ok()) return window.status();
  auto interval = Duration("--interval", DefaultInterval(c));
  if (!interval.ok()) return interval.status();
  auto probe_timeout = Duration("--probe-timeout", c.probe_timeout);
  if (!probe_timeout.ok()) return probe_timeout.status();
  auto action_timeout = Duration("--action-timeout", c.action_timeout);
  if (!action_timeout.ok()) return action_timeout.status();
  if (c.action.empty()) return Status(Code::kUsage, "--then needs a command");
  if (c.once && c.state.empty()) {
    return Status(Code::kUsage, "--once needs --state FILE to keep the idle streak between runs");
  }
  if (!c.once && !c.state.empty()) return Status(Code::kUsage, "--state is for --once");
  o.window = *window;
  o.interval = *interval;
  o.action = c.action;
  o.action_timeout = *action_timeout;
  o.keep_going = c.keep_going;
  o.once = c.once;
  o.state_file = c.state;
  o.max_gap = 2 * *interval + *probe_timeout;
  const milliseconds timeout = *probe_timeout;

  std::function<operate::Sample()> probe;
  if (c.kind == Kind::kGpu) {
    std::vector<std::string> argv =
        c.probe.empty() ? std::vector<std::string>{"nvidia-smi", "--query-gpu=utilization.gpu",
                                                   "--format=csv,noheader,nounits"}
                        : std::vector<std::string>{"/bin/sh", "-c", c.probe};
    const double below = c.below;
    probe = [argv, below, timeout] {
      operate::ProbeOutput out = operate::RunProbe(argv, timeout);
      if (!out.ok) return operate::Sample{operate::Verdict::kUnknown, out.why};
      return operate::ParseGpuUtilization(out.out, below);
    };
  } else if (!c.probe.empty() || c.source == "ray-status") {
    const bool custom = !c.probe.empty();
    std::vector<std::string> argv = custom ? std::vector<std::string>{"/bin/sh", "-c", c.probe}
                                           : std::vector<std::string>{"ray", "status"};
    probe = [argv, custom, timeout] {
      operate::ProbeOutput out = operate::RunProbe(argv, timeout);
      if (!out.ok) return operate::Sample{operate::Verdict::kUnknown, out.why};
      return custom ? operate::ParseHeadProbe(out.out) : operate::ParseRayStatus(out.out);
    };
  } else {
    auto url = deploy::DashboardAddress(c.address);
    if (!url.ok()) return url.status();
    auto token = deploy::AuthToken(c.token_file);
    if (!token.ok()) return token.status();
    std::string address = *url, secret = *token;
    const bool drivers_busy = c.drivers_busy;
    probe = [address, secret, timeout, drivers_busy] {
      return operate::DashboardProbe(address, secret, timeout, drivers_busy);
    };
  }

  std::ofstream file;
  if (!c.log.empty()) {
    std::error_code ec;
    fs::path parent = fs::path(c.log).parent_path();
    if (!parent.empty()) fs::create_directories(parent, ec);
    file.open(c.log, std::ios::app);
    if (!file) return Status(Code::kOutputError, "cannot open the log file " + c.log);
  }
  std::ostream& log = c.log.empty() ? std::cerr : file;
  return operate::RunWatchdog(o, probe, log);
}

bool ValidName(const std::string& name) {
  // cron ignores files in /etc/cron.d whose names have dots.
  return !name.empty() && name.size() <= 64 && std::all_of(name.begin(), name.end(), [](char ch) {
    return std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '_';
  });
}

// Checks --as and --name, giving --name its default.
Status CheckTargetAndName(WatchdogCli& c) {
  if (c.as != "systemd" && c.as != "cron") {
    return Status(Code::kUsage, "--as must be systemd or cron");
  }
  if (c.name.empty()) c.name = std::string("stagekit-") + KindName(c.kind);
  if (!ValidName(c.name)) {
    return Status(Code::kUsage, "--name '" + c.name +
                                    "': use letters, digits, - and _ only (cron skips files with "
                                    "dots)");
  }
  return OkStatus();
}

// Checks every duration, settling `interval`; cron's minutes between samples (0 for systemd).
Result<int> CheckInstallDurations(const WatchdogCli& c, bool cron, std::string& interval) {
  // Check every value now rather than in a unit that fails at 3 am.
  for (auto [flag, text] : {std::pair<const char*, std::string>{"--for", c.window},
                            {"--probe-timeout", c.probe_timeout},
                            {"--action-timeout", c.action_timeout}}) {
    auto d = Duration(flag, text);
    if (!d.ok()) return d.status();
  }
  int minutes = 0;
  interval = DefaultInterval(c);
  if (cron) {
    if (c.interval.empty()) interval = "1m";
    auto d = Duration("--interval", interval);
    if (!d.ok()) return d.status();
    if (d->count() % 60000 != 0 || d->count() / 60000 < 1 || d->count() / 60000 > 59) {
      return Status(Code::kUsage, "--interval " + interval +
                                      ": cron runs a sample every 1 to 59 whole minutes "
                                      "(e.g. --interval 1m)");
    }
    minutes = static_cast<int>(d->count() / 60000);
  } else {
    auto d = Duration("--interval", interval);
    if (!d.ok()) return d.status();
  }
  return minutes;
}

// The installed watchdog's command line and the environment it runs with.
struct ServiceCommand {
  std::vector<std::string> argv;
  std::vector<std::string> env;
  // Appends `flag value` to argv.
  void Add(const char* flag, const std::string& value) {
    argv.push_back(flag);
    argv.push_back(value);
  }
};

// How an installed head-idle reaches the cluster: `ray status`, or the dashboard and its token.
Status AddHeadSource(const WatchdogCli& c, bool cron, ServiceCommand& command) {
  std::error_code ec;
  if (c.source == "ray-status") {
    command.Add("--source", "ray-status");
    return OkStatus();
  }
  auto url = deploy::DashboardAddress(c.address);
  if (!url.ok()) return url.status();
  command.Add("--address", *url);  // the service does not see this shell's RAY_ADDRESS
  if (c.drivers_busy) command.argv.push_back("--drivers-busy");
  if (!c.token_file.empty()) {
    command.Add("--token-file", fs::absolute(c.token_file, ec).string());
  } else if (const char* p = std::getenv("RAY_AUTH_TOKEN_PATH"); p != nullptr && *p) {
    command.env.push_back(std::string("RAY_AUTH_TOKEN_PATH=") + fs::absolute(p, ec).string());
  } else if (const char* t = std::getenv("RAY_AUTH_TOKEN"); t != nullptr && *t) {
    std::cerr << "stagekit: warning: RAY_AUTH_TOKEN is not written into the "
              << (cron ? "cron entry" : "unit")
              << "; pass --token-file (or set RAY_AUTH_TOKEN_PATH) so the watchdog can "
                 "authenticate\n";
  }
  return OkStatus();
}

// The command the unit or cron entry runs: this binary by its absolute path, with the options.
Result<ServiceCommand> ServiceCommandLine(const WatchdogCli& c, const std::string& interval,
                                          bool cron) {
  std::error_code ec;
  fs::path self = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return Status(Code::kInternal, "cannot find this stagekit binary: " + ec.message());
  ServiceCommand command;
  command.argv = {self.string(), "watchdog", KindName(c.kind)};
  if (c.kind == Kind::kGpu) {
    std::ostringstream below;
    below << c.below;
    command.Add("--below", below.str());
  }
  command.Add("--for", c.window);
  command.Add("--interval", interval);
  command.Add("--then", c.action);
  if (!c.probe.empty()) command.Add("--probe", c.probe);
  command.Add("--probe-timeout", c.probe_timeout);
  command.Add("--action-timeout", c.action_timeout);
  if (const char* path = std::getenv("PATH"); path != nullptr && *path) {
    command.env.push_back(std::string("PATH=") + path);
  }
  if (c.kind == Kind::kHead && c.probe.empty()) {
    if (Status s = AddHeadSource(c, cron, command); !s.ok()) return s;
  }
  if (cron) {
    command.argv.push_back("--once");
    command.Add("--state", "/var/lib/stagekit/" + c.name + ".state");
    command.Add("--log",
                c.log.empty() ? "/var/log/" + c.name + ".log" : fs::absolute(c.log, ec).string());
  } else if (!c.log.empty()) {
    command.Add("--log", fs::absolute(c.log, ec).string());
  }
  if (c.keep_going && !cron) command.argv.push_back("--keep-going");
  return command;
}

// A unit's ExecStart= and a cron entry are one line each: a newline in
// --then (or any value) would end the command there and start a line of the
// file's own, e.g. a second cron entry running as root. Refused, as is every
// other control byte.
Status CheckOneLine(const ServiceCommand& command, bool cron) {
  auto control = [](const std::string& v) {
    return std::any_of(v.begin(), v.end(), [](char ch) {
      const auto u = static_cast<unsigned char>(ch);
      return u < 0x20 || u == 0x7f;
    });
  };
  for (std::size_t i = 0; i < command.argv.size(); ++i) {
    if (!control(command.argv[i])) continue;
    const std::string flag =
        i > 0 && command.argv[i - 1].rfind("--", 0) == 0 ? command.argv[i - 1] : "an argument";
    return Status(Code::kUsage, flag + " contains a newline or another control character, which " +
                                    (cron ? "would break the cron entry" : "would break the unit") +
                                    "; put a multi-line action in a script and pass its path");
  }
  for (const std::string& e : command.env) {
    if (control(e)) {
      return Status(Code::kUsage, "the environment variable " + e.substr(0, e.find('=')) +
                                      " contains a newline or another control character; "
                                      "unset it or fix it before installing");
    }
  }
  return OkStatus();
}

// Prints the file and the commands that installing would write and run (--dry-run).
void PrintPlan(const operate::InstallPlan& plan) {
  std::cout << "# " << plan.path << "\n" << plan.content;
  for (const auto& cmd : plan.then) {
    std::string line;
    for (const std::string& a : cmd) line += (line.empty() ? "" : " ") + util::ShellQuote(a);
    std::cout << "# then: " << line << "\n";
  }
}

// Writes the unit or cron file, then runs the commands that follow it (systemctl).
Status ApplyPlan(const operate::InstallPlan& plan) {
  std::error_code ec;
  fs::create_directories(fs::path(plan.path).parent_path(), ec);
  if (Status s = util::WriteFileAtomically(plan.path, plan.content); !s.ok()) {
    return Status(s.code(), s.message() + " (installing needs root; --dry-run shows the file)");
  }
  std::cerr << "stagekit: wrote " << plan.path << "\n";
  for (const auto& cmd : plan.then) {
    util::ChildSpec spec;
    spec.argv = cmd;
    spec.timeout = std::chrono::minutes(2);
    spec.cancelled = util::Interrupted;
    util::ChildResult r = util::RunChild(spec);
    std::string line;
    for (const std::string& a : cmd) line += (line.empty() ? "" : " ") + a;
    if (!r.spawn_status.ok() || !r.exited || r.exit_code != 0) {
      return Status(
          util::kOperationFailed,
          "`" + line + "` failed: " +
              (r.spawn_status.ok() ? util::Tail(r.err + r.out, 1000) : r.spawn_status.message()) +
              "\n  the unit is written; run it yourself once systemd is reachable");
    }
    std::cerr << "stagekit: ran " << line << "\n";
  }
  return OkStatus();
}

Status Install(WatchdogCli c) {
  if (Status s = CheckTargetAndName(c); !s.ok()) return s;
  const bool cron = c.as == "cron";
  std::string interval;
  const Result<int> minutes = CheckInstallDurations(c, cron, interval);
  if (!minutes.ok()) return minutes.status();
  const Result<ServiceCommand> command = ServiceCommandLine(c, interval, cron);
  if (!command.ok()) return command.status();
  if (Status s = CheckOneLine(*command, cron); !s.ok()) return s;
  operate::InstallPlan plan =
      cron ? operate::CronPlan(c.name, command->argv, *minutes, c.cron_dir, command->env)
           : operate::SystemdPlan(c.name, command->argv, c.unit_dir, command->env);
  if (c.no_enable) plan.then.clear();
  if (c.dry_run) {
    PrintPlan(plan);
    return OkStatus();
  }
  return ApplyPlan(plan);
}

}  // namespace

void SetWatchdogCommand(CLI::App& app, Action& action) {
  CLI::App* wd = app.add_subcommand(
      "watchdog", "Cost backstops: act when GPUs or the Ray cluster stay idle; install them");
  wd->require_subcommand(1);
  for (Kind kind : {Kind::kGpu, Kind::kHead}) {
    auto cmd = std::make_shared<WatchdogCli>();
    cmd->kind = kind;
    CLI::App* sub = wd->add_subcommand(KindName(kind), kind == Kind::kGpu
                                                           ? "Act when every GPU stays idle"
                                                           : "Act when the Ray cluster stays idle");
    sub->footer(kind == Kind::kGpu ? kGpuHelp : kHeadHelp);
    AddCommon(sub, *cmd, false);
    sub->callback([cmd, &action] { action = [cmd] { return Run(*cmd); }; });
  }
  CLI::App* install =
      wd->add_subcommand("install", "Install a watchdog as a systemd service or a cron entry");
  install->footer(kInstallHelp);
  install->require_subcommand(1);
  for (Kind kind : {Kind::kGpu, Kind::kHead}) {
    auto cmd = std::make_shared<WatchdogCli>();
    cmd->kind = kind;
    CLI::App* sub = install->add_subcommand(
        KindName(kind), std::string("Install `stagekit watchdog ") + KindName(kind) + "`");
    sub->footer(kInstallHelp);
    AddCommon(sub, *cmd, true);
    sub->add_option("--as", cmd->as, "systemd (a service, Restart=always) or cron (--once runs)")
        ->check(CLI::IsMember({"systemd", "cron"}))
        ->required();
    sub->add_option("--name", cmd->name,
                    std::string("Unit / cron file name (default stagekit-") + KindName(kind) + ")");
    sub->add_option("--unit-dir", cmd->unit_dir, "Where the service goes (/etc/systemd/system)")
        ->type_name("DIR");
    sub->add_option("--cron-dir", cmd->cron_dir, "Where the cron file goes (/etc/cron.d)")
        ->type_name("DIR");
    sub->add_flag("--dry-run", cmd->dry_run, "Print the files and commands; change nothing");
    sub->add_flag("--no-enable", cmd->no_enable,
                  "Write the service without running systemctl daemon-reload / enable --now");
    sub->callback([cmd, &action] { action = [cmd] { return Install(*cmd); }; });
  }
}

}  // namespace stagekit::cli
