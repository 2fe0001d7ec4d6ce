#include "operate/cluster.h"

#include <signal.h>
#include <yaml-cpp/yaml.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include "deploy/ship.h"
#include "stagekit/executor.h"
#include "util/files.h"
#include "util/outcome.h"
#include "util/process.h"
#include "util/regex.h"
#include "util/text.h"

namespace stagekit::operate {
namespace {

namespace fs = std::filesystem;

class SpecParser {
 public:
  explicit SpecParser(std::string file) : file_(std::move(file)) {}

  Status Error(const YAML::Mark& mark, const std::string& message) const {
    std::string where = file_;
    if (!mark.is_null())
      where += ":" + std::to_string(mark.line + 1) + ":" + std::to_string(mark.column + 1);
    return Status(Code::kInputError, where + ": " + message);
  }
  Status Error(const YAML::Node& node, const std::string& message) const {
    return Error(node.Mark(), message);
  }

  // Unknown keys are errors; `what` names the mapping in messages.
  Status CheckKeys(const YAML::Node& map, const std::string& what,
                   const std::set<std::string>& known) const {
    if (!map.IsMap()) return Error(map, what + " must be a mapping");
    for (const auto& kv : map) {
      std::string key = kv.first.Scalar();
      if (known.count(key) == 0) {
        std::string list;
        for (const std::string& k : known) list += (list.empty() ? "" : ", ") + k;
        return Error(kv.first, "unknown key '" + key + "' in " + what + " (known: " + list + ")");
      }
    }
    return OkStatus();
  }

  Status String(const YAML::Node& map, const char* key, const std::string& what, bool required,
                std::string& out, const char* pattern = nullptr, const char* pattern_hint = "") {
    YAML::Node v = map[key];
    if (!v) {
      if (required) return Error(map, what + " needs '" + key + "'");
      return OkStatus();
    }
    if (!v.IsScalar() || v.Scalar().empty())
      return Error(v, "'" + std::string(key) + "' must be a non-empty string");
    out = v.Scalar();
    if (pattern != nullptr && !util::Regex(pattern).FullMatch(out))
      return Error(v, "'" + std::string(key) + "' is '" + out + "': " + pattern_hint);
    return OkStatus();
  }

  Status Int(const YAML::Node& map, const char* key, const std::string& what, bool required,
             int min, int& out) {
    YAML::Node v = map[key];
    if (!v) {
      if (required) return Error(map, what + " needs '" + key + "'");
      return OkStatus();
    }
    if (!v.IsScalar() || !util::Regex("[0-9]{1,6}").FullMatch(v.Scalar()))
      return Error(v, "'" + std::string(key) +
                          "' must be a whole number (Ray's autoscaler "
                          "config takes integers)");
    out = std::stoi(v.Scalar());
    if (out < min)
      return Error(v, "'" + std::string(key) + "' must be at least " + std::to_string(min));
    return OkStatus();
  }

  // An optional price in USD per hour, 0 or more ("0.1664").
  Status Price(const YAML::Node& map, const char* key, std::optional<double>& out) {
    YAML::Node v = map[key];
    if (!v) return OkStatus();
    if (!v.IsScalar() || !util::Regex("[0-9]{1,4}(\\.[0-9]{1,6})?").FullMatch(v.Scalar()))
      return Error(v, "'" + std::string(key) + "' must be a price in USD per hour, e.g. 0.30");
    out = std::strtod(v.Scalar().c_str(), nullptr);
    return OkStatus();
  }

  Status Strings(const YAML::Node& map, const char* key, std::vector<std::string>& out,
                 const char* pattern, const char* pattern_hint) {
    YAML::Node v = map[key];
    if (!v) return OkStatus();
    if (!v.IsSequence() || v.size() == 0)
      return Error(v, "'" + std::string(key) + "' must be a non-empty list");
    for (const YAML::Node& item : v) {
      if (!item.IsScalar() || !util::Regex(pattern).FullMatch(item.Scalar()))
        return Error(item, "'" + std::string(key) + "' entries must be " + pattern_hint);
      out.push_back(item.Scalar());
    }
    return OkStatus();
  }

  // Parses a cluster spec: its top-level keys, the head, then each worker type.
  Result<ClusterSpec> Parse(const std::string& text) {
    YAML::Node root;
    try {
      root = YAML::Load(text);
    } catch (const YAML::Exception& e) {
      return Error(e.mark, e.msg);
    }
    if (!root || root.IsNull()) return Error(YAML::Mark::null_mark(), "the cluster spec is empty");
    ClusterSpec spec;
    spec.file = file_;
    if (Status s = ParseTopLevel(root, spec); !s.ok()) return s;
    if (Status s = ParseHead(root, spec.head); !s.ok()) return s;
    if (Status s = ParseWorkers(root, spec.workers); !s.ok()) return s;
    return spec;
  }

