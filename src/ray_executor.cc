// The Ray executor's default-ABI half: finding Ray, starting and stopping a
// private head, asking the cluster what its nodes offer, the feasibility
// check, and calls into the bridge (libstagekit_ray.so) through its C ABI.
#include "stagekit/ray.h"

#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include "paths.h"
#include "process.h"
#include "ray_bridge_api.h"
#include "stagekit/c_api.h"
#include "warm.h"

namespace stagekit {
namespace {

namespace fs = std::filesystem;

fs::path DefaultBridge() { return internal::LibraryDir() / "libstagekit_ray.so"; }

fs::path DefaultBinDir() {
  if (const char* env = std::getenv("STAGEKIT_RAY_BIN_DIR"); env != nullptr && *env != '\0')
    return env;
#ifdef STAGEKIT_RAY_BIN_DIR
  return STAGEKIT_RAY_BIN_DIR;
#else
  return {};
#endif
}

constexpr const char* kInstallHint =
    "install it with `bash scripts/ray.sh` and rebuild (cmake finds .venv), or set "
    "STAGEKIT_RAY_BIN_DIR to the bin directory of an environment with ray[default] and ray-cpp";

std::string RandomHex(std::size_t bytes) {
  std::ifstream urandom("/dev/urandom", std::ios::binary);
  std::string raw(bytes, '\0');
  urandom.read(raw.data(), static_cast<std::streamsize>(bytes));
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : raw) {
    out.push_back(kHex[c >> 4]);
    out.push_back(kHex[c & 15]);
  }
  return out;
}

std::string ReadSmallFile(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream buf;
  buf << in.rdbuf();
  std::string s = buf.str();
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// Asks the cluster for its alive nodes through Ray's public Python API: the
// C++ API has no such query. Also proves the address and credentials work
// before the C++ driver connects (its connection failures abort the process).
constexpr const char* kNodeQuery = R"PY(
import json, os, sys
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
import ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False, configure_logging=False)
nodes = [{"node": "%s:%s" % (n["NodeManagerAddress"], n["NodeManagerPort"]),
          "resources": n["Resources"]} for n in ray.nodes() if n["Alive"]]
print(json.dumps(nodes))
ray.shutdown()
)PY";

std::string FormatAmount(const std::string& name, double v) {
  char buf[64];
  if (name == "memory" || name == "object_store_memory") {
    std::snprintf(buf, sizeof(buf), "%.1fGiB", v / 1073741824.0);
  } else {
    std::snprintf(buf, sizeof(buf), "%g", v);
  }
  return buf;
}

std::string FormatResources(const Json& resources, bool skip_internal) {
  std::string out = "{";
  for (const auto& [name, amount] : resources.items()) {
    if (skip_internal && (name.rfind("node:", 0) == 0 || name == "object_store_memory")) continue;
    out += (out.size() > 1 ? ", " : "") + name + ": " + FormatAmount(name, amount.get<double>());
  }
  return out + "}";
}

// While alive, drops the INFO lines Ray's C++ core prints to stderr while it
// connects, before it applies RAY_BACKEND_LOG_LEVEL; warnings and errors pass.
// The filter is a separate process (grep), so that the message of a failed
// check inside ray::Init, which aborts this process, still gets through.
class QuietRayInfo {
 public:
  QuietRayInfo() {
    internal::SpawnSpec filter;
    filter.argv = {"/bin/sh", "-c",
                   "exec grep -v --line-buffered -E "
                   "'^\\[[0-9-]+ [0-9:,]+ I [0-9]+ [0-9]+\\] ' >&2"};
    filter.stdin_pipe = true;
    auto spawned = internal::Spawn(filter);
    if (!spawned.ok()) return;  // no filter: Ray's lines go through unfiltered
    saved_stderr_ = ::dup(STDERR_FILENO);
    pid_ = spawned->pid;
    if (saved_stderr_ < 0 || ::dup2(spawned->stdin_fd, STDERR_FILENO) < 0) {
      ::close(spawned->stdin_fd);
      Restore();
      return;
    }
    ::close(spawned->stdin_fd);
  }
  ~QuietRayInfo() { Restore(); }
  QuietRayInfo(const QuietRayInfo&) = delete;
  QuietRayInfo& operator=(const QuietRayInfo&) = delete;

