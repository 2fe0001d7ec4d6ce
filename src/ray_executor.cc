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
#include <optional>
#include <sstream>
#include <thread>
#include <utility>

#include "ray_bridge_api.h"
#include "stagekit/c_api.h"
#include "stagekit/executor.h"
#include "stagekit/runner.h"
#include "util/files.h"
#include "util/process.h"
#include "util/text.h"
#include "util/yaml.h"
#include "warm.h"

namespace stagekit {
namespace {

namespace fs = std::filesystem;

fs::path DefaultBridge() { return stagekit::LibraryDir() / "libstagekit_ray.so"; }

constexpr const char* kInstallHint =
    "install it with `bash scripts/ray.sh` and rebuild (cmake finds .venv), or set "
    "STAGEKIT_RAY_BIN_DIR to the bin directory of an environment with ray[default] and ray-cpp";

// A folder of two links through which the bridge loads: itself, and
// libray_api.so pointing at the node's Ray. The bridge asks for
// "libray_api.so" in $ORIGIN, the folder it was loaded from, so this is how
// the Ray found at run time is the one it links to. Removed once loaded.
class BridgeLinks {
 public:
  static Result<BridgeLinks> Make(const fs::path& bridge, const fs::path& api_library) {
    BridgeLinks links;
    std::error_code ec;
    fs::path tmp = fs::temp_directory_path(ec);  // $TMPDIR; an unusable one: /tmp
    auto dir = util::MakePrivateDir(ec ? fs::path("/tmp") : tmp);
    if (!dir.ok()) return dir.status();
    links.dir_ = *dir;
    fs::create_symlink(fs::absolute(bridge), links.dir_ / bridge.filename(), ec);
    if (!ec) fs::create_symlink(api_library, links.dir_ / "libray_api.so", ec);
    if (ec) {
      return Status(Code::kRayUnavailable, "cannot link the Ray bridge in " + links.dir_.string() +
                                               ": " + ec.message() + "; check TMPDIR");
    }
    links.bridge_ = links.dir_ / bridge.filename();
    return links;
  }
  BridgeLinks() = default;
  BridgeLinks(BridgeLinks&& o) noexcept : dir_(std::exchange(o.dir_, {})), bridge_(o.bridge_) {}
  BridgeLinks& operator=(BridgeLinks&&) = delete;
  BridgeLinks(const BridgeLinks&) = delete;
  ~BridgeLinks() {
    std::error_code ec;
    if (!dir_.empty()) fs::remove_all(dir_, ec);
  }
  const fs::path& bridge() const { return bridge_; }

