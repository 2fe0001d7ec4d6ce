// `stagekit watchdog`: the probe parsers, and the CLI driven by probes the
// test controls (scripts that print numbers, fail, or hang). Assertions are on
// the order and count of logged samples, never on tight wall times.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

#include <chrono>
#include <filesystem>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "operate/watchdog.h"
#include "unit/test_util.h"
#include "util/process.h"

namespace stagekit::operate {
using namespace ::stagekit::util;  // NOLINT(google-build-using-namespace): helpers under test

namespace {

namespace fs = std::filesystem;
using stagekit::testing::CommandResult;
using stagekit::testing::ReadFile;
using stagekit::testing::RunCli;
using stagekit::testing::RunCommand;
using stagekit::testing::Show;
using stagekit::testing::TempDir;
using stagekit::testing::WriteFile;

// ---- parsers ----

TEST(GpuUtilization, IdleOnlyWhenEveryGpuIsBelow) {
  Sample s = ParseGpuUtilization("3\n0\n", 5);
  EXPECT_EQ(s.verdict, Verdict::kIdle);
  EXPECT_EQ(s.value, "3,0");
  EXPECT_EQ(ParseGpuUtilization("3\n5\n", 5).verdict, Verdict::kBusy);  // 5 is not below 5
  EXPECT_EQ(ParseGpuUtilization("97\n", 5).verdict, Verdict::kBusy);
  EXPECT_EQ(ParseGpuUtilization(" 4 %\n", 5).verdict, Verdict::kIdle);
}

TEST(GpuUtilization, NonsenseIsUnknown) {
  EXPECT_EQ(ParseGpuUtilization("", 5).verdict, Verdict::kUnknown);
  EXPECT_EQ(ParseGpuUtilization("\n\n", 5).verdict, Verdict::kUnknown);
  EXPECT_EQ(ParseGpuUtilization("0\n[N/A]\n", 5).verdict, Verdict::kUnknown);
  EXPECT_EQ(ParseGpuUtilization("NVIDIA-SMI has failed\n", 5).verdict, Verdict::kUnknown);
  EXPECT_EQ(ParseGpuUtilization("-1\n", 5).verdict, Verdict::kUnknown);
  EXPECT_EQ(ParseGpuUtilization("150\n", 5).verdict, Verdict::kUnknown);
}

TEST(HeadProbe, WordsAndCounts) {
  EXPECT_EQ(ParseHeadProbe("idle\n").verdict, Verdict::kIdle);
  EXPECT_EQ(ParseHeadProbe("\n BUSY \n").verdict, Verdict::kBusy);
  EXPECT_EQ(ParseHeadProbe("0\n").verdict, Verdict::kIdle);
  EXPECT_EQ(ParseHeadProbe("3\n").verdict, Verdict::kBusy);
  EXPECT_EQ(ParseHeadProbe("").verdict, Verdict::kUnknown);
  EXPECT_EQ(ParseHeadProbe("-1\n").verdict, Verdict::kUnknown);
  EXPECT_EQ(ParseHeadProbe("maybe\n").verdict, Verdict::kUnknown);
}

// The layout of `ray status` in Ray 2.60 (autoscaler/v2/utils.py).
std::string RayStatus(const std::string& usage, const std::string& demands) {
  return "======== Autoscaler status: 2025-01-01 00:00:00.000000 ========\n"
         "Node status\n"
         "---------------------------------------------------------------\n"
         "Active:\n 1 node_0123\nIdle:\n (no idle nodes)\nPending:\n (no pending nodes)\n"
         "Recent failures:\n (no failures)\n\n"
         "Resources\n"
         "---------------------------------------------------------------\n"
         "Total Usage:\n" +
         usage +
         "\nFrom request_resources:\n (none)\n"
         "Pending Demands:\n" +
         demands + "\n";
}

TEST(RayStatusProbe, IdleBusyAndUnknown) {
  const std::string idle_usage =
      " 0.0/2.0 CPU\n 0.0/1.0 GPU\n 0B/4.47GiB memory\n 12.0MiB/2.24GiB object_store_memory\n";
  EXPECT_EQ(ParseRayStatus(RayStatus(idle_usage, " (no resource demands)")).verdict,
            Verdict::kIdle);
  EXPECT_EQ(
      ParseRayStatus(RayStatus(" 1.0/2.0 CPU\n 0B/4.47GiB memory\n", " (no resource demands)"))
          .verdict,
      Verdict::kBusy);
  EXPECT_EQ(ParseRayStatus(RayStatus(" 0.0/2.0 CPU\n 0.0/1.0 vm:g4dn.xlarge\n",
                                     " {'vm:g4dn.xlarge': 1.0}: 1+ pending tasks/actors"))
                .verdict,
            Verdict::kBusy);
  EXPECT_EQ(
      ParseRayStatus(RayStatus(" 0.0/2.0 CPU\n 1.0/1.0 vm:g4dn.xlarge\n", " (no resource demands)"))
          .verdict,
      Verdict::kBusy);
  EXPECT_EQ(ParseRayStatus("Could not find any running Ray instance.\n").verdict,
            Verdict::kUnknown);
}

TEST(Window, SamplesCoverTheWholeWindow) {
  WatchdogOptions o;
  o.window = std::chrono::milliseconds(300);
  o.interval = std::chrono::milliseconds(50);
  EXPECT_EQ(SamplesNeeded(o), 7);
  o.window = std::chrono::minutes(10);
  o.interval = std::chrono::seconds(30);
  EXPECT_EQ(SamplesNeeded(o), 21);
  o.window = std::chrono::milliseconds(120);
  o.interval = std::chrono::milliseconds(50);
  EXPECT_EQ(SamplesNeeded(o), 4);
}

TEST(SystemdQuoting, SpecifiersVariablesAndQuotes) {
  EXPECT_EQ(SystemdQuote("plain"), "\"plain\"");
  EXPECT_EQ(SystemdQuote("echo \"50%\" $HOME \\"), "\"echo \\\"50%%\\\" $$HOME \\\\\"");
}

// ---- the command line, with probes the test controls ----

// A probe script whose answer depends on how often it has been called:
// `body` sees the call number (1, 2, ...) in $n.
fs::path CountingProbe(const TempDir& dir, const std::string& name, const std::string& body) {
  fs::path script = dir / name;
  fs::path counter = dir / (name + ".count");
  WriteFile(script, "#!/bin/sh\nn=$(cat '" + counter.string() + "' 2>/dev/null || echo 0)\n" +
                        "n=$((n + 1))\necho $n > '" + counter.string() + "'\n" + body + "\n");
  ::chmod(script.c_str(), 0755);
  return script;
}

std::vector<std::string> Lines(const std::string& text, const std::string& containing = "") {
  std::vector<std::string> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.find(containing) != std::string::npos) out.push_back(line);
  }
  return out;
}

