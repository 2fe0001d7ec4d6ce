// The Ray executor: runs each stage as a task on a Ray cluster through Ray's
// C++ API. Everything that includes Ray's headers lives in a separately built
// bridge library (libstagekit_ray.so, compiled with Ray's old libstdc++ string
// ABI) that is loaded on demand; this header and libstagekit need no Ray.
#ifndef STAGEKIT_RAY_H_
#define STAGEKIT_RAY_H_

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "stagekit/executor.h"
#include "stagekit/export.h"

namespace stagekit {

struct STAGEKIT_API RayOptions {
  // "ip:port" of a running cluster's GCS. Empty: a private local head is
  // started (own temp dir and ports, usage stats off, token authentication
  // on) and stopped again on close, also when this process dies: a reaper
  // process watches it. (The command line fills this from --address, else
  // $RAY_ADDRESS; the library reads neither.)
  std::string address;
  std::vector<std::filesystem::path> libraries;  // stage libraries the workers load
  int max_attempts = 3;  // runs of a stage whose worker or node dies (system failures)
  // The most of one output the driver holds when it fetches it: a larger
  // output is read in windows of this size by a reader beside it.
  std::uint64_t fetch_window_bytes = 32ull << 20;
  // The S3-compatible endpoint (http://host:port) the nodes upload artifacts
  // to (StageOptions::artifact); empty: AWS itself. Each node runs its own
  // `aws` ($STAGEKIT_AWS there, else `aws` on its PATH) with its own
  // credentials (instance role, environment or ~/.aws): none leave the driver.
  std::string s3_endpoint;
  // An autoscaler config (`stagekit cluster config`; the CLI takes
  // $STAGEKIT_AUTOSCALER_CONFIG): its worker node types make a stage feasible
  // before such a node is up. Read once, by Open (kInputError when unreadable).
  std::filesystem::path autoscaler_config;
  // Warm stages run on warm actors (false: cold, in plain tasks; the CLI's
  // STAGEKIT_WARM=0).
  bool warm = true;
  // Once set, running stages are stopped and fetches end (kInterrupted);
  // nullptr: never.
  const CancelFlag* cancel = nullptr;
  // Private head only:
  int num_cpus = 0;                      // 0: every CPU of this machine
  std::uint64_t object_store_bytes = 0;  // 0: 512 MiB
  std::vector<std::string> head_args;    // more `ray start` arguments, e.g. "--num-gpus=1"
  // Where things are; empty means the default.
  std::filesystem::path bridge;  // libstagekit_ray.so next to libstagekit.so
  // The bin directory of the Ray to use (`ray`, and `python` beside it or
  // named by `ray`'s first line); the CLI takes $STAGEKIT_RAY_BIN_DIR. Empty:
  // the first `ray` on `search_path`, else the build's own environment.
  std::filesystem::path bin_dir;
  std::string search_path;       // ':'-separated, like $PATH (the CLI passes $PATH)
  std::filesystem::path runner;  // the stagekit binary (for the reaper): beside libstagekit
};

// A Ray installation found at run time.
struct STAGEKIT_API RayInstall {
  std::filesystem::path bin_dir;      // has `ray`
  std::filesystem::path python;       // the interpreter that has the `ray` package
  std::filesystem::path package;      // that package (.../site-packages/ray)
  std::filesystem::path api_library;  // its C++ API: package/cpp/lib/libray_api.so (ray-cpp)
  std::string version;                // "2.60.0"
  std::string found_by;               // "STAGEKIT_RAY_BIN_DIR", "PATH", "the build's environment"
};

// The Ray version the bridge was built against; "" when stagekit was built without Ray.
STAGEKIT_API std::string RayBridgeVersion();

// Finds Ray in `bin_dir`, or (empty) on `search_path`, else in the build's
// environment. kRayUnavailable, saying what to install, when there is none,
// when its Python package or C++ API (ray-cpp) is missing, or when its version
// is not the bridge's (a mismatched libray_api.so crashes the process).
STAGEKIT_API Result<RayInstall> FindRay(const std::filesystem::path& bin_dir,
                                        const std::string& search_path);

// Whether the ray executor can be used: the bridge is built and FindRay finds
// a matching Ray; when not, `why` says how to fix it.
STAGEKIT_API bool RayAvailable(std::string* why = nullptr,
                               const std::filesystem::path& bin_dir = {},
                               const std::string& search_path = {});

// Process environment. The library reads no settings from the environment;
// the command line maps its variables into these options. The one exception
// is Ray's own: Ray's C++ core reads its authentication and logging settings
// only from the environment, when the bridge loads. So a private head sets
// RAY_AUTH_MODE=token, RAY_AUTH_TOKEN_PATH and RAY_USAGE_STATS_ENABLED=0 (the
// Python node query and `ray` commands inherit them) and puts the earlier
// values back when it stops; Open sets RAY_BACKEND_LOG_LEVEL=warning unless
// it is set. On the workers, the bridge reads STAGEKIT_SCRATCH_DIR (else
// TMPDIR) and STAGEKIT_AWS: settings of the node, not of the run.

class STAGEKIT_API RayExecutor final : public StageExecutor {
 public:
  // kRayUnavailable when Ray is not installed or the bridge is missing;
  // kRayUnavailable when the cluster cannot be reached or joined, kInternal when a private
  // head cannot be started.
  static Result<std::unique_ptr<RayExecutor>> Open(RayOptions options);
  ~RayExecutor() override;
  RayExecutor(const RayExecutor&) = delete;
  RayExecutor& operator=(const RayExecutor&) = delete;