 private:
  fs::path dir_, bridge_;
};

// The file without trailing white space; "" when it cannot be read.
std::string ReadSmallFile(const fs::path& path) {
  auto text = util::ReadFile(path);
  return text.ok() ? util::Trim(*text) : std::string();
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
    util::SpawnSpec filter;
    filter.argv = {"/bin/sh", "-c",
                   "exec grep -v --line-buffered -E "
                   "'^\\[[0-9-]+ [0-9:,]+ I [0-9]+ [0-9]+\\] ' >&2"};
    filter.stdin_pipe = true;
    auto spawned = util::Spawn(filter);
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
    if (pid_ > 0) util::WaitFor(pid_, std::chrono::seconds(5));
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
  stagekit_ray_bridge_set_cancel_fn set_cancel = nullptr;
  stagekit_ray_bridge_close_fn close = nullptr;
};

bool RayAvailable(std::string* why, const fs::path& bin_dir, const std::string& search_path) {
  std::error_code ec;
  std::string problem;
  if (!fs::exists(DefaultBridge(), ec)) {
    problem = "this stagekit was built without Ray (no " + DefaultBridge().string() + "); " +
              kInstallHint;
  } else if (auto found = FindRay(bin_dir, search_path); !found.ok()) {
    problem = found.status().message();
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
// feasible: the worker node types of the autoscaler config at `path` (e.g.
// from `stagekit cluster config`), as pseudo-nodes for CheckFeasible. Empty
// when `path` is. Read once, when the executor opens.
Result<Json> AutoscalerNodeTypes(const fs::path& path) {
  Json out = Json::array();
  if (path.empty()) return out;
  Result<YAML::Node> loaded = util::LoadYamlFile(path, Code::kInputError);
  if (!loaded.ok()) {
    return Status(Code::kInputError, "the autoscaler config: " + loaded.status().message() +
                                         "; give the file `stagekit cluster config` wrote");
  }
  try {
    const YAML::Node& config = *loaded;
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
    return Status(Code::kInputError, "the autoscaler config " + path.string() + ": " + e.what() +
                                         "; give the file `stagekit cluster config` wrote");
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
      auto read = util::ReadFile("/proc/" + std::string(e->d_name) + "/stat", 1 << 16);
      const std::string stat = read.ok() ? std::move(read).value() : std::string();
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

// A Ray head of this process's own: its own temp dir, free ports, token
// authentication and session, and a reaper that stops the head's whole
// session when this process closes it or dies, however it dies.
struct RayExecutor::PrivateHead {
  fs::path temp_dir;
  pid_t head_pid = -1;  // session id of the head's processes
  pid_t reaper_pid = -1;
  int reaper_fd = -1;

  // Starts a head for `options` and says its GCS address ("ip:port").
  static Result<std::unique_ptr<PrivateHead>> Start(const RayOptions& options,
                                                    std::string* address);
  ~PrivateHead() {
    Stop();
    RestoreEnvironment();
  }

 private:
  // Ray's C++ core reads its authentication settings from the process
  // environment when the bridge loads, and the Python node query and `ray`
  // commands inherit them: there is no other way in. Sets them for this
  // head, keeping what was there to put back when the head is gone.
  void SetEnvironment(const fs::path& token);
  void RestoreEnvironment();
  std::vector<std::pair<std::string, std::optional<std::string>>> saved_env;
  // A new token (no newline: the C++ token loader does not strip it), owner-only.
  void WriteToken() const;
  // `ray start --head` and its reaper, once: the address, or "" when the head
  // timed out starting (which is worth one more try), or an error.
  Result<std::string> StartOnce(const RayOptions& options);
  void Stop();
};

Result<std::unique_ptr<RayExecutor::PrivateHead>> RayExecutor::PrivateHead::Start(
    const RayOptions& options, std::string* address) {
  std::string tmpl = "/tmp/skray-XXXXXX";  // short: Ray puts Unix sockets below it
  if (::mkdtemp(tmpl.data()) == nullptr) {
    return Status(Code::kInternal,
                  std::string("cannot create a temp dir for Ray: ") + std::strerror(errno));
  }
  auto head = std::make_unique<PrivateHead>();
  head->temp_dir = tmpl;
  head->WriteToken();
  // Ray's default for local clusters is token authentication; the raylet
  // hands these on to its workers, and the C++ and Python drivers read them.
  head->SetEnvironment(head->temp_dir / "auth_token");
  // A head that times out while starting (its GCS too slow to answer on a
  // loaded machine: "The current node timed out during startup") is
  // stopped and started once more, on fresh ports.
  for (int attempt = 1; attempt <= 2; ++attempt) {
    auto started = head->StartOnce(options);
    if (!started.ok()) return started.status();
    if (!started->empty()) {
      *address = *started;
      return head;
    }
    head->Stop();
    // The reaper removed the temp dir with the token in it: make both again.
    std::error_code again;
    fs::create_directories(head->temp_dir, again);
    fs::permissions(head->temp_dir, fs::perms::owner_all, again);
    head->WriteToken();
  }
  return Status(Code::kInternal,
                "`ray start --head` timed out during startup twice:\n" +
                    util::Tail(ReadSmallFile(head->temp_dir / "ray-start.log"), 2000));
}

void RayExecutor::PrivateHead::SetEnvironment(const fs::path& token) {
  const std::pair<const char*, std::string> settings[] = {{"RAY_AUTH_MODE", "token"},
                                                          {"RAY_AUTH_TOKEN_PATH", token.string()},
                                                          {"RAY_USAGE_STATS_ENABLED", "0"}};
  for (const auto& [name, value] : settings) {
    const char* old = std::getenv(name);
    saved_env.emplace_back(name, old != nullptr ? std::optional<std::string>(old) : std::nullopt);
    ::setenv(name, value.c_str(), 1);
  }
}

void RayExecutor::PrivateHead::RestoreEnvironment() {
  for (const auto& [name, old] : saved_env) {
    if (old) {
      ::setenv(name.c_str(), old->c_str(), 1);
    } else {
      ::unsetenv(name.c_str());
    }
  }
  saved_env.clear();
}

void RayExecutor::PrivateHead::WriteToken() const {
  const fs::path token = temp_dir / "auth_token";
  {
    std::ofstream out(token);
    out << util::RandomHex(32);
  }
  std::error_code ec;
  fs::permissions(token, fs::perms::owner_read | fs::perms::owner_write, ec);
}

Result<std::string> RayExecutor::PrivateHead::StartOnce(const RayOptions& options) {
  const int cpus = options.num_cpus > 0
                       ? options.num_cpus
                       : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const std::uint64_t store =
      options.object_store_bytes > 0 ? options.object_store_bytes : (512ull << 20);
  std::vector<std::string> args = {(options.bin_dir / "ray").string(),
                                   "start",
                                   "--head",
                                   "--temp-dir=" + temp_dir.string(),
                                   "--disable-usage-stats",
                                   "--include-dashboard=false",
                                   "--num-cpus=" + std::to_string(cpus),
                                   "--object-store-memory=" + std::to_string(store),
                                   "--min-worker-port=0",
                                   "--max-worker-port=0"};
  static constexpr const char* kPortFlags[] = {"--port",
                                               "--node-manager-port",
                                               "--object-manager-port",
                                               "--metrics-export-port",
                                               "--dashboard-agent-listen-port",
                                               "--dashboard-agent-grpc-port",
                                               "--runtime-env-agent-port",
                                               "--ray-client-server-port"};
  std::vector<int> ports = util::FreePorts(std::size(kPortFlags));
  if (ports.size() != std::size(kPortFlags)) {
    return Status(Code::kInternal, "cannot find free ports for a private Ray head");
  }
  for (std::size_t i = 0; i < ports.size(); ++i) {
    args.push_back(std::string(kPortFlags[i]) + "=" + std::to_string(ports[i]));
  }
  args.insert(args.end(), options.head_args.begin(), options.head_args.end());
  util::SpawnSpec spec;
  spec.argv = args;
  spec.new_session = true;
  spec.log_path = (temp_dir / "ray-start.log").string();
  auto started = util::Spawn(spec);
  if (!started.ok()) return started.status();
  head_pid = started->pid;
  // The reaper stops the head's whole session when our end of its stdin
  // closes: on close, or when this process dies however it dies.
  util::SpawnSpec reaper;
  reaper.argv = {options.runner.string(),      "ray-reaper", "--session",
                 std::to_string(started->pid), "--temp-dir", temp_dir.string()};
  reaper.new_session = true;
  reaper.stdin_pipe = true;
  auto reaper_started = util::Spawn(reaper);
  if (!reaper_started.ok()) {
    StopProcessSession(started->pid, std::chrono::seconds(2));
    head_pid = -1;
    return Status(Code::kInternal, reaper_started.status().message() +
                                       " (is the stagekit binary installed beside libstagekit?)");
  }
  reaper_pid = reaper_started->pid;
  reaper_fd = reaper_started->stdin_fd;
  const int rc = util::WaitFor(started->pid, std::chrono::minutes(3));
  std::string address = ReadSmallFile(temp_dir / "ray_current_cluster");
  if (rc == 0 && !address.empty()) return address;
  const std::string log = ReadSmallFile(temp_dir / "ray-start.log");
  if (log.find("timed out during startup") != std::string::npos) return std::string();
  return Status(Code::kInternal, "`ray start --head` failed (exit " + std::to_string(rc) + "):\n" +
                                     util::Tail(log, 2000));
}

void RayExecutor::PrivateHead::Stop() {
  if (reaper_fd >= 0) {
    ::close(reaper_fd);  // the reaper stops the head's session and removes temp_dir
    util::WaitFor(reaper_pid, std::chrono::minutes(1));
  } else if (head_pid > 0) {
    StopProcessSession(head_pid, std::chrono::seconds(2));
  }
  reaper_fd = -1;
  reaper_pid = -1;
  head_pid = -1;
}

bool RayExecutor::private_head() const { return head_ != nullptr; }

Result<std::unique_ptr<RayExecutor>> RayExecutor::Open(RayOptions options) {
  if (options.bridge.empty()) options.bridge = DefaultBridge();
  if (options.runner.empty()) options.runner = stagekit::DefaultCli();
  std::error_code ec;
  if (!fs::exists(options.bridge, ec)) {
    return Status(Code::kRayUnavailable,
                  "the ray executor needs Ray's C++ API, but this stagekit was built "
                  "without it (no " +
                      options.bridge.string() + "); " + kInstallHint);
  }
  auto ray = FindRay(options.bin_dir, options.search_path);
  if (!ray.ok()) return ray.status();
  options.bin_dir = ray->bin_dir;
  std::unique_ptr<RayExecutor> ex(new RayExecutor());
  ex->ray_ = std::move(ray).value();
  ex->options_ = options;
  ex->address_ = options.address;
  if (ex->address_.rfind("ray://", 0) == 0) {
    return Status(Code::kUsage, "'" + ex->address_ +
                                    "' is a Ray Client address; the C++ API connects to the "
                                    "GCS directly: give ip:port (port 6379 by default)");
  }
  auto types = AutoscalerNodeTypes(options.autoscaler_config);
  if (!types.ok()) return types.status();
  ex->autoscaler_types_ = std::move(types).value();
  if (ex->address_.empty()) {
    auto head = PrivateHead::Start(options, &ex->address_);
    if (!head.ok()) return head.status();
    ex->head_ = std::move(head).value();
  }
  if (Status s = ex->RefreshNodes(); !s.ok()) return s;
  if (Status s = ex->OpenBridge(); !s.ok()) return s;
  return ex;
}

Status RayExecutor::OpenBridge() {
  // Ray's C++ core logs INFO lines to stderr by default; keep the terminal for
  // stagekit. Ray reads this only from the environment, when the bridge loads;
  // a value the user set is kept (overwrite 0).
  ::setenv("RAY_BACKEND_LOG_LEVEL", "warning", 0);
  // Load the bridge only now: Ray reads its authentication settings from the
  // environment when it is loaded, and the private head sets them.
  auto bridge = std::make_unique<Bridge>();
  {
    auto links = BridgeLinks::Make(options_.bridge, ray_.api_library);
    if (!links.ok()) return links.status();
    bridge->handle = dlopen(links->bridge().c_str(), RTLD_NOW | RTLD_LOCAL);
  }
  if (bridge->handle == nullptr) {
    const char* err = dlerror();
    return Status(Code::kRayUnavailable, "cannot load the Ray bridge " + options_.bridge.string() +
                                             " with " + ray_.api_library.string() + ": " +
                                             (err != nullptr ? err : "unknown error") + "; " +
                                             kInstallHint);
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
  bridge->set_cancel = reinterpret_cast<stagekit_ray_bridge_set_cancel_fn>(
      dlsym(bridge->handle, "stagekit_ray_bridge_set_cancel"));
  bridge->close = reinterpret_cast<stagekit_ray_bridge_close_fn>(
      dlsym(bridge->handle, "stagekit_ray_bridge_close"));
  if (!bridge->open || !bridge->run || !bridge->submit || !bridge->wait || !bridge->stats ||
      !bridge->set_cancel || !bridge->close) {
    return Status(Code::kRayUnavailable,
                  "the Ray bridge " + options_.bridge.string() + " is from another version");
  }
  std::string config =
      CanonicalJson({{"address", address_},
                     {"code_search_path", Json::array({fs::absolute(options_.bridge).string()})}});
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
  if (options_.cancel != nullptr) {
    bridge->set_cancel(
        bridge->bridge,
        [](const void* flag) { return Cancelled(static_cast<const CancelFlag*>(flag)) ? 1 : 0; },
        options_.cancel);
  }
  bridge_ = std::move(bridge);
  return OkStatus();
}

Status RayExecutor::RefreshNodes() {
  util::ChildSpec query;
  query.argv = {ray_.python.string(), "-c", kNodeQuery, address_};
  query.timeout = std::chrono::seconds(60);
  query.cancelled = [cancel = options_.cancel] { return Cancelled(cancel); };
  util::ChildResult r = util::RunChild(query);
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
  head_.reset();  // the driver has left the cluster: its private head can stop
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

Json RayExecutor::Describe() const {
  return {{"address", address()},
          {"private_head", private_head()},
          {"nodes", Nodes()},
          {"stats", Stats()}};
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
  const std::string label = req.Label();
  if (Status s = options.resources.Validate(); !s.ok())
    return Status(s.code(), label + ": " + s.message());
  Json resources = RayResources(options.resources);
  auto with_types = [this](Json nodes) {
    for (const Json& t : autoscaler_types_) nodes.push_back(t);
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
  // options_.warm off, cold in a plain task). The driver knows a stage is warm
  // only when it loaded the stage's library, as the CLI does.
  if (internal::IsWarmStage(Registry::Global(), req.stage)) {
    if (options_.warm) {
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