bool Has(const std::string& line, const std::string& what) {
  return line.find(what) != std::string::npos;
}

// Runs the CLI with `env` (NAME=VALUE) added to its environment.
CommandResult RunEnv(const std::vector<std::string>& env, const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"/usr/bin/env"};
  argv.insert(argv.end(), env.begin(), env.end());
  argv.push_back(STAGEKIT_CLI);
  argv.insert(argv.end(), args.begin(), args.end());
  return RunCommand(argv);
}

// Runs the CLI and sends it SIGINT after `seconds`, as Ctrl-C would.
CommandResult RunCliFor(int seconds, const std::vector<std::string>& args,
                        const std::vector<std::string>& env = {}) {
  // --foreground: the signal goes to stagekit alone. Without it timeout(1)
  // also signals its process group, a second SIGINT that may land after the
  // first was handled and take the default action (main.cc's SA_RESETHAND).
  std::vector<std::string> argv = {
      "/usr/bin/timeout",      "--foreground", "--preserve-status", "-s", "INT", "-k", "30",
      std::to_string(seconds), "/usr/bin/env"};
  argv.insert(argv.end(), env.begin(), env.end());
  argv.push_back(STAGEKIT_CLI);
  argv.insert(argv.end(), args.begin(), args.end());
  return RunCommand(argv);
}

