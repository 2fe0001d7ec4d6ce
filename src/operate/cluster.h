// `stagekit cluster`: Ray autoscaler configs for AWS (a head made outside
// `ray up`, spot GPU workers that bootstrap themselves through EC2 UserData),
// the workers' start scripts, the head's start command, the SSM tunnel to the
// head and an ordered teardown. Everything a node type declares and everything
// its raylet registers comes from one place (WorkerType::RayResources), so the
// two cannot drift apart.
#ifndef STAGEKIT_SRC_TOOLS_CLUSTER_H_
#define STAGEKIT_SRC_TOOLS_CLUSTER_H_

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "stagekit/status.h"

namespace stagekit::operate {

using OrderedJson = nlohmann::ordered_json;

// The head node type's name. Ray's fake multi-node provider hard-codes it.
inline constexpr const char* kHeadNodeType = "ray.head.default";
inline constexpr int kGcsPort = 6379;
inline constexpr int kClientPort = 10001;
inline constexpr int kDashboardPort = 8265;

struct WorkerType {
  std::string name;           // node type "ray.worker.<name>"
  std::string instance_type;  // e.g. g4dn.2xlarge
  int gpus = 0;
  int cpus = 0;
  std::string spot_max_price;            // USD/hour as written in the spec; empty when on demand
  std::optional<double> price_per_hour;  // USD/hour on demand, for cost records and --budget
  bool on_demand = false;
  int min_workers = 0;
  int max_workers = 0;
  std::map<std::string, int> resources;  // extra custom resources
  std::string ami;                       // overrides the spec's `ami`
  int line = 0;                          // where it is in the spec

  std::string NodeType() const { return "ray.worker." + name; }
  // "vm:<instance type>", registered with value 1 by every worker.
  std::string VmResource() const { return "vm:" + instance_type; }
  // The node type's `resources` in the autoscaler config: CPU, GPU, the vm:
  // resource and the extra ones.
  OrderedJson NodeTypeResources() const;
  // What `ray start --resources` registers: the custom part of the above
  // (CPU and GPU go to --num-cpus / --num-gpus).
  OrderedJson RayResources() const;
};

struct HeadType {
  std::string instance_type;
  int cpus = 2;
  std::string private_ip;                // optional: how workers find the head (else EC2 tags)
  std::optional<double> price_per_hour;  // USD/hour, for cost records and --budget
};

struct ClusterSpec {
  std::string file;  // for messages
  std::string cluster_name;
  std::string region;
  std::string image;
  double idle_timeout_minutes = 0;
  HeadType head;
  std::vector<WorkerType> workers;
  // AWS: the head is not made by `ray up`, so Ray's bootstrap never fills
  // these in; workers cannot launch without an image and a subnet.
  std::string ami;
  std::vector<std::string> subnet_ids;
  std::vector<std::string> security_group_ids;
  std::string iam_instance_profile;  // an ARN or a name

  const WorkerType* FindWorker(const std::string& name) const;
};

// A cluster spec is read up to this size (kInputError past it).
inline constexpr std::uint64_t kMaxClusterSpecBytes = std::uint64_t{1} << 20;

// Reads and checks a cluster spec; errors are "FILE:LINE:COLUMN: message",
// with kInputError.
Result<ClusterSpec> LoadClusterSpec(const std::filesystem::path& file);
Result<ClusterSpec> ParseClusterSpec(const std::string& text, const std::string& file);

enum class Provider { kAws, kFakeMultinode };

struct ConfigOptions {
  Provider provider = Provider::kAws;
  // fake-multinode only: the GCS its fake nodes join (default: <node ip>:6379).
  std::string gcs_address;
};

// `ray start` for the head: port, CPUs, no GPU, the autoscaling config.
std::vector<std::string> HeadRayStart(const ClusterSpec& spec, const std::string& config_path);
// The head's container: the same image as the workers, host network, the
// config mounted read-only; `config_path` is the config on the host.
std::string HeadCommand(const ClusterSpec& spec, const std::string& config_path);
// `ray start` for a worker; `$HEAD_IP` is left for the shell to expand.
std::vector<std::string> WorkerRayStart(const WorkerType& worker);
// The worker's EC2 UserData: a bash script that finds the head, pulls the
// image and runs the worker container.
std::string WorkerUserData(const ClusterSpec& spec, const WorkerType& worker);

// What AWS needs beyond a valid spec: an AMI for every worker, subnets.
Status CheckAwsSpec(const ClusterSpec& spec);
// The Ray autoscaler config: complete (Ray's defaults filled in), since the
// autoscaler on a head made outside `ray up` reads the file as it is.
OrderedJson MakeAutoscalerConfig(const ClusterSpec& spec, const ConfigOptions& options);
std::string ToYaml(const OrderedJson& value);

// Words quoted with ShellQuote (tools/ship.h); --flag=VALUE quotes VALUE only.
std::string ShellJoin(const std::vector<std::string>& argv);

struct TunnelOptions {
  std::string instance_id;
  std::string region;  // empty: $AWS_REGION, $AWS_DEFAULT_REGION
  std::string aws = "aws";
  int client_port = kClientPort;
  int dashboard_port = kDashboardPort;
  int local_client_port = kClientPort;
  int local_dashboard_port = kDashboardPort;
};
// The two `aws ssm start-session` port forwards (Ray client, dashboard).
Result<std::vector<std::vector<std::string>>> TunnelCommands(const TunnelOptions& options);
// The environment to use through the tunnel, as shell `export` lines.
std::string TunnelEnvironment(const TunnelOptions& options);
// Runs both sessions until one ends or Ctrl-C; kRayUnavailable when a session ends.
Status RunTunnel(const TunnelOptions& options, std::ostream& log);

struct DownOptions {
  std::string config;  // the autoscaler YAML
  std::string ray = "ray";
  std::chrono::milliseconds wait{std::chrono::minutes(5)};  // for workers to go
  std::chrono::milliseconds poll{std::chrono::seconds(10)};
};
// `ray down --workers-only`, waits until `ray get-worker-ips` lists none, and
// only then `ray down` for the head. Refuses (kStageFailed) while workers are up.
Status ClusterDown(const DownOptions& options, std::ostream& log);

}  // namespace stagekit::operate

#endif  // STAGEKIT_SRC_TOOLS_CLUSTER_H_