 private:
  // Checks the top-level keys and reads the cluster-wide settings into `spec`.
  Status ParseTopLevel(YAML::Node& root, ClusterSpec& spec) {
    if (Status s =
            CheckKeys(root, "the cluster spec",
                      {"cluster_name", "region", "image", "idle_timeout_minutes", "head", "workers",
                       "ami", "subnet_ids", "security_group_ids", "iam_instance_profile"});
        !s.ok())
      return s;
    const std::string top = "the cluster spec";
    if (Status s = String(root, "cluster_name", top, true, spec.cluster_name,
                          "[A-Za-z][A-Za-z0-9_-]{0,63}",
                          "use letters, digits, '-' and '_' (it becomes an EC2 tag)");
        !s.ok())
      return s;
    if (Status s = String(root, "region", top, true, spec.region, "[a-z]{2}(-[a-z]+)+-[0-9]+",
                          "not an AWS region (e.g. us-east-1)");
        !s.ok())
      return s;
    if (Status s = String(root, "image", top, true, spec.image, "[^\\s'\"]+",
                          "a docker image reference has no spaces or quotes");
        !s.ok())
      return s;
    if (Status s = ParseIdleTimeout(root, spec); !s.ok()) return s;
    if (Status s = String(root, "ami", top, false, spec.ami, "ami-[0-9a-f]{8,17}",
                          "not an AMI id (ami-...)");
        !s.ok())
      return s;
    if (Status s = Strings(root, "subnet_ids", spec.subnet_ids, "subnet-[0-9a-f]{8,17}",
                           "subnet ids (subnet-...)");
        !s.ok())
      return s;
    if (Status s = Strings(root, "security_group_ids", spec.security_group_ids, "sg-[0-9a-f]{8,17}",
                           "security group ids (sg-...)");
        !s.ok())
      return s;
    return String(root, "iam_instance_profile", top, false, spec.iam_instance_profile,
                  "[A-Za-z0-9+=,.@_:/-]+", "an instance profile name or ARN");
  }

  // Reads the required 'idle_timeout_minutes', a number above 0.
  Status ParseIdleTimeout(YAML::Node& root, ClusterSpec& spec) {
    YAML::Node idle = root["idle_timeout_minutes"];
    if (!idle)
      return Error(root,
                   "the cluster spec needs 'idle_timeout_minutes': without it idle spot workers "
                   "are never reaped (Ray's default is 5)");
    char* end = nullptr;
    spec.idle_timeout_minutes =
        idle.IsScalar() ? std::strtod(idle.Scalar().c_str(), &end) : std::nan("");
    if (!idle.IsScalar() || end == idle.Scalar().c_str() || *end != '\0' ||
        !std::isfinite(spec.idle_timeout_minutes) || spec.idle_timeout_minutes <= 0)
      return Error(idle, "'idle_timeout_minutes' must be a number above 0 (fractions allowed)");
    return OkStatus();
  }

  // Reads the required 'head' mapping into `head_type`.
  Status ParseHead(YAML::Node& root, HeadType& head_type) {
    YAML::Node head = root["head"];
    if (!head) return Error(root, "the cluster spec needs 'head' ({instance_type, cpus?})");
    if (Status s =
            CheckKeys(head, "'head'", {"instance_type", "cpus", "private_ip", "price_per_hour"});
        !s.ok())
      return s;
    if (Status s = String(head, "instance_type", "'head'", true, head_type.instance_type,
                          "[a-z0-9-]+\\.[a-z0-9-]+", "not an EC2 instance type (e.g. t3.xlarge)");
        !s.ok())
      return s;
    if (Status s = Int(head, "cpus", "'head'", false, 0, head_type.cpus); !s.ok()) return s;
    if (Status s = String(head, "private_ip", "'head'", false, head_type.private_ip,
                          "([0-9]{1,3}\\.){3}[0-9]{1,3}", "not an IPv4 address");
        !s.ok())
      return s;
    return Price(head, "price_per_hour", head_type.price_per_hour);
  }

  // Reads the required, non-empty 'workers' list into `workers_out`; names must be unique.
  Status ParseWorkers(YAML::Node& root, std::vector<WorkerType>& workers_out) {
    YAML::Node workers = root["workers"];
    if (!workers || !workers.IsSequence() || workers.size() == 0)
      return Error(workers ? workers : root,
                   "the cluster spec needs 'workers': a non-empty list of worker node types");
    std::set<std::string> names;
    for (const YAML::Node& node : workers) {
      WorkerType w;
      if (Status s = ParseWorker(node, names, w); !s.ok()) return s;
      workers_out.push_back(std::move(w));
    }
    return OkStatus();
  }