TEST(WatchdogCli, FiresOnceAfterAFullWindowAndReportsTheActionsExitCode) {
  TempDir dir;
  fs::path probe = CountingProbe(dir, "gpu.sh", "printf '1\\n2\\n'");
  fs::path log = dir / "watchdog.log";
  fs::path marker = dir / "fired";
  CommandResult r = RunCli({"watchdog", "gpu-idle", "--below", "5", "--for", "300ms", "--interval",
                            "50ms", "--probe", probe.string(), "--log", log.string(), "--then",
                            "echo fired >> '" + marker.string() + "'; exit 3"});
  ASSERT_EQ(r.exit_code, 3) << Show(r);
  EXPECT_TRUE(Has(r.err, "the action exited 3")) << Show(r);
  EXPECT_EQ(ReadFile(marker), "fired\n");  // exactly once
  std::string text = ReadFile(log);
  std::vector<std::string> samples = Lines(text, " sample=");
  // 300ms at 50ms: seven idle samples (both ends of the window), not one fewer.
  ASSERT_EQ(samples.size(), 7u) << text;
  for (std::size_t i = 0; i < samples.size(); ++i) {
    EXPECT_TRUE(
        Has(samples[i], "value=\"1,2\" verdict=idle streak=" + std::to_string(i + 1) + "/7"))
        << samples[i];
  }
  std::vector<std::string> all = Lines(text);
  ASSERT_GE(all.size(), 3u);
  EXPECT_TRUE(Has(all[all.size() - 2], "fire:")) << text;
  EXPECT_TRUE(Has(all.back(), "action exit=3")) << text;
  EXPECT_EQ(Lines(text, "fire:").size(), 1u) << text;
}

TEST(WatchdogCli, ABusySampleStartsTheWindowOver) {
  TempDir dir;
  // Busy on the 4th call (one GPU at 50%), idle otherwise.
  fs::path probe = CountingProbe(
      dir, "gpu.sh", "if [ $n -eq 4 ]; then printf '0\\n50\\n'; else printf '0\\n0\\n'; fi");
  fs::path marker = dir / "fired";
  CommandResult r =
      RunCli({"watchdog", "gpu-idle", "--below", "5", "--for", "300ms", "--interval", "50ms",
              "--probe", probe.string(), "--then", "echo fired >> '" + marker.string() + "'"});
  ASSERT_EQ(r.exit_code, 0) << Show(r);  // stderr is the log without --log
  EXPECT_EQ(ReadFile(marker), "fired\n");
  std::vector<std::string> samples = Lines(r.err, " sample=");
  // Samples 5..11 are the seven idle ones after the busy 4th.
  ASSERT_EQ(samples.size(), 11u) << r.err;
  EXPECT_TRUE(Has(samples[2], "verdict=idle streak=3/7")) << samples[2];
  EXPECT_TRUE(Has(samples[3], "value=\"0,50\" verdict=busy streak=0/7")) << samples[3];
  EXPECT_TRUE(Has(samples[4], "verdict=idle streak=1/7")) << samples[4];
  EXPECT_TRUE(Has(samples[10], "verdict=idle streak=7/7")) << samples[10];
  std::vector<std::string> all = Lines(r.err);
  EXPECT_TRUE(Has(all[all.size() - 2], "fire:")) << r.err;
  EXPECT_TRUE(Has(all.back(), "action exit=0")) << r.err;
}

TEST(WatchdogCli, AFailingProbeIsUnknownAndNeverFires) {
  TempDir dir;
  // Idle twice, then a failure, over and over: never the five idle samples in
  // a row that 200ms at 50ms needs.
  fs::path probe = CountingProbe(
      dir, "gpu.sh", "if [ $((n % 3)) -eq 0 ]; then echo 'driver gone' >&2; exit 1; fi\necho 0");
  fs::path marker = dir / "fired";
  CommandResult r =
      RunCliFor(2, {"watchdog", "gpu-idle", "--for", "200ms", "--interval", "50ms", "--probe",
                    probe.string(), "--then", "echo fired >> '" + marker.string() + "'"});
  EXPECT_EQ(r.exit_code, 130) << Show(r);  // stopped by SIGINT, promptly
  EXPECT_FALSE(fs::exists(marker)) << Show(r);
  EXPECT_TRUE(Lines(r.err, "fire:").empty()) << r.err;
  std::vector<std::string> unknown = Lines(r.err, "verdict=unknown");
  ASSERT_GE(unknown.size(), 2u) << r.err;
  EXPECT_TRUE(Has(unknown[0], "probe exit 1: driver gone")) << unknown[0];
  EXPECT_TRUE(Has(unknown[0], "streak=0/5")) << unknown[0];
  EXPECT_TRUE(Has(r.err, "stop: interrupted")) << r.err;
  for (const std::string& line : Lines(r.err, " sample=")) {
    EXPECT_FALSE(Has(line, "streak=3/5")) << line;
  }
}