 private:
  void Restore() {
    if (saved_stderr_ >= 0) {
      ::dup2(saved_stderr_, STDERR_FILENO);  // closes our end of the filter's stdin
      ::close(saved_stderr_);
      saved_stderr_ = -1;
    }
    if (pid_ > 0) internal::WaitFor(pid_, std::chrono::seconds(5));
    pid_ = -1;
  }
  int saved_stderr_ = -1;
  pid_t pid_ = -1;
};

}  // namespace

struct RayExecutor::Bridge {
  void* handle = nullptr;  // dlopen; never closed: Ray's threads live in it
  stagekit_ray_bridge* bridge = nullptr;
  stagekit_ray_bridge_open_fn open = nullptr;
  stagekit_ray_bridge_run_fn run = nullptr;
  stagekit_ray_bridge_submit_fn submit = nullptr;
  stagekit_ray_bridge_wait_fn wait = nullptr;
  stagekit_ray_bridge_stats_fn stats = nullptr;
  stagekit_ray_bridge_close_fn close = nullptr;
};

bool RayAvailable(std::string* why) {
  std::error_code ec;
  std::string problem;
  fs::path bin = DefaultBinDir();
  if (!fs::exists(DefaultBridge(), ec)) {
    problem = "this stagekit was built without Ray (no " + DefaultBridge().string() + "); " +
              kInstallHint;
  } else if (bin.empty() || !fs::exists(bin / "ray", ec)) {
    problem = "Ray's `ray` command was not found in '" + bin.string() + "'; " + kInstallHint;
  }
  if (why != nullptr) *why = problem;
  return problem.empty();
}

Json RayResources(const Resources& r) {
  Json out = Json::object();
  if (r.cpus > 0) out["CPU"] = r.cpus;
  if (r.gpus > 0) out["GPU"] = r.gpus;
  if (r.memory_bytes > 0) out["memory"] = static_cast<double>(r.memory_bytes);
  for (const auto& [name, amount] : r.custom) out[name] = amount;
  return out;
}

// With an autoscaler, a node type that is not up yet still makes a request
// feasible: the worker node types of the autoscaler config named by
// $STAGEKIT_AUTOSCALER_CONFIG (e.g. from `stagekit cluster config`), as
// pseudo-nodes for CheckFeasible. Empty when it is not set.
Result<Json> AutoscalerNodeTypes() {
  const char* path = std::getenv("STAGEKIT_AUTOSCALER_CONFIG");
  Json out = Json::array();
  if (path == nullptr || *path == '\0') return out;
  try {
    YAML::Node config = YAML::LoadFile(path);
    std::string head = config["head_node_type"] ? config["head_node_type"].as<std::string>() : "";
    for (const auto& kv : config["available_node_types"]) {
      std::string name = kv.first.as<std::string>();
      const YAML::Node& type = kv.second;
      if (name == head || (type["max_workers"] && type["max_workers"].as<int>() <= 0)) continue;
      Json resources = Json::object();
      for (const auto& r : type["resources"])
        resources[r.first.as<std::string>()] = r.second.as<double>();
      out.push_back({{"node", "autoscaler node type " + name}, {"resources", resources}});
    }
  } catch (const YAML::Exception& e) {
    return Status(Code::kInputError,
                  std::string("STAGEKIT_AUTOSCALER_CONFIG=") + path + ": " + e.what());
  }
  return out;
}