  // Reads one entry of 'workers' into `w`, adding its name to `names`.
  Status ParseWorker(const YAML::Node& node, std::set<std::string>& names, WorkerType& w) {
    w.line = node.Mark().line + 1;
    if (Status s =
            CheckKeys(node, "a worker",
                      {"name", "instance_type", "gpus", "cpus", "spot_max_price", "on_demand",
                       "min_workers", "max_workers", "resources", "ami", "price_per_hour"});
        !s.ok())
      return s;
    if (Status s = String(node, "name", "a worker", true, w.name, "[A-Za-z0-9_-]{1,64}",
                          "use letters, digits, '-' and '_'");
        !s.ok())
      return s;
    const std::string what = "worker '" + w.name + "'";
    if (!names.insert(w.name).second)
      return Error(node["name"], "two workers are named '" + w.name + "'");
    if (Status s =
            String(node, "instance_type", what, true, w.instance_type, "[a-z0-9-]+\\.[a-z0-9-]+",
                   "not an EC2 instance type (e.g. g4dn.2xlarge)");
        !s.ok())
      return s;
    if (Status s = Int(node, "gpus", what, true, 0, w.gpus); !s.ok()) return s;
    if (Status s = Int(node, "cpus", what, true, 1, w.cpus); !s.ok()) return s;
    if (Status s = Int(node, "min_workers", what, false, 0, w.min_workers); !s.ok()) return s;
    if (Status s = Int(node, "max_workers", what, true, 1, w.max_workers); !s.ok()) return s;
    if (w.min_workers > w.max_workers)
      return Error(node["min_workers"], what + ": min_workers (" + std::to_string(w.min_workers) +
                                            ") is above max_workers (" +
                                            std::to_string(w.max_workers) + ")");
    if (Status s = String(node, "ami", what, false, w.ami, "ami-[0-9a-f]{8,17}",
                          "not an AMI id (ami-...)");
        !s.ok())
      return s;
    if (Status s = Price(node, "price_per_hour", w.price_per_hour); !s.ok()) return s;
    if (Status s = ParseWorkerMarket(node, what, w); !s.ok()) return s;
    return ParseWorkerResources(node, w);
  }

  // Reads 'on_demand' and 'spot_max_price': a worker is on demand or has a spot price cap.
  Status ParseWorkerMarket(const YAML::Node& node, const std::string& what, WorkerType& w) {
    YAML::Node price = node["spot_max_price"];
    YAML::Node on_demand = node["on_demand"];
    if (on_demand) {
      if (!on_demand.IsScalar() || (on_demand.Scalar() != "true" && on_demand.Scalar() != "false"))
        return Error(on_demand, "'on_demand' must be true or false");
      w.on_demand = on_demand.Scalar() == "true";
    }
    if (price && w.on_demand)
      return Error(price, what + " has both 'spot_max_price' and 'on_demand: true'; pick one");
    if (!price && !w.on_demand)
      return Error(node, what +
                             " is a spot worker without a price cap: set 'spot_max_price' "
                             "(USD per hour, e.g. 0.30) or 'on_demand: true'");
    if (price) {
      const std::string& p = price.Scalar();
      if (!price.IsScalar() || !util::Regex("[0-9]{1,4}(\\.[0-9]{1,6})?").FullMatch(p) ||
          std::strtod(p.c_str(), nullptr) <= 0)
        return Error(price, "'spot_max_price' must be a price in USD per hour above 0, e.g. 0.30");
      w.spot_max_price = p;
    }
    return OkStatus();
  }

  // Reads the worker's optional custom 'resources' (NAME: COUNT) into w.resources.
  Status ParseWorkerResources(const YAML::Node& node, WorkerType& w) {
    if (YAML::Node res = node["resources"]) {
      if (!res.IsMap()) return Error(res, "'resources' must be a mapping of NAME: COUNT");
      for (const auto& kv : res) {
        std::string rname = kv.first.Scalar();
        if (!util::Regex("[A-Za-z0-9_.:/-]{1,128}").FullMatch(rname))
          return Error(kv.first,
                       "resource name '" + rname + "': use letters, digits and _ . : / -");
        if (rname == "CPU" || rname == "GPU" || rname == "memory" ||
            rname == "object_store_memory" || rname.rfind("node:", 0) == 0)
          return Error(kv.first, "'" + rname + "' is not a custom resource; set 'cpus'/'gpus'");
        if (rname.rfind("vm:", 0) == 0)
          return Error(kv.first, "'" + rname +
                                     "': every worker registers vm:<instance type> "
                                     "by itself; do not list vm: resources");
        const YAML::Node& amount = kv.second;
        if (!amount.IsScalar() || !util::Regex("[0-9]{1,6}").FullMatch(amount.Scalar()))
          return Error(amount, "resource '" + rname +
                                   "' must be a whole number (Ray's autoscaler config takes "
                                   "integers)");
        w.resources[rname] = std::stoi(amount.Scalar());
      }
    }
    return OkStatus();
  }