TEST(WatchdogCli, AHangingProbeTimesOutAsUnknown) {
  TempDir dir;
  // Hangs on every call after the first: the streak never gets past 1.
  fs::path probe = CountingProbe(dir, "gpu.sh", "if [ $n -gt 1 ]; then sleep 60; fi\necho 0");
  fs::path marker = dir / "fired";
  auto start = std::chrono::steady_clock::now();
  CommandResult r = RunCliFor(
      4, {"watchdog", "gpu-idle", "--for", "100ms", "--interval", "50ms", "--probe-timeout",
          "300ms", "--probe", probe.string(), "--then", "echo fired >> '" + marker.string() + "'"});
  auto took = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(r.exit_code, 130) << Show(r);
  EXPECT_FALSE(fs::exists(marker)) << Show(r);
  std::vector<std::string> samples = Lines(r.err, " sample=");
  ASSERT_GE(samples.size(), 2u) << r.err;
  EXPECT_TRUE(Has(samples[0], "verdict=idle streak=1/3")) << samples[0];
  EXPECT_TRUE(Has(samples[1], "verdict=unknown streak=0/3")) << samples[1];
  EXPECT_TRUE(Has(samples[1], "probe timed out after 300ms")) << samples[1];
  // The hung probes were killed: nothing waited out their `sleep 60`.
  EXPECT_LT(took, std::chrono::seconds(30));
}

TEST(WatchdogCli, NoNvidiaSmiIsUnknownNotIdle) {
  TempDir dir;
  fs::path marker = dir / "fired";
  CommandResult r = RunCliFor(2,
                              {"watchdog", "gpu-idle", "--for", "100ms", "--interval", "50ms",
                               "--then", "echo fired >> '" + marker.string() + "'"},
                              {"PATH=" + (dir / "empty").string()});
  EXPECT_EQ(r.exit_code, 130) << Show(r);
  EXPECT_FALSE(fs::exists(marker));
  std::vector<std::string> samples = Lines(r.err, " sample=");
  ASSERT_GE(samples.size(), 1u) << r.err;
  EXPECT_TRUE(Has(samples[0], "verdict=unknown")) << samples[0];
  EXPECT_TRUE(Has(samples[0], "nvidia-smi")) << samples[0];
}

TEST(WatchdogCli, KeepGoingActsAgainAfterAnotherFullWindow) {
  TempDir dir;
  fs::path probe = CountingProbe(dir, "gpu.sh", "echo 0");
  fs::path marker = dir / "fired";
  fs::path log = dir / "log";
  CommandResult r = RunCliFor(4, {"watchdog", "gpu-idle", "--for", "100ms", "--interval", "20ms",
                                  "--keep-going", "--probe", probe.string(), "--log", log.string(),
                                  "--then", "echo fired >> '" + marker.string() + "'"});
  EXPECT_EQ(r.exit_code, 130) << Show(r);
  std::string text = ReadFile(log);
  std::vector<std::string> fires = Lines(ReadFile(marker), "fired");
  ASSERT_GE(fires.size(), 2u) << text;
  // The SIGINT may land while an action runs (it is stopped then): every
  // finished action was logged, and nothing ran that was not logged.
  std::size_t finished = Lines(text, "action exit=0").size();
  EXPECT_GE(finished, 2u) << text;
  EXPECT_LE(finished, fires.size()) << text;
  EXPECT_LE(fires.size(), Lines(text, "fire:").size()) << text;
  EXPECT_LE(Lines(text, "fire:").size(), finished + 1) << text;
  // Every action came after a full streak of 6 idle samples of its own.
  std::vector<std::string> all = Lines(text);
  for (std::size_t i = 0; i < all.size(); ++i) {
    if (!Has(all[i], "fire:")) continue;
    ASSERT_GE(i, 1u);
    EXPECT_TRUE(Has(all[i - 1], "streak=6/6")) << all[i - 1];
  }
  EXPECT_TRUE(Has(all.back(), "interrupted")) << text;
}