Status CheckFeasible(const Json& request, const Json& nodes, const std::string& label) {
  for (const Json& node : nodes) {
    const Json& have = node.at("resources");
    bool fits = true;
    for (const auto& [name, amount] : request.items()) {
      double available = have.contains(name) ? have[name].get<double>() : 0.0;
      if (available + 1e-9 < amount.get<double>()) fits = false;
    }
    if (fits) return OkStatus();
  }
  // Name what no node has at all, then what nodes offer.
  std::string missing;
  for (const auto& [name, amount] : request.items()) {
    bool anywhere = false;
    for (const Json& node : nodes) {
      const Json& have = node.at("resources");
      anywhere = anywhere ||
                 (have.contains(name) && have[name].get<double>() + 1e-9 >= amount.get<double>());
    }
    if (!anywhere)
      missing +=
          (missing.empty() ? "" : ", ") + name + ": " + FormatAmount(name, amount.get<double>());
  }
  std::string message = label + " asks for " + FormatResources(request, false) +
                        " but no node of the Ray cluster can ever provide it";
  if (!missing.empty()) message += " (no node has " + missing + ")";
  message += "; nodes offer:";
  for (const Json& node : nodes) {
    message += " " + node.value("node", std::string("?")) + " " +
               FormatResources(node.at("resources"), true) + ";";
  }
  if (nodes.empty()) message += " (no alive nodes);";
  message +=
      " lower the request, or start a node that registers the resource "
      "(ray start --resources='{\"NAME\": N}')";
  return Status(Code::kInfeasible, message);
}