  std::string_view name() const override { return "ray"; }
  // Fails with kInfeasible, before submitting, when no node of the cluster
  // can ever provide the stage's resources.
  //
  // Data plane: a stage's output is its task's result in the object store.
  // A stage that reads another's output gets that result by reference,
  // resolved by Ray on the node that runs it; the driver never reads and
  // puts an intermediate back. The driver fetches an output into
  // request.output only when options.fetch_output; otherwise it learns the
  // stage's RunStats from a small task run beside the result, and the bytes
  // stay on the cluster.
  Result<RunStats> Run(const StageRequest& request, const StageOptions& options) override;
  bool outputs_stay_remote() const override { return true; }
  // Stages submitted here are awaited together by one driver thread (see
  // ray_bridge_api.h): --jobs can be in the thousands.
  bool asynchronous() const override { return true; }
  void Submit(std::uint64_t ticket, const StageRequest& request,
              const StageOptions& options) override;
  std::vector<StageCompletion> AwaitCompletions(std::chrono::milliseconds timeout) override;

  const std::string& address() const { return address_; }
  bool private_head() const;
  // {"objects_put", "bytes_put", "tasks_submitted", "system_retries",
  //  "actors_started", "actors_alive"}: warm stages run on Ray actors, one per
  //  instance key (stage, job spec, setup object, resources) and concurrent
  //  use, so never more than the run's --jobs per key; they are killed on close.
  Json Stats() const;
  // The alive nodes seen at open: [{"node": "ip:port", "resources": {...}}].
  Json Nodes() const override;
  // {"address", "private_head", "nodes", "stats"}.
  Json Describe() const override;

 private:
  struct Bridge;
  struct PrivateHead;
  struct Prepared {
    std::string request, task, label;  // the bridge's request and task JSON
  };
  RayExecutor() = default;
  // Checks a stage (resources, feasibility) and says what the bridge gets.
  Result<Prepared> Prepare(const StageRequest& request, const StageOptions& options);
  Status RefreshNodes();
  // Loads the bridge library and joins the cluster at address_ through it.
  Status OpenBridge();

  RayOptions options_;
  RayInstall ray_;  // the Ray found at open
  std::string address_;
  std::unique_ptr<PrivateHead> head_;  // when no address was given
  std::unique_ptr<Bridge> bridge_;
  mutable std::mutex mu_;
  std::vector<StageCompletion> refused_;  // submitted stages refused before the bridge
  Json nodes_;
  Json autoscaler_types_ = Json::array();  // from options_.autoscaler_config, read at Open
  std::chrono::steady_clock::time_point nodes_at_;
};

// Ray's resource map for a stage: {"CPU": cpus, "GPU": gpus, "memory": bytes,
// custom...}, leaving out zeros.
STAGEKIT_API Json RayResources(const Resources& resources);

// OK when some node in `nodes` ([{"node", "resources"}]) has at least every
// resource of `request`; else kInfeasible naming what is missing and what
// the nodes offer.
STAGEKIT_API Status CheckFeasible(const Json& request, const Json& nodes, const std::string& label);

// Stops every process of session `sid` the way `ray stop` orders it (raylets,
// then the rest, then gcs_server): SIGTERM, then SIGKILL after `grace`.
// Returns how many processes it signalled. Never touches other sessions.
STAGEKIT_API int StopProcessSession(pid_t sid, std::chrono::milliseconds grace);

}  // namespace stagekit

#endif  // STAGEKIT_RAY_H_