TEST(WatchdogCli, HeadIdleWithAProbe) {
  TempDir dir;
  // busy, a count of 2, nonsense, then idle / 0 alternating.
  fs::path probe =
      CountingProbe(dir, "head.sh",
                    "case $n in 1) echo busy;; 2) echo 2;; 3) echo '{}';; "
                    "*) if [ $((n % 2)) -eq 0 ]; then echo idle; else echo 0; fi;; esac");
  fs::path marker = dir / "fired";
  CommandResult r =
      RunCli({"watchdog", "head-idle", "--for", "150ms", "--interval", "50ms", "--probe",
              probe.string(), "--then", "echo fired >> '" + marker.string() + "'; exit 7"});
  ASSERT_EQ(r.exit_code, 7) << Show(r);
  EXPECT_EQ(ReadFile(marker), "fired\n");
  std::vector<std::string> samples = Lines(r.err, " sample=");
  ASSERT_EQ(samples.size(), 7u) << r.err;  // 3 not idle, then 4 idle (150ms at 50ms)
  EXPECT_TRUE(Has(samples[0], "value=\"busy\" verdict=busy")) << samples[0];
  EXPECT_TRUE(Has(samples[1], "value=\"count=2\" verdict=busy")) << samples[1];
  EXPECT_TRUE(Has(samples[2], "verdict=unknown")) << samples[2];
  EXPECT_TRUE(Has(samples[4], "value=\"count=0\" verdict=idle streak=2/4")) << samples[4];
  EXPECT_TRUE(Has(samples[6], "streak=4/4")) << samples[6];
}

TEST(WatchdogCli, HeadIdleUnreachableDashboardIsUnknown) {
  TempDir dir;
  fs::path marker = dir / "fired";
  int port = util::FreePorts(1).at(0);  // nothing listens there
  CommandResult r = RunCliFor(2,
                              {"watchdog", "head-idle", "--for", "100ms", "--interval", "50ms",
                               "--address", "http://127.0.0.1:" + std::to_string(port), "--then",
                               "echo fired >> '" + marker.string() + "'"},
                              {"RAY_AUTH_TOKEN="});
  EXPECT_EQ(r.exit_code, 130) << Show(r);
  EXPECT_FALSE(fs::exists(marker));
  std::vector<std::string> samples = Lines(r.err, " sample=");
  ASSERT_GE(samples.size(), 2u) << r.err;
  for (const std::string& s : samples) {
    EXPECT_TRUE(Has(s, "verdict=unknown")) << s;
    EXPECT_TRUE(Has(s, "cannot reach the Ray dashboard")) << s;
  }
}

// A stand-in dashboard: answers the two endpoints head-idle asks, from files
// the test rewrites, and records the query strings.
constexpr const char* kStubDashboard = R"PY(
import http.server, os, sys
root = sys.argv[1]
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        with open(os.path.join(root, "requests"), "a") as f: f.write(self.path + "\n")
        name = "jobs.json" if self.path.startswith("/api/jobs/") else "tasks.json"
        if self.headers.get("Authorization") != "Bearer sekrit":
            self.send_response(401); self.end_headers(); return
        body = open(os.path.join(root, name), "rb").read()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
open(os.path.join(root, "port.tmp"), "w").write(str(s.server_address[1]))
os.rename(os.path.join(root, "port.tmp"), os.path.join(root, "port"))
s.serve_forever()
)PY";

std::string TasksAnswer(int n) {
  return R"({"result": true, "msg": "", "data": {"result": {"total": )" + std::to_string(n + 5) +
         R"(, "num_after_truncation": )" + std::to_string(n + 5) + R"(, "num_filtered": )" +
         std::to_string(n) +
         R"(, "result": [], "partial_failure_warning": "", "warnings": null}}})";
}