int StopProcessSession(pid_t sid, std::chrono::milliseconds grace) {
  if (sid <= 1) return 0;
  struct Proc {
    pid_t pid;
    std::string comm;
  };
  auto members = [sid] {
    std::vector<Proc> out;
    DIR* dir = ::opendir("/proc");
    if (dir == nullptr) return out;
    while (dirent* e = ::readdir(dir)) {
      char* end = nullptr;
      long pid = std::strtol(e->d_name, &end, 10);
      if (*end != '\0' || pid <= 0) continue;
      std::ifstream in("/proc/" + std::string(e->d_name) + "/stat");
      std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      std::size_t open = stat.find('('), close = stat.rfind(')');
      if (open == std::string::npos || close == std::string::npos) continue;
      std::istringstream rest(stat.substr(close + 2));
      std::string state;
      long ppid = 0, pgrp = 0, session = 0;
      rest >> state >> ppid >> pgrp >> session;
      if (session == sid && state != "Z") {
        out.push_back({static_cast<pid_t>(pid), stat.substr(open + 1, close - open - 1)});
      }
    }
    ::closedir(dir);
    return out;
  };
  int signalled = 0;
  // Ray's own order: raylets first (they own the workers), gcs_server last.
  for (int bucket = 0; bucket < 3; ++bucket) {
    auto in_bucket = [bucket](const Proc& p) {
      int b = p.comm == "raylet" ? 0 : p.comm == "gcs_server" ? 2 : 1;
      return b == bucket;
    };
    bool any = false;
    for (const Proc& p : members()) {
      if (in_bucket(p) && ::kill(p.pid, SIGTERM) == 0) {
        ++signalled;
        any = true;
      }
    }
    if (!any) continue;
    const auto deadline = std::chrono::steady_clock::now() + grace;
    for (;;) {
      bool alive = false;
      for (const Proc& p : members()) alive = alive || in_bucket(p);
      if (!alive) break;
      if (std::chrono::steady_clock::now() >= deadline) {
        for (const Proc& p : members()) {
          if (in_bucket(p)) ::kill(p.pid, SIGKILL);
        }
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  // Anything that appeared meanwhile (a worker forked late).
  for (int i = 0; i < 20; ++i) {
    std::vector<Proc> left = members();
    if (left.empty()) break;
    for (const Proc& p : left) {
      if (::kill(p.pid, SIGKILL) == 0) ++signalled;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return signalled;
}

Result<std::unique_ptr<RayExecutor>> RayExecutor::Open(RayOptions options) {
  std::string why;
  if (options.bridge.empty()) options.bridge = DefaultBridge();
  if (options.bin_dir.empty()) options.bin_dir = DefaultBinDir();
  if (options.runner.empty()) options.runner = internal::DefaultCli();
  std::error_code ec;
  if (!fs::exists(options.bridge, ec)) {
    return Status(Code::kRayUnavailable,
                  "the ray executor needs Ray's C++ API, but this stagekit was built "
                  "without it (no " +
                      options.bridge.string() + "); " + kInstallHint);
  }
  if (options.bin_dir.empty() || !fs::exists(options.bin_dir / "ray", ec)) {
    return Status(Code::kRayUnavailable, "the ray executor needs Ray, but `ray` is not in '" +
                                             options.bin_dir.string() + "'; " + kInstallHint);
  }
  std::unique_ptr<RayExecutor> ex(new RayExecutor());
  ex->options_ = options;

  ex->address_ = options.address;
  if (ex->address_.empty()) {
    if (const char* env = std::getenv("RAY_ADDRESS"); env != nullptr) ex->address_ = env;
  }
  if (ex->address_.rfind("ray://", 0) == 0) {
    return Status(Code::kUsage, "'" + ex->address_ +
                                    "' is a Ray Client address; the C++ API connects to the "
                                    "GCS directly: give ip:port (port 6379 by default)");
  }
  if (ex->address_.empty()) {
    // A private head: own temp dir, free ports, token auth, its own session.
    std::string tmpl = "/tmp/skray-XXXXXX";  // short: Ray puts Unix sockets below it
    if (::mkdtemp(tmpl.data()) == nullptr) {
      return Status(Code::kInternal,
                    std::string("cannot create a temp dir for Ray: ") + std::strerror(errno));
    }
    ex->temp_dir_ = tmpl;
    fs::path token = ex->temp_dir_ / "auth_token";
    {
      std::ofstream out(token);
      out << RandomHex(32);  // no newline: the C++ token loader does not strip it
    }
    fs::permissions(token, fs::perms::owner_read | fs::perms::owner_write, ec);
    // Ray's default for local clusters is token authentication; the raylet
    // hands these on to its workers, and the C++ and Python drivers read them.
    ::setenv("RAY_AUTH_MODE", "token", 1);
    ::setenv("RAY_AUTH_TOKEN_PATH", token.c_str(), 1);
    ::setenv("RAY_USAGE_STATS_ENABLED", "0", 1);
    int cpus = options.num_cpus > 0
                   ? options.num_cpus
                   : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    std::uint64_t store =
        options.object_store_bytes > 0 ? options.object_store_bytes : (512ull << 20);
    std::vector<std::string> argv = {(options.bin_dir / "ray").string(),
                                     "start",
                                     "--head",
                                     "--temp-dir=" + ex->temp_dir_.string(),
                                     "--disable-usage-stats",
                                     "--include-dashboard=false",
                                     "--num-cpus=" + std::to_string(cpus),
                                     "--object-store-memory=" + std::to_string(store),
                                     "--min-worker-port=0",
                                     "--max-worker-port=0"};
    const char* flags[] = {"--port",
                           "--node-manager-port",
                           "--object-manager-port",
                           "--metrics-export-port",
                           "--dashboard-agent-listen-port",
                           "--dashboard-agent-grpc-port",
                           "--runtime-env-agent-port",
                           "--ray-client-server-port"};
    // A head that times out while starting (its GCS too slow to answer on a
    // loaded machine: "The current node timed out during startup") is
    // stopped and started once more, on fresh ports.
    for (int attempt = 1;; ++attempt) {
      std::vector<int> ports = internal::FreePorts(std::size(flags));
      if (ports.size() != std::size(flags)) {
        return Status(Code::kInternal, "cannot find free ports for a private Ray head");
      }
      std::vector<std::string> args = argv;
      for (std::size_t i = 0; i < ports.size(); ++i) {
        args.push_back(std::string(flags[i]) + "=" + std::to_string(ports[i]));
      }
      args.insert(args.end(), options.head_args.begin(), options.head_args.end());
      internal::SpawnSpec head;
      head.argv = args;
      head.new_session = true;
      head.log_path = (ex->temp_dir_ / "ray-start.log").string();
      auto started = internal::Spawn(head);
      if (!started.ok()) return started.status();
      ex->head_pid_ = started->pid;
      // The reaper stops the head's whole session when our end of its stdin
      // closes: on close, or when this process dies however it dies.
      internal::SpawnSpec reaper;
      reaper.argv = {options.runner.string(),      "ray-reaper", "--session",
                     std::to_string(started->pid), "--temp-dir", ex->temp_dir_.string()};
      reaper.new_session = true;
      reaper.stdin_pipe = true;
      auto reaper_started = internal::Spawn(reaper);
      if (!reaper_started.ok()) {
        StopProcessSession(started->pid, std::chrono::seconds(2));
        return Status(Code::kInternal,
                      reaper_started.status().message() +
                          " (is the stagekit binary installed beside libstagekit?)");
      }
      ex->reaper_pid_ = reaper_started->pid;
      ex->reaper_fd_ = reaper_started->stdin_fd;
      int rc = internal::WaitFor(started->pid, std::chrono::minutes(3));
      std::string address = ReadSmallFile(ex->temp_dir_ / "ray_current_cluster");
      if (rc == 0 && !address.empty()) {
        ex->address_ = address;
        break;
      }
      std::string log = ReadSmallFile(ex->temp_dir_ / "ray-start.log");
      if (attempt == 1 && log.find("timed out during startup") != std::string::npos) {
        ::close(ex->reaper_fd_);  // the reaper stops what the first try left
        internal::WaitFor(ex->reaper_pid_, std::chrono::minutes(1));
        ex->reaper_fd_ = -1;
        ex->reaper_pid_ = -1;
        ex->head_pid_ = -1;
        // The reaper removed the temp dir with the token in it: make both again.
        std::error_code again;
        fs::create_directories(ex->temp_dir_, again);
        fs::permissions(ex->temp_dir_, fs::perms::owner_all, again);
        {
          std::ofstream out(token);
          out << RandomHex(32);
        }
        fs::permissions(token, fs::perms::owner_read | fs::perms::owner_write, again);
        continue;
      }
      return Status(Code::kInternal, "`ray start --head` failed (exit " + std::to_string(rc) +
                                         "):\n" + internal::Tail(log, 2000));
    }
  }

  if (Status s = ex->RefreshNodes(); !s.ok()) return s;

  // Ray's C++ core logs INFO lines to stderr by default; keep the terminal for stagekit.
  ::setenv("RAY_BACKEND_LOG_LEVEL", "warning", 0);
  // Load the bridge only now: Ray reads its authentication settings from the
  // environment when it is loaded, and the private head sets them above.
  auto bridge = std::make_unique<Bridge>();
  bridge->handle = dlopen(options.bridge.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (bridge->handle == nullptr) {
    const char* err = dlerror();
    return Status(Code::kRayUnavailable, "cannot load the Ray bridge " + options.bridge.string() +
                                             ": " + (err != nullptr ? err : "unknown error") +
                                             "; " + kInstallHint);
  }
  bridge->open = reinterpret_cast<stagekit_ray_bridge_open_fn>(
      dlsym(bridge->handle, "stagekit_ray_bridge_open"));
  bridge->run = reinterpret_cast<stagekit_ray_bridge_run_fn>(
      dlsym(bridge->handle, "stagekit_ray_bridge_run"));
  bridge->submit = reinterpret_cast<stagekit_ray_bridge_submit_fn>(
      dlsym(bridge->handle, "stagekit_ray_bridge_submit"));
  bridge->wait = reinterpret_cast<stagekit_ray_bridge_wait_fn>(
      dlsym(bridge->handle, "stagekit_ray_bridge_wait"));
  bridge->stats = reinterpret_cast<stagekit_ray_bridge_stats_fn>(
      dlsym(bridge->handle, "stagekit_ray_bridge_stats"));
  bridge->close = reinterpret_cast<stagekit_ray_bridge_close_fn>(
      dlsym(bridge->handle, "stagekit_ray_bridge_close"));
  if (!bridge->open || !bridge->run || !bridge->submit || !bridge->wait || !bridge->stats ||
      !bridge->close) {
    return Status(Code::kRayUnavailable,
                  "the Ray bridge " + options.bridge.string() + " is from another version");
  }

  std::string config =
      CanonicalJson({{"address", ex->address_},
                     {"code_search_path", Json::array({fs::absolute(options.bridge).string()})}});
  char* out = nullptr;
  std::size_t len = 0;
  int rc;
  {
    QuietRayInfo quiet;
    rc = bridge->open(config.data(), config.size(), &bridge->bridge, &out, &len);
  }
  std::string reply(out == nullptr ? "" : out, len);
  stagekit_free(out);
  if (rc != 0) {
    // The driver could not join the cluster: unavailable, like an
    // unreachable one (exit 12), not a fault of stagekit's.
    auto err = RunStatsOrErrorFromJson(Json::parse(reply, nullptr, false));
    return Status(Code::kRayUnavailable, err.status().message());
  }
  ex->bridge_ = std::move(bridge);
  return ex;
}

Status RayExecutor::RefreshNodes() {
  internal::ChildSpec query;
  query.argv = {(options_.bin_dir / "python").string(), "-c", kNodeQuery, address_};
  query.timeout = std::chrono::seconds(60);
  internal::ChildResult r = internal::RunChild(query);
  Json nodes = Json::parse(r.out, nullptr, false);
  if (!r.exited || r.exit_code != 0 || !nodes.is_array()) {
    std::string err = r.err;
    std::size_t last = err.find_last_not_of("\n ");
    std::size_t line = err.rfind('\n', last == std::string::npos ? 0 : last);
    std::string why =
        err.empty() ? "no answer" : err.substr(line == std::string::npos ? 0 : line + 1);
    return Status(Code::kRayUnavailable,
                  "cannot reach the Ray cluster at " + address_ + ": " + why +
                      (private_head() ? ""
                                      : "; check --address / RAY_ADDRESS and, if the cluster "
                                        "uses token authentication, RAY_AUTH_MODE=token with "
                                        "RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH"));
  }
  std::lock_guard<std::mutex> lock(mu_);
  nodes_ = std::move(nodes);
  nodes_at_ = std::chrono::steady_clock::now();
  return OkStatus();
}

RayExecutor::~RayExecutor() {
  if (bridge_ && bridge_->bridge != nullptr) bridge_->close(bridge_->bridge);
  if (reaper_fd_ >= 0) {
    ::close(reaper_fd_);  // the reaper stops the private head now
    internal::WaitFor(reaper_pid_, std::chrono::minutes(1));
  } else if (head_pid_ > 0) {
    StopProcessSession(head_pid_, std::chrono::seconds(2));
  }
}

Json RayExecutor::Stats() const {
  if (!bridge_) return Json::object();
  char* out = nullptr;
  std::size_t len = 0;
  bridge_->stats(bridge_->bridge, &out, &len);
  Json stats = Json::parse(std::string(out == nullptr ? "{}" : out, len), nullptr, false);
  stagekit_free(out);
  return stats;
}

Json RayExecutor::Nodes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return nodes_;
}

namespace {
// How many warm actors with these resources the cluster can hold at once: an
// actor keeps its non-CPU resources (GPUs, memory, custom) for its life, so
// one more than fit would wait forever for an idle one to let go. 0: no limit
// (the stage needs only CPUs).
int ActorCapacity(const Json& resources, const Json& nodes) {
  long total = 0;
  bool limited = false;
  for (const Json& node : nodes) {
    long fit = -1;
    for (const auto& [name, amount] : resources.items()) {
      if (name == "CPU" || amount.get<double>() <= 0) continue;
      limited = true;
      const double have = node["resources"].value(name, 0.0);
      const long n = static_cast<long>(std::floor(have / amount.get<double>() + 1e-9));
      fit = fit < 0 ? n : std::min(fit, n);
    }
    if (fit > 0) total += fit;
  }
  if (!limited) return 0;
  return static_cast<int>(std::max(1L, std::min(total, 1L << 20)));
}
}  // namespace

Result<RayExecutor::Prepared> RayExecutor::Prepare(const StageRequest& request,
                                                   const StageOptions& options) {
  StageRequest req = request;
  req.executor = "ray";
  if (req.instance.empty()) req.instance = req.stage;
  const std::string label = req.instance == req.stage
                                ? "stage '" + req.stage + "'"
                                : "stage '" + req.instance + "' (" + req.stage + ")";
  if (Status s = options.resources.Validate(); !s.ok())
    return Status(s.code(), label + ": " + s.message());
  Json resources = RayResources(options.resources);
  auto types = AutoscalerNodeTypes();
  if (!types.ok()) return types.status();
  auto with_types = [&types](Json nodes) {
    for (const Json& t : *types) nodes.push_back(t);
    return nodes;
  };
  Status feasible = CheckFeasible(resources, with_types(Nodes()), label);
  if (!feasible.ok()) {
    // Nodes may have joined since we looked: look once more, at most every few seconds.
    bool stale;
    {
      std::lock_guard<std::mutex> lock(mu_);
      stale = std::chrono::steady_clock::now() - nodes_at_ > std::chrono::seconds(5);
    }
    if (!stale || !RefreshNodes().ok()) return feasible;
    if (Status again = CheckFeasible(resources, with_types(Nodes()), label); !again.ok())
      return again;
  }
  Json libraries = Json::array();
  for (const fs::path& lib : options_.libraries) libraries.push_back(fs::absolute(lib).string());
  Json task_json = {{"resources", resources},
                    {"timeout_ms", options.timeout ? options.timeout->count() : 0},
                    {"max_attempts", options_.max_attempts},
                    {"libraries", libraries},
                    {"fetch", options.fetch_output},
                    {"fetch_window", options_.fetch_window_bytes},
                    {"readers", options.readers}};
  if (!options.artifact.empty()) {
    task_json["artifact"] = options.artifact;
    if (!options_.s3_endpoint.empty()) task_json["s3_endpoint"] = options_.s3_endpoint;
  }
  // A warm stage runs on a warm actor per instance key and resources (or, with
  // STAGEKIT_WARM=0, cold in a plain task). The driver knows a stage is warm
  // only when it loaded the stage's library, as the CLI does.
  if (internal::IsWarmStage(Registry::Global(), req.stage)) {
    if (internal::WarmEnabled()) {
      task_json["warm_key"] = internal::WarmKey(req) + '\0' + CanonicalJson(resources);
      task_json["max_actors"] = ActorCapacity(resources, Nodes());
    } else {
      task_json["cold"] = true;
    }
  }
  Prepared prepared;
  prepared.task = CanonicalJson(task_json);
  prepared.request = CanonicalJson(req.ToJson());
  prepared.label = label;
  return prepared;
}

namespace {
Result<RunStats> FromReply(const Json& reply, const std::string& label) {
  if (reply.is_discarded() || !reply.is_object())
    return Status(Code::kInternal, label + ": unreadable reply from the Ray bridge");
  return RunStatsOrErrorFromJson(reply);
}
}  // namespace

Result<RunStats> RayExecutor::Run(const StageRequest& request, const StageOptions& options) {
  auto prepared = Prepare(request, options);
  if (!prepared.ok()) return prepared.status();
  char* out = nullptr;
  std::size_t len = 0;
  bridge_->run(bridge_->bridge, prepared->request.data(), prepared->request.size(),
               prepared->task.data(), prepared->task.size(), &out, &len);
  Json reply = Json::parse(std::string(out == nullptr ? "" : out, len), nullptr, false);
  stagekit_free(out);
  return FromReply(reply, prepared->label);
}

void RayExecutor::Submit(std::uint64_t ticket, const StageRequest& request,
                         const StageOptions& options) {
  auto prepared = Prepare(request, options);
  if (!prepared.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    StageCompletion refused;
    refused.ticket = ticket;
    refused.stats = prepared.status();
    refused_.push_back(std::move(refused));
    return;
  }
  bridge_->submit(bridge_->bridge, ticket, prepared->request.data(), prepared->request.size(),
                  prepared->task.data(), prepared->task.size());
}

std::vector<StageCompletion> RayExecutor::AwaitCompletions(std::chrono::milliseconds timeout) {
  std::vector<StageCompletion> done;
  {
    std::lock_guard<std::mutex> lock(mu_);
    done.swap(refused_);
  }
  char* out = nullptr;
  std::size_t len = 0;
  bridge_->wait(bridge_->bridge, done.empty() ? static_cast<int>(timeout.count()) : 0, &out, &len);
  Json replies = Json::parse(std::string(out == nullptr ? "" : out, len), nullptr, false);
  stagekit_free(out);
  if (!replies.is_array()) return done;
  for (const Json& r : replies) {
    StageCompletion c;
    c.ticket = r.value("ticket", std::uint64_t{0});
    c.made_only = r.value("made_only", false);
    c.stats = FromReply(r.contains("reply") ? r["reply"] : Json(), "a stage");
    done.push_back(std::move(c));
  }
  return done;
}

}  // namespace stagekit
