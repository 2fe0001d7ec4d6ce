// stagekit submit PIPELINE: ship the pipeline, upload the package through the
// dashboard (once per content), submit a Ray job that runs it from the
// unpacked directory, and follow it; `stagekit jobs` works on submitted jobs.
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <iostream>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "cli.h"
#include "deploy/jobs.h"
#include "deploy/s3.h"
#include "deploy/secrets.h"
#include "operate/cost.h"
#include "stagekit/executor.h"
#include "stagekit/version.h"
#include "util/files.h"
#include "util/outcome.h"
#include "util/process.h"
#include "util/text.h"

namespace stagekit::cli {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

struct ClusterCli {
  std::string address;
  std::string token_file;
  void AddTo(CLI::App* cmd) {
    cmd->add_option("--address", address,
                    "The head's dashboard, http://HOST:8265 (default: $RAY_API_SERVER_ADDRESS, "
                    "an http:// $RAY_ADDRESS, else http://127.0.0.1:8265)");
    cmd->add_option("--token-file", token_file,
                    "File with the cluster's token (default: $RAY_AUTH_TOKEN, "
                    "$RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token)");
  }
  Result<std::unique_ptr<deploy::JobsClient>> Connect() const {
    auto url = deploy::DashboardAddress(address);
    if (!url.ok()) return url.status();
    auto token = deploy::AuthToken(token_file);
    if (!token.ok()) return token.status();
    return std::make_unique<deploy::JobsClient>(*url, *token);
  }
};

struct SubmitCommand {
  std::string pipeline;
  std::vector<std::string> run_args;
  LibraryOptions libs;
  ShipCli ship;
  ClusterCli cluster;
  std::string executor = "ray";
  std::vector<std::string> env;
  std::vector<std::string> allow_secret;
  double entrypoint_cpus = -1;
  double entrypoint_gpus = -1;
  std::string entrypoint_memory;
  std::vector<std::string> entrypoint_resources;
  std::string artifacts;
  std::string submission_id;
  std::string package_dir;
  std::string on_interrupt = "ask";
  bool no_wait = false;
  bool allow_ray_mismatch = false;
  bool json = false;
  CostCli cost;
};

// Sleeps up to `d`, waking early on Ctrl-C.
void SleepUnlessInterrupted(std::chrono::milliseconds d) {
  const auto until = Clock::now() + d;
  while (Clock::now() < until && !util::Interrupted()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

std::string NewSubmissionId(const std::string& pipeline) {
  std::time_t now = std::time(nullptr);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", std::gmtime(&now));
  std::random_device rd;
  char suffix[16];
  std::snprintf(suffix, sizeof suffix, "%04x", rd() & 0xffff);
  std::string name;
  for (char c : pipeline) name += std::isalnum(static_cast<unsigned char>(c)) ? c : '-';
  return "stagekit-" + name.substr(0, 40) + "-" + stamp + "-" + suffix;
}

fs::path DefaultPackageDir() { return util::UserCacheDir() / "packages"; }

std::string LastLines(const std::string& text, int lines) {
  size_t pos = text.size();
  while (pos > 0 && (text[pos - 1] == '\n')) --pos;
  for (int n = 0; pos > 0; --pos) {
    if (text[pos - 1] == '\n' && ++n == lines) break;
  }
  return text.substr(pos);
}

// The outcome of a job that ended, as a Status; the log tail when asked.
Status JobOutcome(const std::string& id, const Json& job, const std::string* log_tail) {
  const std::string status = job.value("status", "");
  if (status == "SUCCEEDED") return OkStatus();
  std::string message = job.contains("message") && job["message"].is_string()
                            ? FirstLine(job["message"].get<std::string>())
                            : "";
  std::string text = "job " + id + " " + (status == "STOPPED" ? "was stopped" : "failed");
  if (!message.empty()) text += ": " + message;
  if (log_tail != nullptr && !log_tail->empty()) {
    text += "\n--- last lines of its log ---\n" + *log_tail;
  }
  text += "\n(full log: stagekit jobs logs " + id + ")";
  return Status(util::kJobFailed, text);
}

// Follows a job to its end, printing its log as it grows. On Ctrl-C, asks
// (or does as --on-interrupt says) whether to stop the job or leave it running.
Status Follow(deploy::JobsClient& client, const std::string& id, const std::string& on_interrupt,
              bool print_logs) {
  std::size_t printed = 0;
  std::string last_status;
  for (;;) {
    if (util::Interrupted()) {
      std::string choice = on_interrupt;
      if (choice == "ask") {
        if (::isatty(STDIN_FILENO)) {
          std::cerr << "\nstagekit: stop job " << id << " on the cluster? [y/N] " << std::flush;
          std::string answer;
          std::getline(std::cin, answer);
          choice = (!answer.empty() && (answer[0] == 'y' || answer[0] == 'Y')) ? "stop" : "detach";
        } else {
          choice = "detach";
        }
      }
      if (choice == "stop") {
        auto stopped = client.Stop(id);
        if (!stopped.ok()) return stopped.status();
        for (int i = 0; i < 300; ++i) {  // Ray stops a job within seconds
          auto job = client.Job(id);
          if (job.ok() && deploy::IsTerminal(job->value("status", ""))) break;
          std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
        return Status(Code::kInterrupted, "stopped job " + id + " on the cluster");
      }
      return Status(Code::kInterrupted, "job " + id +
                                            " keeps running on the cluster; follow it with "
                                            "`stagekit jobs logs --follow " +
                                            id + "`, stop it with `stagekit jobs stop " + id + "`");
    }
    auto job = client.Job(id);
    if (!job.ok()) return job.status();
    const std::string status = job->value("status", "");
    if (status != last_status) {
      std::cerr << "stagekit: job " << id << " is " << status << "\n";
      last_status = status;
    }
    if (print_logs) {
      auto logs = client.Logs(id);
      if (logs.ok() && logs->size() > printed) {
        std::cout << logs->substr(printed) << std::flush;
        printed = logs->size();
      }
    }
    if (deploy::IsTerminal(status)) {
      std::string tail;
      if (!print_logs) {
        auto logs = client.Logs(id);
        if (logs.ok()) tail = LastLines(*logs, 20);
      }
      return JobOutcome(id, *job, print_logs ? nullptr : &tail);
    }
    SleepUnlessInterrupted(std::chrono::milliseconds(500));
  }
}

// What submit parses from the command line before any upload.
struct EntrypointChecks {
  std::map<std::string, std::string> env;
  Json resources = Json::object();
  std::uint64_t memory = 0;
};

// --env as NAME -> VALUE; kUsage for a bad NAME, and refuses what looks like a secret.
Result<std::map<std::string, std::string>> ParseEnv(const SubmitCommand& cmd) {
  std::map<std::string, std::string> env;
  for (const std::string& kv : cmd.env) {
    size_t eq = kv.find('=');
    std::string name = kv.substr(0, eq);
    if (eq == std::string::npos || name.empty() ||
        name.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_") !=
            std::string::npos ||
        std::isdigit(static_cast<unsigned char>(name[0]))) {
      return Status(Code::kUsage, "--env " + kv + ": write NAME=VALUE with NAME a variable name");
    }
    env[name] = kv.substr(eq + 1);
  }
  if (Status s = deploy::CheckEnvVars(env, {cmd.allow_secret.begin(), cmd.allow_secret.end()});
      !s.ok()) {
    return s;
  }
  return env;
}

// Everything that can be refused locally, refused before any upload; the parsed values.
Result<EntrypointChecks> CheckLocally(const SubmitCommand& cmd) {
  EntrypointChecks checks;
  auto env = ParseEnv(cmd);
  if (!env.ok()) return env.status();
  checks.env = *env;
  for (const std::string& kv : cmd.entrypoint_resources) {
    size_t eq = kv.find('=');
    char* end = nullptr;
    double amount = eq == std::string::npos ? -1 : std::strtod(kv.c_str() + eq + 1, &end);
    if (eq == std::string::npos || eq == 0 || amount < 0 || end == nullptr || *end != '\0') {
      return Status(Code::kUsage,
                    "--entrypoint-resource " + kv + ": write NAME=AMOUNT, e.g. vm:m5.large=1");
    }
    checks.resources[kv.substr(0, eq)] = amount;
  }
  if (!cmd.artifacts.empty()) {
    if (Status s = deploy::CheckS3Uri(cmd.artifacts); !s.ok()) return s;
  }
  if (!cmd.entrypoint_memory.empty()) {
    Result<std::uint64_t> memory = ParseBytes(cmd.entrypoint_memory);
    if (!memory.ok()) {
      return Status(Code::kUsage, "--entrypoint-memory: " + memory.status().message());
    }
    checks.memory = *memory;
  }
  return checks;
}

// Connects to the cluster's dashboard; with -e ray, refuses a cluster of another Ray release.
Result<std::unique_ptr<deploy::JobsClient>> ConnectChecked(const SubmitCommand& cmd) {
  auto client = cmd.cluster.Connect();
  if (!client.ok()) return client.status();
  auto version = (*client)->Version();
  if (!version.ok()) return version.status();
#ifdef STAGEKIT_RAY_VERSION
  const std::string cluster_ray = version->value("ray_version", "");
  if (cmd.executor == "ray" && cluster_ray != STAGEKIT_RAY_VERSION && !cmd.allow_ray_mismatch) {
    return Status(Code::kRayUnavailable, "the cluster runs Ray " + cluster_ray +
                                             ", but this stagekit's Ray bridge is built "
                                             "for Ray " STAGEKIT_RAY_VERSION
                                             " (C++ workers need the same release); use a "
                                             "cluster image with Ray " STAGEKIT_RAY_VERSION
                                             ", or --allow-ray-mismatch");
  }
#endif
  return client;
}

// Writes the package and uploads it unless the cluster has it; the bytes uploaded.
Result<std::uint64_t> ShipPackage(const SubmitCommand& cmd, deploy::ShipPlan& plan,
                                  deploy::JobsClient& client) {
  // Package: content-addressed, so an unchanged tree is zipped and uploaded once.
  const fs::path dir = cmd.package_dir.empty() ? DefaultPackageDir() : fs::path(cmd.package_dir);
  if (Status s = deploy::WritePackage(plan, dir, cmd.ship.level, Threads()); !s.ok()) return s;
  auto exists = client.PackageExists(plan.package);
  if (!exists.ok()) return exists.status();
  std::uint64_t uploaded = 0;
  if (!*exists) {
    auto bytes = util::ReadFile(dir / plan.package);
    if (!bytes.ok()) return bytes.status();
    if (Status s = client.UploadPackage(plan.package, *bytes); !s.ok()) return s;
    uploaded = bytes->size();
  }
  if (!cmd.json) {
    std::cerr << "stagekit: package " << plan.package << " (" << plan.tree.file_count()
              << " files, " << util::HumanBytes(plan.tree.file_bytes()) << "): "
              << (*exists ? "already on the cluster" : "uploaded " + util::HumanBytes(uploaded))
              << "; its nodes need " << plan.floor.Describe() << "\n";
  }
  return uploaded;
}

// The job's shell command: make the package's programs executable, then `stagekit run`.
std::string Entrypoint(const SubmitCommand& cmd, const deploy::ShipPlan& plan,
                       const std::string& id) {
  // Jobs of one package share its unpacked folder: each run writes its own.
  std::string entrypoint;
  std::string chmod;
  for (const std::string& exe : plan.executables) {
    // Shared libraries load without the bit; programs and scripts need it.
    if (fs::path(exe).filename().string().find(".so") == std::string::npos) {
      chmod += " " + util::ShellQuote(exe);
    }
  }
  if (!chmod.empty()) entrypoint = "chmod +x" + chmod + " && ";
  entrypoint += "sh " + std::string(deploy::kLauncher) + " run " + util::ShellQuote(plan.pipeline) +
                " -e " + cmd.executor + " --out " + util::ShellQuote("runs/" + id);
  if (!cmd.artifacts.empty()) entrypoint += " --artifacts " + util::ShellQuote(cmd.artifacts);
  for (const std::string& a : cmd.run_args) entrypoint += " " + util::ShellQuote(a);
  return entrypoint;
}

// The body of POST /api/jobs/ for the job.
Json JobRequest(const SubmitCommand& cmd, const deploy::ShipPlan& plan, const std::string& id,
                const std::string& entrypoint, const EntrypointChecks& checks) {
  Json runtime_env = {{"working_dir", "gcs://" + plan.package}};
  if (!checks.env.empty()) runtime_env["env_vars"] = checks.env;
  Json request = {{"entrypoint", entrypoint},
                  {"submission_id", id},
                  {"runtime_env", runtime_env},
                  {"metadata",
                   {{"stagekit_pipeline", plan.pipeline},
                    {"stagekit_package", plan.package},
                    {"stagekit_version", STAGEKIT_VERSION}}}};
  if (cmd.entrypoint_cpus >= 0) request["entrypoint_num_cpus"] = cmd.entrypoint_cpus;
  if (cmd.entrypoint_gpus >= 0) request["entrypoint_num_gpus"] = cmd.entrypoint_gpus;
  if (!cmd.entrypoint_memory.empty()) request["entrypoint_memory"] = checks.memory;
  if (!checks.resources.empty()) request["entrypoint_resources"] = checks.resources;
  return request;
}

// Returns at once with --no-wait, else follows the job to its end; prints how it went.
Status AwaitJob(const SubmitCommand& cmd, deploy::JobsClient& client, const std::string& submitted,
                Json& summary, Clock::time_point start) {
  if (cmd.no_wait) {
    if (cmd.json) {
      std::cout << summary.dump(2) << std::endl;
    } else {
      std::cout << submitted << std::endl;
      std::cerr << "stagekit: submitted; `stagekit jobs status " << submitted
                << "` tells how it goes\n";
    }
    return OkStatus();
  }
  if (!cmd.json) std::cerr << "stagekit: submitted job " << submitted << "\n";
  Status outcome = Follow(client, submitted, cmd.on_interrupt, !cmd.json);
  if (cmd.json) {
    auto job = client.Job(submitted);
    summary["status"] = job.ok() ? job->value("status", "") : "";
    summary["wall_s"] = std::chrono::duration<double>(Clock::now() - start).count();
    if (!outcome.ok()) summary["error"] = outcome.message();
    std::cout << summary.dump(2) << std::endl;
  } else if (outcome.ok()) {
    std::cerr << "stagekit: job " << submitted << " succeeded in "
              << static_cast<int>(std::chrono::duration<double>(Clock::now() - start).count())
              << " s" << (cmd.artifacts.empty() ? "" : "; artifacts in " + cmd.artifacts) << "\n";
  }
  return outcome;
}

Status SubmitInner(const SubmitCommand& cmd, operate::CostRecord& record) {
  const auto start = Clock::now();
  // Everything that can be refused locally is refused before any upload.
  const Result<EntrypointChecks> checks = CheckLocally(cmd);
  if (!checks.ok()) return checks.status();
  auto plan = PlanFromCommandLine(cmd.pipeline, cmd.libs, cmd.ship);
  if (!plan.ok()) return plan.status();
  if (plan->pipeline.empty()) {
    return Status(Code::kUsage, cmd.pipeline + " is a folder; submit a pipeline file");
  }
  record.pipeline = plan->name;
  for (const std::string& w : plan->warnings) std::cerr << "stagekit: warning: " << w << "\n";
  auto client = ConnectChecked(cmd);
  if (!client.ok()) return client.status();
  const Result<std::uint64_t> uploaded = ShipPackage(cmd, *plan, **client);
  if (!uploaded.ok()) return uploaded.status();

  const std::string id =
      cmd.submission_id.empty() ? NewSubmissionId(plan->name) : cmd.submission_id;
  const std::string entrypoint = Entrypoint(cmd, *plan, id);
  auto submitted = (*client)->Submit(JobRequest(cmd, *plan, id, entrypoint, *checks));
  if (!submitted.ok()) return submitted.status();
  record.submission_id = *submitted;
  record.address = (*client)->address();
  record.package = plan->package;

  Json summary = {{"submission_id", *submitted},
                  {"address", (*client)->address()},
                  {"package", plan->package},
                  {"uploaded_bytes", *uploaded},
                  {"entrypoint", entrypoint}};
  return AwaitJob(cmd, **client, *submitted, summary, start);
}

// Every submission leaves a cost record: what was submitted, how it ended and
// how long it was followed. The job's own `stagekit run` on the cluster writes
// the record with node types and prices into the cost log there.
Status Submit(const SubmitCommand& cmd) {
  const auto start = std::chrono::system_clock::now();
  const auto steady = Clock::now();
  operate::CostRecord record;
  record.command = "submit";
  record.executor = "ray job (" + cmd.executor + ")";
  Status status = SubmitInner(cmd, record);
  if (record.submission_id.empty()) return status;  // nothing reached the cluster
  record.start = util::IsoTime(start);
  record.end = util::IsoTime(std::chrono::system_clock::now());
  record.wall_s = std::chrono::duration<double>(Clock::now() - steady).count();
  record.outcome = status.ok() ? (cmd.no_wait ? "submitted" : "succeeded")
                               : std::string(util::OutcomeName(status.code()));
  record.exit_code = util::ExitCode(status);
  if (Status s = operate::AppendCostRecord(cmd.cost.Log(), record); !s.ok()) {
    std::cerr << "stagekit: warning: " << s.message() << "\n";
  }
  return status;
}

struct JobsCommand {
  ClusterCli cluster;
  std::string id;
  bool follow = false;
  bool no_wait = false;
  bool json = false;
};

Status JobsStatus(const JobsCommand& cmd) {
  auto client = cmd.cluster.Connect();
  if (!client.ok()) return client.status();
  auto job = (*client)->Job(cmd.id);
  if (!job.ok()) return job.status();
  const std::string status = job->value("status", "");
  if (cmd.json) {
    std::cout << job->dump(2) << std::endl;
  } else {
    std::cout << status << "\n";
    if (job->contains("entrypoint"))
      std::cerr << "entrypoint: " << (*job)["entrypoint"].get<std::string>() << "\n";
  }
  if (!deploy::IsTerminal(status)) return OkStatus();
  std::string tail;
  if (status != "SUCCEEDED") {
    auto logs = (*client)->Logs(cmd.id);
    if (logs.ok()) tail = LastLines(*logs, 20);
  }
  return JobOutcome(cmd.id, *job, &tail);
}

Status JobsLogs(const JobsCommand& cmd) {
  auto client = cmd.cluster.Connect();
  if (!client.ok()) return client.status();
  if (cmd.follow) return Follow(**client, cmd.id, "detach", true);
  auto logs = (*client)->Logs(cmd.id);
  if (!logs.ok()) return logs.status();
  std::cout << *logs << std::flush;
  return OkStatus();
}

Status JobsStop(const JobsCommand& cmd) {
  auto client = cmd.cluster.Connect();
  if (!client.ok()) return client.status();
  auto stopped = (*client)->Stop(cmd.id);
  if (!stopped.ok()) return stopped.status();
  if (!*stopped) {
    auto job = (*client)->Job(cmd.id);
    std::cerr << "stagekit: job " << cmd.id << " had already ended ("
              << (job.ok() ? job->value("status", "") : "?") << ")\n";
    return OkStatus();
  }
  if (cmd.no_wait) return OkStatus();
  for (int i = 0; i < 600 && !util::Interrupted(); ++i) {
    auto job = (*client)->Job(cmd.id);
    if (!job.ok()) return job.status();
    if (deploy::IsTerminal(job->value("status", ""))) {
      std::cerr << "stagekit: job " << cmd.id << " is " << job->value("status", "") << "\n";
      return OkStatus();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return Status(util::kJobFailed, "asked Ray to stop job " + cmd.id +
                                      ", but it has not stopped within a minute; check the "
                                      "dashboard");
}

Status JobsList(const JobsCommand& cmd) {
  auto client = cmd.cluster.Connect();
  if (!client.ok()) return client.status();
  auto jobs = (*client)->List();
  if (!jobs.ok()) return jobs.status();
  if (cmd.json) {
    std::cout << jobs->dump(2) << std::endl;
    return OkStatus();
  }
  for (const Json& j : *jobs) {
    if (!j.contains("submission_id") || !j["submission_id"].is_string()) continue;
    std::printf("%-10s %s\n", j.value("status", "").c_str(),
                j["submission_id"].get<std::string>().c_str());
  }
  return OkStatus();
}

}  // namespace

void SetSubmitCommand(CLI::App& app, Action& action) {
  auto cmd = std::make_shared<SubmitCommand>();
  CLI::App* sub = app.add_subcommand(
      "submit",
      "Ship a pipeline to a Ray cluster and run it there as a job: package (uploaded only when "
      "the cluster lacks it), POST /api/jobs/, then follow its status and log");
  sub->add_option("PIPELINE", cmd->pipeline, "Pipeline file (YAML)")->required();
  sub->add_option("RUN_ARGS", cmd->run_args,
                  "After --: more arguments for `stagekit run` on the cluster (e.g. -- -j 8)");
  cmd->cluster.AddTo(sub);
  cmd->libs.AddTo(sub);
  cmd->ship.AddTo(sub);
  sub->add_option("-e,--executor", cmd->executor, "Executor of the run on the cluster")
      ->default_val("ray")
      ->check(CLI::IsMember({"inprocess", "subprocess", "ray"}));
  sub->add_option("--env", cmd->env,
                  "Set NAME=VALUE for the job (runtime_env env_vars; not for secrets)")
      ->type_name("NAME=VALUE")
      ->allow_extra_args(false);
  sub->add_option("--allow-secret", cmd->allow_secret,
                  "Send this --env variable even though it looks like a credential")
      ->type_name("NAME")
      ->allow_extra_args(false);
  sub->add_option("--entrypoint-cpus", cmd->entrypoint_cpus, "CPUs reserved for the driver");
  sub->add_option("--entrypoint-gpus", cmd->entrypoint_gpus, "GPUs reserved for the driver");
  sub->add_option("--entrypoint-memory", cmd->entrypoint_memory,
                  "Memory reserved for the driver (e.g. 2GiB)");
  sub->add_option("--entrypoint-resource", cmd->entrypoint_resources,
                  "Custom resource for the driver, e.g. vm:m5.large=1; repeatable")
      ->type_name("NAME=AMOUNT")
      ->allow_extra_args(false);
  sub->add_option("--artifacts", cmd->artifacts,
                  "Sync the run's outputs to this S3 location when it succeeds")
      ->type_name("s3://BUCKET/PREFIX");
  sub->add_option("--submission-id", cmd->submission_id,
                  "Job id to use (default: stagekit-<pipeline>-<time>-<random>)");
  sub->add_option("--package-dir", cmd->package_dir,
                  "Where packages are kept (default: ~/.cache/stagekit/packages)");
  sub->add_option("--on-interrupt", cmd->on_interrupt,
                  "On Ctrl-C: ask (stop the job or leave it; leave it without a terminal), stop, "
                  "or detach")
      ->default_val("ask")
      ->check(CLI::IsMember({"ask", "stop", "detach"}));
  sub->add_flag("--no-wait", cmd->no_wait, "Print the submission id and return");
  sub->add_flag("--allow-ray-mismatch", cmd->allow_ray_mismatch,
                "Submit even if the cluster's Ray release differs from the bridge's");
  sub->add_flag("--json", cmd->json, "Print a JSON summary instead of the job's log");
  sub->add_option("--cost-log", cmd->cost.log,
                  "Where the submission's cost record goes (default: $STAGEKIT_COST_LOG, else "
                  "~/.local/share/stagekit/cost.jsonl)");
  sub->callback([cmd, &action] { action = [cmd] { return Submit(*cmd); }; });
}

void SetJobsCommand(CLI::App& app, Action& action) {
  CLI::App* jobs = app.add_subcommand("jobs", "Work on submitted jobs: status, logs, stop, list");
  jobs->require_subcommand(1);
  auto add = [&](const char* name, const char* help, bool with_id,
                 Status (*fn)(const JobsCommand&)) {
    auto cmd = std::make_shared<JobsCommand>();
    CLI::App* sub = jobs->add_subcommand(name, help);
    if (with_id) sub->add_option("ID", cmd->id, "Submission id")->required();
    cmd->cluster.AddTo(sub);
    sub->callback([cmd, fn, &action] { action = [cmd, fn] { return fn(*cmd); }; });
    return std::make_pair(sub, cmd);
  };
  auto [status, status_cmd] = add("status",
                                  "Print a job's status (exit 15 if it failed or was "
                                  "stopped, with its log tail)",
                                  true, &JobsStatus);
  status->add_flag("--json", status_cmd->json, "Print Ray's JobDetails");
  auto [logs, logs_cmd] = add("logs", "Print a job's log", true, &JobsLogs);
  logs->add_flag("-f,--follow", logs_cmd->follow, "Keep printing until the job ends");
  auto [stop, stop_cmd] =
      add("stop", "Stop a job and wait until Ray says it stopped", true, &JobsStop);
  stop->add_flag("--no-wait", stop_cmd->no_wait, "Return once Ray has the request");
  auto [list, list_cmd] = add("list", "List the cluster's submitted jobs", false, &JobsList);
  list->add_flag("--json", list_cmd->json, "Print Ray's job list");
}

}  // namespace stagekit::cli