TEST(WatchdogCli, HeadIdleAgainstAStubDashboard) {
  TempDir dir;
  WriteFile(dir / "stub.py", kStubDashboard);
  WriteFile(dir / "jobs.json",
            R"([{"submission_id": "a", "type": "SUBMISSION", "status": "SUCCEEDED"},)"
            R"( {"submission_id": "b", "type": "SUBMISSION", "status": "RUNNING"},)"
            R"( {"job_id": "03000000", "type": "DRIVER", "status": "RUNNING"}])");
  WriteFile(dir / "tasks.json", TasksAnswer(0));
  util::Spawned server = [&] {
    util::SpawnSpec spec;
    spec.argv = {"python3", (dir / "stub.py").string(), dir.path().string()};
    spec.new_session = true;
    auto s = util::Spawn(spec);
    if (!s.ok()) throw std::runtime_error(s.status().message());
    return *s;
  }();
  struct Stop {
    pid_t pid;
    ~Stop() {
      ::kill(pid, SIGKILL);
      util::WaitFor(pid, std::chrono::seconds(10));
    }
  } stop{server.pid};
  for (int i = 0; i < 600 && !fs::exists(dir / "port"); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_TRUE(fs::exists(dir / "port")) << "the stub dashboard did not start";
  const std::string address = "http://127.0.0.1:" + ReadFile(dir / "port");
  fs::path marker = dir / "fired";
  WriteFile(dir / "token", "sekrit\n");
  std::vector<std::string> args = {
      "watchdog", "head-idle", "--for", "100ms",  "--interval",
      "50ms",     "--address", address, "--then", "echo fired >> '" + marker.string() + "'"};

  // A running job: busy, whatever the tasks say. (--once keeps it to one sample.)
  std::vector<std::string> once = args;
  once.insert(once.end(), {"--once", "--state", (dir / "state").string()});
  CommandResult r =
      RunEnv({"RAY_AUTH_TOKEN_PATH=" + (dir / "token").string(), "RAY_AUTH_TOKEN="}, once);
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  EXPECT_TRUE(Has(r.err, "value=\"jobs=1 drivers=1 tasks=0\" verdict=busy")) << r.err;

  // No job running, three tasks not ended: busy.
  // (A connected driver is not work; its tasks are.)
  WriteFile(dir / "jobs.json",
            R"([{"submission_id": "a", "type": "SUBMISSION", "status": "SUCCEEDED"},)"
            R"( {"job_id": "03000000", "type": "DRIVER", "status": "RUNNING"}])");
  WriteFile(dir / "tasks.json", TasksAnswer(3));
  r = RunEnv({"RAY_AUTH_TOKEN=sekrit"}, once);
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  EXPECT_TRUE(Has(r.err, "value=\"jobs=0 drivers=1 tasks=3\" verdict=busy")) << r.err;

  // Wrong token: unknown (401), never idle.
  WriteFile(dir / "tasks.json", TasksAnswer(0));
  r = RunEnv({"RAY_AUTH_TOKEN=wrong"}, once);
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  EXPECT_TRUE(Has(r.err, "verdict=unknown")) << r.err;
  EXPECT_TRUE(Has(r.err, "401")) << r.err;
  EXPECT_FALSE(fs::exists(marker));

  // --drivers-busy: the connected driver alone keeps it busy.
  std::vector<std::string> strict = once;
  strict.push_back("--drivers-busy");
  r = RunEnv({"RAY_AUTH_TOKEN=sekrit"}, strict);
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  EXPECT_TRUE(Has(r.err, "value=\"jobs=0 drivers=1 tasks=0\" verdict=busy")) << r.err;

  // All quiet: fires after a full window.
  r = RunEnv({"RAY_AUTH_TOKEN=sekrit"}, args);
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  EXPECT_EQ(ReadFile(marker), "fired\n");
  EXPECT_EQ(Lines(r.err, "value=\"jobs=0 drivers=1 tasks=0\" verdict=idle").size(), 3u) << r.err;
  // The state API query is the one Ray 2.60's dashboard understands.
  std::string requests = ReadFile(dir / "requests");
  EXPECT_TRUE(Has(requests,
                  "/api/v0/tasks?filter_keys=state&filter_predicates=%21%3D&filter_values=FINISHED"
                  "&filter_keys=state&filter_predicates=%21%3D&filter_values=FAILED&limit=100"))
      << requests;
  EXPECT_TRUE(Has(requests, "/api/jobs/\n")) << requests;
}

TEST(WatchdogCli, OnceKeepsTheStreakInAStateFile) {
  TempDir dir;
  fs::path probe = CountingProbe(dir, "gpu.sh", "if [ $n -eq 2 ]; then echo 90; else echo 0; fi");
  fs::path marker = dir / "fired";
  fs::path state = dir / "sub" / "state.json";
  std::vector<std::string> args = {"watchdog",
                                   "gpu-idle",
                                   "--once",
                                   "--state",
                                   state.string(),
                                   "--for",
                                   "100ms",
                                   "--interval",
                                   "50ms",
                                   "--probe",
                                   probe.string(),
                                   "--then",
                                   "echo fired >> '" + marker.string() + "'; exit 4"};
  std::vector<int> codes;
  std::string log;
  for (int i = 0; i < 5; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(60));
    CommandResult r = RunCli(args);
    codes.push_back(r.exit_code);
    log += r.err;
  }
  // 1 idle, 2 busy (reset), 3 4 5 idle: the 5th completes the 3-sample window.
  EXPECT_EQ(codes, (std::vector<int>{0, 0, 0, 0, 4})) << log;
  EXPECT_EQ(ReadFile(marker), "fired\n");
  EXPECT_TRUE(Has(log, "sample=2 value=\"90\" verdict=busy streak=0/3")) << log;
  EXPECT_TRUE(Has(log, "sample=5 value=\"0\" verdict=idle streak=3/3")) << log;
  // Acting reset the streak.
  CommandResult r = RunCli(args);
  EXPECT_EQ(r.exit_code, 0) << Show(r);
  EXPECT_TRUE(Has(r.err, "streak=1/3")) << r.err;
}