  std::string file_;
};

// True when a YAML reader would not read `s` back as this string.
bool NeedsQuotes(const std::string& s) {
  if (s.empty()) return true;
  static const util::Regex kSpecial(
      "(?:[-+]?(?:[0-9][0-9_]*)?(?:\\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?|0x[0-9a-fA-F]+|0o[0-7]+|"
      "[-+]?\\.(?:inf|Inf|INF)|\\.(?:nan|NaN|NAN)|~|null|Null|NULL|"
      "y|Y|n|N|yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF|"
      "[0-9:]+)");
  return kSpecial.FullMatch(s);
}

void Emit(YAML::Emitter& out, const OrderedJson& v) {
  switch (v.type()) {
    case OrderedJson::value_t::object:
      if (v.empty()) {
        out << YAML::Flow << YAML::BeginMap << YAML::EndMap;
        break;
      }
      out << YAML::BeginMap;
      for (const auto& [k, item] : v.items()) {
        out << YAML::Key;
        if (NeedsQuotes(k)) out << YAML::DoubleQuoted;
        out << k << YAML::Value;
        Emit(out, item);
      }
      out << YAML::EndMap;
      break;
    case OrderedJson::value_t::array:
      if (v.empty()) {
        out << YAML::Flow << YAML::BeginSeq << YAML::EndSeq;
        break;
      }
      out << YAML::BeginSeq;
      for (const auto& item : v) Emit(out, item);
      out << YAML::EndSeq;
      break;
    case OrderedJson::value_t::string: {
      const std::string& s = v.get_ref<const std::string&>();
      if (s.find('\n') != std::string::npos) {
        out << YAML::Literal << s;
      } else {
        if (NeedsQuotes(s)) out << YAML::DoubleQuoted;
        out << s;
      }
      break;
    }
    case OrderedJson::value_t::boolean:
      out << (v.get<bool>() ? "true" : "false");
      break;
    case OrderedJson::value_t::null:
      out << YAML::Null;
      break;
    default:
      out << v.dump();  // numbers: JSON's spelling is valid YAML
  }
}

std::string Join(const std::vector<std::string>& parts, const std::string& sep) {
  std::string out;
  for (const std::string& p : parts) out += (out.empty() ? "" : sep) + p;
  return out;
}

}  // namespace

OrderedJson WorkerType::NodeTypeResources() const {
  OrderedJson r = OrderedJson::object();
  r["CPU"] = cpus;
  r["GPU"] = gpus;
  const OrderedJson custom = RayResources();
  for (const auto& [k, v] : custom.items()) r[k] = v;
  return r;
}

OrderedJson WorkerType::RayResources() const {
  OrderedJson r = OrderedJson::object();
  r[VmResource()] = 1;
  for (const auto& [k, v] : resources) r[k] = v;
  return r;
}

const WorkerType* ClusterSpec::FindWorker(const std::string& name) const {
  for (const WorkerType& w : workers) {
    if (w.name == name || w.NodeType() == name) return &w;
  }
  return nullptr;
}

Result<ClusterSpec> ParseClusterSpec(const std::string& text, const std::string& file) {
  return SpecParser(file).Parse(text);
}

Result<ClusterSpec> LoadClusterSpec(const fs::path& file) {
  auto text = util::ReadFile(file, kMaxClusterSpecBytes);
  if (!text.ok()) {
    return Status(Code::kInputError, "the cluster spec: " + text.status().message());
  }
  return ParseClusterSpec(*text, file.string());
}

std::string ShellJoin(const std::vector<std::string>& argv) {
  std::vector<std::string> quoted;
  static const util::Regex kFlag("(--[a-z][a-z0-9-]*=)(.*)");
  for (const std::string& a : argv) {
    std::vector<std::string> m;
    // --resources='{"vm:x": 1}' rather than '--resources={"vm:x": 1}'.
    if (kFlag.FullMatch(a, &m))
      quoted.push_back(m[1] + util::ShellQuote(m[2]));
    else
      quoted.push_back(util::ShellQuote(a));
  }
  return Join(quoted, " ");
}

std::vector<std::string> HeadRayStart(const ClusterSpec& spec, const std::string& config_path) {
  return {"ray",
          "start",
          "--head",
          "--port=" + std::to_string(kGcsPort),
          "--num-cpus=" + std::to_string(spec.head.cpus),
          "--num-gpus=0",
          "--dashboard-port=" + std::to_string(kDashboardPort),
          "--ray-client-server-port=" + std::to_string(kClientPort),
          "--autoscaling-config=" + config_path,
          "--disable-usage-stats"};
}

std::string HeadCommand(const ClusterSpec& spec, const std::string& config_path) {
  const std::string in_container = "/tmp/ray_bootstrap_config.yaml";
  std::vector<std::string> ray = HeadRayStart(spec, in_container);
  ray.push_back("--block");
  std::ostringstream s;
  s << "# The Ray head of cluster '" << spec.cluster_name << "' (" << spec.head.instance_type
    << ", on demand, no GPU). Tag the instance ray-cluster-name=" << spec.cluster_name
    << " and ray-node-type=head\n"
    << "# (workers without head.private_ip find it by these tags; `ray down` and\n"
    << "# `ray get-worker-ips` use Ray's own tags). Copy the config from `stagekit cluster\n"
    << "# config` to " << config_path << " first; the container reaches AWS through the\n"
    << "# instance role to launch and stop workers.\n"
    << "docker run -d --name ray-head --restart=unless-stopped --network host --shm-size=2g \\\n"
    << "  --ulimit nofile=65536:65536 -e RAY_USAGE_STATS_ENABLED=0 \\\n"
    << "  -v " << util::ShellQuote(config_path) << ":" << in_container << ":ro \\\n"
    << "  " << util::ShellQuote(spec.image) << " \\\n"
    << "  " << ShellJoin(ray) << "\n";
  return s.str();
}

std::vector<std::string> WorkerRayStart(const WorkerType& worker) {
  return {"ray",
          "start",
          "--address=$HEAD_IP:" + std::to_string(kGcsPort),
          "--num-cpus=" + std::to_string(worker.cpus),
          "--num-gpus=" + std::to_string(worker.gpus),
          "--resources=" + worker.RayResources().dump(),
          "--block"};
}

std::string WorkerUserData(const ClusterSpec& spec, const WorkerType& worker) {
  std::ostringstream s;
  s << "#!/bin/bash\n"
    << "# Generated by `stagekit cluster userdata` from " << fs::path(spec.file).filename().string()
    << ": starts the Ray worker of node type\n"
    << "# " << worker.NodeType() << " (" << worker.instance_type << ") of cluster '"
    << spec.cluster_name << "' in the head's image.\n"
    << "# Its --num-cpus/--num-gpus/--resources are the node type's resources in the autoscaler\n"
    << "# config, generated from the same spec: regenerate both together, never edit one.\n"
    << "set -u\n"
    << "exec >>/var/log/stagekit-worker.log 2>&1\n"
    << "IMAGE=" << util::ShellQuote(spec.image) << "\n"
    << "give_up() { echo \"stagekit worker: $*; shutting down\"; shutdown -h now; exit 1; }\n";
  if (!spec.head.private_ip.empty()) {
    s << "HEAD_IP=" << spec.head.private_ip << "  # head.private_ip in the spec\n";
  } else {
    s << "# The head: the running instance tagged ray-cluster-name=" << spec.cluster_name
      << ", ray-node-type=head\n"
      << "# (needs the aws CLI on the AMI and ec2:DescribeInstances in the instance profile).\n"
      << "HEAD_IP=\n"
      << "for _ in $(seq 60); do\n"
      << "  HEAD_IP=$(aws ec2 describe-instances --region " << spec.region << " \\\n"
      << "    --filters Name=tag:ray-cluster-name,Values=" << spec.cluster_name
      << " Name=tag:ray-node-type,Values=head \\\n"
      << "    Name=instance-state-name,Values=running \\\n"
      << "    --query 'Reservations[0].Instances[0].PrivateIpAddress' --output text) || true\n"
      << "  case \"$HEAD_IP\" in ''|None) sleep 5 ;; *) break ;; esac\n"
      << "done\n"
      << "case \"$HEAD_IP\" in ''|None) give_up \"no running head tagged ray-cluster-name="
      << spec.cluster_name << "\" ;; esac\n";
  }
  s << "for _ in $(seq 5); do docker pull \"$IMAGE\" && break; sleep 10; done\n"
    << "docker run -d --name ray-worker --restart=no";
  if (worker.gpus > 0) s << " --gpus all";
  s << " --network host --shm-size=2g \\\n"
    << "  --ulimit nofile=65536:65536 -e RAY_USAGE_STATS_ENABLED=0 \"$IMAGE\" \\\n  ";
  std::vector<std::string> ray = WorkerRayStart(worker);
  for (std::size_t i = 0; i < ray.size(); ++i) {
    if (i > 0) s << " ";
    if (ray[i].rfind("--address=", 0) == 0)
      s << "--address=\"$HEAD_IP:" << kGcsPort << "\"";
    else
      s << ShellJoin({ray[i]});
  }
  s << " \\\n  || give_up \"docker run failed\"\n";
  return s.str();
}

Status CheckAwsSpec(const ClusterSpec& spec) {
  if (spec.subnet_ids.empty())
    return Status(Code::kInputError,
                  spec.file +
                      ": the cluster spec needs 'subnet_ids' for AWS: the head is not made "
                      "by `ray up`, so Ray never fills the workers' SubnetIds in (use "
                      "--provider fake-multinode for a local test cluster)");
  for (const WorkerType& w : spec.workers) {
    if (w.ami.empty() && spec.ami.empty())
      return Status(Code::kInputError,
                    spec.file + ":" + std::to_string(w.line) + ": worker '" + w.name +
                        "' has no AMI: set 'ami' on it or for the whole spec (a GPU AMI with "
                        "docker and the NVIDIA container toolkit)");
  }
  return OkStatus();
}

namespace {
// `ray up`'s way: the config at ~/ray_bootstrap_config.yaml, ~ left to the shell.
std::string HeadStartLine(const ClusterSpec& spec) {
  std::string line = ShellJoin(HeadRayStart(spec, "CONFIG"));
  const std::string flag = "--autoscaling-config=CONFIG";
  line.replace(line.find(flag), flag.size(), "--autoscaling-config=~/ray_bootstrap_config.yaml");
  return line;
}

// The config's 'provider' block: AWS in the spec's region, or Ray's fake multinode provider.
OrderedJson ProviderConfig(const ClusterSpec& spec, const ConfigOptions& options) {
  OrderedJson provider;
  if (options.provider == Provider::kAws) {
    provider["type"] = "aws";
    provider["region"] = spec.region;
  } else {
    provider["type"] = "fake_multinode";
    provider["use_node_id_as_ip"] = true;
    if (!options.gcs_address.empty()) provider["gcs_address"] = options.gcs_address;
  }
  provider["cache_stopped_nodes"] = false;
  provider["disable_launch_config_check"] = true;
  provider["disable_node_updaters"] = true;
  return provider;
}

// The head's node type: its CPUs, no GPU, never scaled.
OrderedJson HeadNodeTypeConfig(const ClusterSpec& spec, bool aws) {
  OrderedJson head;
  head["resources"] = {{"CPU", spec.head.cpus}, {"GPU", 0}};
  head["node_config"] = OrderedJson::object();
  if (aws) head["node_config"]["InstanceType"] = spec.head.instance_type;
  head["min_workers"] = 0;
  head["max_workers"] = 0;
  return head;
}

// A worker's EC2 node_config on AWS: instance type, AMI, network, market and UserData.
OrderedJson AwsWorkerNodeConfig(const ClusterSpec& spec, const WorkerType& w) {
  OrderedJson nc = OrderedJson::object();
  nc["InstanceType"] = w.instance_type;
  std::string ami = w.ami.empty() ? spec.ami : w.ami;
  if (!ami.empty()) nc["ImageId"] = ami;
  if (!spec.subnet_ids.empty()) nc["SubnetIds"] = spec.subnet_ids;
  if (!spec.security_group_ids.empty()) nc["SecurityGroupIds"] = spec.security_group_ids;
  if (!spec.iam_instance_profile.empty()) {
    nc["IamInstanceProfile"] = {{spec.iam_instance_profile.rfind("arn:", 0) == 0 ? "Arn" : "Name",
                                 spec.iam_instance_profile}};
  }
  if (!w.on_demand) {
    nc["InstanceMarketOptions"] = {{"MarketType", "spot"},
                                   {"SpotOptions", {{"MaxPrice", w.spot_max_price}}}};
  }
  // A worker that cannot start shuts itself down; this makes that a termination.
  nc["InstanceInitiatedShutdownBehavior"] = "terminate";
  nc["UserData"] = WorkerUserData(spec, w);
  return nc;
}

// The config's 'available_node_types': the head, then one per worker type.
OrderedJson NodeTypesConfig(const ClusterSpec& spec, bool aws) {
  OrderedJson types = OrderedJson::object();
  types[kHeadNodeType] = HeadNodeTypeConfig(spec, aws);
  for (const WorkerType& w : spec.workers) {
    OrderedJson t;
    t["min_workers"] = w.min_workers;
    t["max_workers"] = w.max_workers;
    t["resources"] = w.NodeTypeResources();
    t["node_config"] = aws ? AwsWorkerNodeConfig(spec, w) : OrderedJson::object();
    types[w.NodeType()] = t;
  }
  return types;
}

// Adds the keys `ray up` would fill in from Ray's defaults, and the Ray start commands.
void AddRayUpDefaults(OrderedJson& c, const ClusterSpec& spec) {
  // What `ray up` would fill in from Ray's defaults: the autoscaler on a head
  // made elsewhere reads this file as it is and needs every one of them.
  c["file_mounts"] = OrderedJson::object();
  c["cluster_synced_files"] = OrderedJson::array();
  c["file_mounts_sync_continuously"] = false;
  c["rsync_exclude"] = OrderedJson::array();
  c["rsync_filter"] = OrderedJson::array();
  c["initialization_commands"] = OrderedJson::array();
  c["setup_commands"] = OrderedJson::array();
  c["head_setup_commands"] = OrderedJson::array();
  c["worker_setup_commands"] = OrderedJson::array();
  c["head_start_ray_commands"] = {"ray stop", "ulimit -n 65536; " + HeadStartLine(spec)};
  // Workers start themselves from their UserData (disable_node_updaters).
  c["worker_start_ray_commands"] = OrderedJson::array();
}
}  // namespace

// The autoscaler config for `spec`: cluster-wide settings, provider, node types, Ray defaults.
OrderedJson MakeAutoscalerConfig(const ClusterSpec& spec, const ConfigOptions& options) {
  const bool aws = options.provider == Provider::kAws;
  OrderedJson c;
  c["cluster_name"] = spec.cluster_name;
  int max_workers = 0;
  for (const WorkerType& w : spec.workers) max_workers += w.max_workers;
  c["max_workers"] = max_workers;
  c["upscaling_speed"] = 1.0;
  if (spec.idle_timeout_minutes == std::floor(spec.idle_timeout_minutes))
    c["idle_timeout_minutes"] = static_cast<long>(spec.idle_timeout_minutes);
  else
    c["idle_timeout_minutes"] = spec.idle_timeout_minutes;
  c["provider"] = ProviderConfig(spec, options);
  c["auth"] = {{"ssh_user", "ubuntu"}};
  c["docker"] = OrderedJson::object();
  c["available_node_types"] = NodeTypesConfig(spec, aws);
  c["head_node_type"] = kHeadNodeType;
  AddRayUpDefaults(c, spec);
  return c;
}

std::string ToYaml(const OrderedJson& value) {
  YAML::Emitter out;
  out.SetIndent(2);
  Emit(out, value);
  return std::string(out.c_str()) + "\n";
}

Result<std::vector<std::vector<std::string>>> TunnelCommands(const TunnelOptions& o) {
  if (!util::Regex("(i|mi)-[0-9a-f]{8,17}").FullMatch(o.instance_id))
    return Status(Code::kUsage,
                  "'" + o.instance_id + "' is not an EC2 instance id (i-0123456789abcdef0)");
  std::string region = o.region;
  for (const char* env : {"AWS_REGION", "AWS_DEFAULT_REGION"}) {
    const char* v = std::getenv(env);
    if (region.empty() && v != nullptr) region = v;
  }
  if (region.empty()) return Status(Code::kUsage, "no region: pass --region or set AWS_REGION");
  std::vector<std::vector<std::string>> out;
  for (auto [remote, local] : {std::pair{o.client_port, o.local_client_port},
                               std::pair{o.dashboard_port, o.local_dashboard_port}}) {
    OrderedJson params = {{"portNumber", {std::to_string(remote)}},
                          {"localPortNumber", {std::to_string(local)}}};
    out.push_back({o.aws, "ssm", "start-session", "--target", o.instance_id, "--region", region,
                   "--document-name", "AWS-StartPortForwardingSession", "--parameters",
                   params.dump()});
  }
  return out;
}

std::string TunnelEnvironment(const TunnelOptions& o) {
  std::string dash = "http://127.0.0.1:" + std::to_string(o.local_dashboard_port);
  return "export RAY_API_SERVER_ADDRESS=" + dash +
         "  # stagekit submit, ray job submit, ray list (dashboard)\n"
         "export RAY_ADDRESS=ray://127.0.0.1:" +
         std::to_string(o.local_client_port) +
         "  # Ray client: ray.init() in Python\n"
         "# Not for `stagekit run -e ray`: it needs the GCS (port 6379) and the nodes; submit "
         "from here instead.\n";
}

Status RunTunnel(const TunnelOptions& options, std::ostream& log) {
  auto commands = TunnelCommands(options);
  if (!commands.ok()) return commands.status();
  std::vector<pid_t> pids;
  auto stop_all = [&pids] {
    for (pid_t p : pids) ::kill(-p, SIGTERM);
    for (pid_t p : pids) util::WaitFor(p, std::chrono::seconds(5));
  };
  for (const auto& argv : *commands) {
    util::SpawnSpec spec;
    spec.argv = argv;
    auto started = util::Spawn(spec);
    if (!started.ok()) {
      stop_all();
      return Status(Code::kRayUnavailable, "cannot run `" + argv[0] +
                                               "` (the AWS CLI with the Session Manager plugin): " +
                                               started.status().message());
    }
    pids.push_back(started->pid);
  }
  log << TunnelEnvironment(options) << "# Ctrl-C closes both tunnels.\n";
  log.flush();
  while (!util::Interrupted()) {
    for (std::size_t i = 0; i < pids.size(); ++i) {
      int rc = util::WaitFor(pids[i], std::chrono::milliseconds(0));
      if (rc != -1) {
        pids.erase(pids.begin() + static_cast<std::ptrdiff_t>(i));
        stop_all();
        return Status(Code::kRayUnavailable,
                      "the SSM session for port " +
                          std::to_string(i == 0 ? options.client_port : options.dashboard_port) +
                          " ended (exit " + std::to_string(rc) +
                          "); check the instance id, region, credentials and that the instance "
                          "runs the SSM agent");
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  stop_all();
  return Status(Code::kInterrupted, "interrupted; tunnels closed");
}

Status ClusterDown(const DownOptions& o, std::ostream& log) {
  auto ray = [&o](std::vector<std::string> args) {
    util::ChildSpec spec;
    spec.argv = {o.ray};
    spec.argv.insert(spec.argv.end(), args.begin(), args.end());
    spec.timeout = std::chrono::minutes(15);
    spec.cancelled = util::Interrupted;
    return util::RunChild(spec);
  };
  auto failed = [&o](const std::string& what, const util::ChildResult& r) {
    if (!r.spawn_status.ok())
      return Status(Code::kRayUnavailable, "cannot run `" + o.ray + "` (" +
                                               r.spawn_status.message() +
                                               "); install ray[default] with boto3, or pass --ray");
    return Status(Code::kRayUnavailable,
                  "`" + what + "` failed (exit " + std::to_string(r.exit_code) +
                      "); the head was left alone:\n" + util::Tail(r.err + r.out, 2000));
  };
  log << "stagekit: tearing down the workers: ray down --workers-only -y " << o.config << "\n";
  util::ChildResult down = ray({"down", "--workers-only", "-y", o.config});
  if (!down.exited || down.exit_code != 0) return failed("ray down --workers-only", down);

  auto deadline = std::chrono::steady_clock::now() + o.wait;
  std::vector<std::string> up;
  while (true) {
    util::ChildResult ips = ray({"get-worker-ips", o.config});
    if (!ips.exited || ips.exit_code != 0) return failed("ray get-worker-ips", ips);
    up.clear();
    std::istringstream lines(ips.out);
    static const util::Regex kIp("\\s*([0-9a-fA-F:.]+[0-9a-fA-F])\\s*");
    for (std::string line; std::getline(lines, line);) {
      std::vector<std::string> m;
      if (kIp.FullMatch(line, &m)) up.push_back(m[1]);
    }
    if (up.empty()) break;
    if (std::chrono::steady_clock::now() >= deadline || util::Interrupted()) {
      return Status(util::kOperationFailed,
                    std::to_string(up.size()) + " worker" + (up.size() == 1 ? " is" : "s are") +
                        " still up (" + Join(up, ", ") +
                        "); not destroying the head while workers run: the autoscaler on it is "
                        "what stops them. Run `stagekit cluster down` again once they are gone, "
                        "or stop them in the EC2 console");
    }
    log << "stagekit: waiting for " << up.size() << " worker(s) to go: " << Join(up, ", ") << "\n";
    std::this_thread::sleep_for(o.poll);
  }
  log << "stagekit: no workers left; tearing down the head: ray down -y " << o.config << "\n";
  util::ChildResult head = ray({"down", "-y", o.config});
  if (!head.exited || head.exit_code != 0) return failed("ray down", head);
  log << "stagekit: cluster down\n";
  return OkStatus();
}

}  // namespace stagekit::operate