TEST(WatchdogCli, OnceStartsOverAfterAGap) {
  TempDir dir;
  fs::path state = dir / "state.json";
  // A streak two samples long, whose last sample was an hour ago.
  auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
                 std::chrono::system_clock::now().time_since_epoch())
                 .count();
  WriteFile(state, R"({"watchdog": "gpu-idle", "samples": 2, "streak_samples": 2, )"
                   R"("streak_start_ms": )" +
                       std::to_string(now - 3600000 - 60000) + R"(, "last_sample_ms": )" +
                       std::to_string(now - 3600000) + "}");
  CommandResult r = RunCli({"watchdog", "gpu-idle", "--once", "--state", state.string(), "--for",
                            "1m", "--interval", "1m", "--probe", "echo 0", "--then", "true"});
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  EXPECT_TRUE(Has(r.err, "gap: last sample")) << r.err;
  EXPECT_TRUE(Has(r.err, "sample=3 value=\"0\" verdict=idle streak=1/2")) << r.err;
}

TEST(WatchdogCli, UsageErrors) {
  EXPECT_EQ(RunCli({"watchdog", "gpu-idle", "--for", "10m"}).exit_code, 2);  // no --then
  EXPECT_EQ(RunCli({"watchdog", "gpu-idle", "--for", "soon", "--then", "true"}).exit_code, 2);
  EXPECT_EQ(RunCli({"watchdog", "gpu-idle", "--for", "1m", "--then", "true", "--once"}).exit_code,
            2);
  EXPECT_EQ(
      RunCli({"watchdog", "gpu-idle", "--below", "200", "--for", "1m", "--then", "true"}).exit_code,
      2);
  EXPECT_EQ(RunCli({"watchdog", "head-idle", "--for", "1m", "--then", "true", "--address",
                    "127.0.0.1:6379"})
                .exit_code,
            2);
  CommandResult help = RunCli({"watchdog", "gpu-idle", "--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_TRUE(Has(help.out, "unknown")) << help.out;
}

// ---- install ----

std::string SelfCli() { return fs::canonical(STAGEKIT_CLI).string(); }

TEST(WatchdogInstall, SystemdDryRun) {
  CommandResult r =
      RunCli({"watchdog", "install", "gpu-idle", "--below", "5", "--for", "10m", "--then",
              "logger \"idle 50%\" $HOSTNAME; shutdown -h now", "--as", "systemd", "--dry-run"});
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  EXPECT_TRUE(Has(r.out, "# /etc/systemd/system/stagekit-gpu-idle.service\n")) << r.out;
  EXPECT_TRUE(Has(r.out, "ExecStart=\"" + SelfCli() +
                             "\" \"watchdog\" \"gpu-idle\" \"--below\" \"5\" \"--for\" \"10m\" "
                             "\"--interval\" \"30s\" \"--then\" \"logger \\\"idle 50%%\\\" "
                             "$$HOSTNAME; shutdown -h now\""))
      << r.out;
  EXPECT_TRUE(Has(r.out, "Restart=always\n")) << r.out;
  EXPECT_TRUE(Has(r.out, "WantedBy=multi-user.target\n")) << r.out;
  EXPECT_TRUE(Has(r.out, "# then: systemctl enable --now stagekit-gpu-idle.service")) << r.out;
}

TEST(WatchdogInstall, CronDryRun) {
  CommandResult r =
      RunCli({"watchdog", "install", "head-idle", "--for", "2h", "--interval", "5m", "--address",
              "http://10.0.0.5:8265", "--then", "date +%s > /tmp/it's-idle", "--as", "cron",
              "--name", "head-wd", "--dry-run"});
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  EXPECT_TRUE(Has(r.out, "# /etc/cron.d/head-wd\n")) << r.out;
  EXPECT_TRUE(Has(r.out, "\n*/5 * * * * root " + SelfCli() +
                             " watchdog head-idle --for 2h --interval 5m --then 'date +\\%s > "
                             "/tmp/it'\\''s-idle' "))
      << r.out;
  EXPECT_TRUE(Has(r.out, " --address http://10.0.0.5:8265 ")) << r.out;
  EXPECT_TRUE(Has(r.out,
                  " --once --state /var/lib/stagekit/head-wd.state --log "
                  "/var/log/head-wd.log\n"))
      << r.out;
  EXPECT_TRUE(Has(r.out, "\nPATH=")) << r.out;
}

TEST(WatchdogInstall, WritesTheUnitAndRejectsBadValues) {
  TempDir dir;
  CommandResult r =
      RunCli({"watchdog", "install", "gpu-idle", "--for", "10m", "--then", "true", "--as",
              "systemd", "--unit-dir", dir.path().string(), "--no-enable", "--name", "gpu_wd"});
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  std::string unit = ReadFile(dir / "gpu_wd.service");
  EXPECT_TRUE(Has(unit, "ExecStart=\"" + SelfCli() + "\" \"watchdog\" \"gpu-idle\"")) << unit;
  // cron samples in whole minutes; names with dots are skipped by cron.
  EXPECT_EQ(RunCli({"watchdog", "install", "gpu-idle", "--for", "10m", "--then", "true",
                    "--interval", "30s", "--as", "cron", "--dry-run"})
                .exit_code,
            2);
  EXPECT_EQ(RunCli({"watchdog", "install", "gpu-idle", "--for", "10m", "--then", "true", "--as",
                    "cron", "--name", "a.b", "--dry-run"})
                .exit_code,
            2);
  EXPECT_EQ(RunCli({"watchdog", "install", "gpu-idle", "--for", "10m", "--then", "true", "--as",
                    "launchd", "--dry-run"})
                .exit_code,
            2);
}

// A newline in --then would end the cron command and start an entry of its
// own (running as root): refused, for systemd too, and nothing is written.
TEST(WatchdogInstall, ANewlineInAnyValueIsRefused) {
  TempDir dir;
  for (const char* as : {"cron", "systemd"}) {
    CommandResult r = RunCli({"watchdog", "install", "head-idle", "--for", "10m", "--then",
                              "echo hi\n* * * * * root touch /tmp/owned", "--as", as, "--cron-dir",
                              dir.path().string(), "--unit-dir", dir.path().string(), "--no-enable",
                              "--name", "wd"});
    EXPECT_EQ(r.exit_code, 2) << Show(r);
    EXPECT_TRUE(Has(r.err, "--then contains a newline")) << r.err;
  }
  EXPECT_TRUE(fs::is_empty(dir.path()));
  CommandResult tab = RunCli({"watchdog", "install", "gpu-idle", "--for", "10m", "--then", "true",
                              "--probe", "a\tb", "--as", "cron", "--dry-run"});
  EXPECT_EQ(tab.exit_code, 2) << Show(tab);
  EXPECT_TRUE(Has(tab.err, "--probe contains a newline or another control character")) << tab.err;
}

TEST(WatchdogInstall, AFailingSystemctlIsAnOperationFailure) {
  TempDir dir;
  fs::create_directories(dir / "bin");
  WriteFile(dir / "bin" / "systemctl",
            "#!/bin/sh\necho 'System has not been booted' >&2\nexit 1\n");
  ::chmod((dir / "bin" / "systemctl").c_str(), 0755);
  CommandResult r =
      RunCommand({"/usr/bin/env", "PATH=" + (dir / "bin").string() + ":/usr/bin:/bin", STAGEKIT_CLI,
                  "watchdog", "install", "gpu-idle", "--for", "10m", "--then", "true", "--as",
                  "systemd", "--unit-dir", dir.path().string(), "--name", "gpu_wd"});
  EXPECT_EQ(r.exit_code, 18) << Show(r);  // operation_failed, not a stage's failure
  EXPECT_TRUE(Has(r.err, "System has not been booted")) << Show(r);
  EXPECT_TRUE(fs::exists(dir / "gpu_wd.service")) << "the unit stays written";
}

}  // namespace
}  // namespace stagekit::operate
