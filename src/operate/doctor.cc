#include "operate/doctor.h"

#include <yaml-cpp/yaml.h>

#include <set>

#include "deploy/package.h"
#include "deploy/secrets.h"
#include "stagekit/pipeline.h"
#include "stagekit/runner.h"
#include "util/files.h"
#include "util/regex.h"
#include "util/yaml.h"

namespace fs = std::filesystem;

namespace stagekit::operate {
namespace {

const std::vector<Check> kChecks = {
    {"SK001", "resource-not-registered", "error",
     "a node type declares a custom resource its start command does not register, so the "
     "autoscaler launches the node and the task still pends forever"},
    {"SK002", "infeasible-stage", "error",
     "a pipeline stage asks for resources no node type offers"},
    {"SK003", "package-over-cap", "error",
     "the package `stagekit submit` would ship is over the cap"},
    {"SK004", "pip-heavy-runtime-env", "warning",
     "runtime_env.pip installs more than two packages on every cold worker"},
    {"SK005", "uv-venv-without-seed", "error",
     "`uv venv` without --seed makes a venv without pip; per-task envs then fail"},
    {"SK006", "uv-run-rewrite", "warning",
     "a driver under `uv run` without RAY_ENABLE_UV_RUN_RUNTIME_ENV=0 has its workers' Python "
     "rewritten, which can hang"},
    {"SK007", "usage-stats-on", "warning", "Ray's usage stats are not disabled on the cluster"},
    {"SK008", "local-path-input", "warning",
     "a pipeline input is an absolute path or lies outside the pipeline's folder"},
    {"SK009", "credential-in-env", "error", "a credential is passed as an environment variable"},
    {"SK010", "open-ingress", "error", "something is open to 0.0.0.0/0"},
    {"SK011", "spot-without-cap", "error", "a spot node type has no MaxPrice"},
    {"SK012", "no-idle-timeout", "warning", "no idle_timeout_minutes: idle workers keep billing"},
    {"SK013", "head-does-work", "warning", "the head node type has GPUs or max_workers above 0"},
    {"SK014", "stopped-nodes-cached", "warning",
     "cache_stopped_nodes is not false: stopped workers keep their disks and bills"},
    {"SK015", "vm-resource-mismatch", "error",
     "a node type's vm:<type> resource names another instance type"},
};

int Line(const YAML::Node& n) {
  return n.IsDefined() && n.Mark().line >= 0 ? n.Mark().line + 1 : 0;
}

double Number(const YAML::Node& n, double fallback) {
  if (!n || !n.IsScalar()) return fallback;
  try {
    return n.as<double>();
  } catch (const YAML::Exception&) {
    return fallback;
  }
}

struct NodeType {
  std::string name;
  int line = 0;
  std::map<std::string, double> resources;
};

class Doctor {
 public:
  explicit Doctor(const DoctorOptions& options) : options_(options) {}

  Status Run() {
    if (!options_.cluster.empty()) {
      auto doc = Load(options_.cluster);
      if (!doc.ok()) return doc.status();
      const std::string file = options_.cluster.string();
      if (doc->IsMap() && (*doc)["available_node_types"]) {
        Autoscaler(*doc, file);
      } else if (doc->IsMap() && (*doc)["workers"]) {
        Spec(*doc, file);
      } else {
        return Status(Code::kInputError,
                      file +
                          " is neither a stagekit cluster spec (with workers:) "
                          "nor a Ray autoscaler config (with available_node_types:)");
      }
      ScanText(*doc, file);
    }
    if (!options_.runtime_env.empty()) {
      auto doc = Load(options_.runtime_env);
      if (!doc.ok()) return doc.status();
      RuntimeEnv(*doc, options_.runtime_env.string());
    }
    if (!options_.pipeline.empty()) {
      if (Status s = PipelineChecks(); !s.ok()) return s;
    }
    Environment();
    return OkStatus();
  }

  std::vector<Finding> findings;

 private:
  void Add(const std::string& id, const std::string& file, int line, std::string message,
           std::string fix) {
    for (const Check& c : kChecks) {
      if (id == c.id) {
        findings.push_back(
            {c.id, c.name, c.severity, file, line, std::move(message), std::move(fix)});
        return;
      }
    }
  }

  static Result<YAML::Node> Load(const fs::path& file) {
    return util::LoadYamlFile(file, Code::kInputError);
  }

  // Checks that read commands and scripts, wherever they are in the file.
  void ScanText(const YAML::Node& node, const std::string& file) {
    if (node.IsMap()) {
      for (const auto& kv : node) ScanText(kv.second, file);
      return;
    }
    if (node.IsSequence()) {
      for (const auto& v : node) ScanText(v, file);
      return;
    }
    if (!node.IsScalar()) return;
    const std::string& text = node.Scalar();
    const int line = Line(node);
    if (text.find("0.0.0.0/0") != std::string::npos) {
      Add("SK010", file, line, "0.0.0.0/0 lets the whole internet in",
          "allow only your VPC's CIDR (Ray's ports) and reach the head through an SSM tunnel: "
          "`stagekit cluster tunnel INSTANCE_ID`");
    }
    static const util::Regex uv_venv(R"((^|[^A-Za-z0-9_-])uv\s+venv\b)");
    if (uv_venv.Search(text) && text.find("--seed") == std::string::npos) {
      Add("SK005", file, line, "`uv venv` without --seed makes a virtual environment without pip",
          "use `uv venv --seed`, so Ray's per-task environments can bootstrap");
    }
    static const util::Regex uv_run(R"((^|[^A-Za-z0-9_-])uv\s+run\b)");
    if (uv_run.Search(text) && text.find("RAY_ENABLE_UV_RUN_RUNTIME_ENV=0") == std::string::npos) {
      Add("SK006", file, line,
          "a Ray driver started with `uv run` has Ray rewrite its workers' Python",
          "set RAY_ENABLE_UV_RUN_RUNTIME_ENV=0 before `uv run` (export it, or prefix the command)");
    }
    static const util::Regex assignment(
        R"((?:^|[\s;'"])([A-Za-z_][A-Za-z0-9_]*)=(["']?)([^\s"';]*))");
    for (const std::vector<std::string>& m : assignment.FindAll(text)) {
      const std::string& name = m[1];
      const std::string& value = m[3];
      if (value.empty() || value[0] == '$') continue;  // a reference, not a literal
      if (auto why = deploy::LooksLikeCredential(name, value)) {
        Add("SK009", file, line, name + " is set in plain text (" + *why + ")",
            "give the nodes an instance role (IAM instance profile) instead of keys in commands");
      }
    }
  }

  void Spec(const YAML::Node& doc, const std::string& file) {
    have_cluster_ = true;
    const YAML::Node head = doc["head"];
    NodeType h{
        "head", Line(head), {{"CPU", Number(head["cpus"], 2)}, {"GPU", Number(head["gpus"], 0)}}};
    if (Number(head["gpus"], 0) > 0) {
      Add("SK013", file, Line(head["gpus"]), "the head has GPUs",
          "make the head a CPU instance with no GPU; GPU work goes to worker types");
    }
    types_.push_back(h);
    IdleTimeout(doc, file);
    for (const YAML::Node& w : doc["workers"]) {
      const std::string name = w["name"] ? w["name"].as<std::string>() : "?";
      const std::string instance = w["instance_type"] ? w["instance_type"].as<std::string>() : "";
      const bool on_demand = w["on_demand"] && w["on_demand"].as<std::string>() == "true";
      if (!on_demand && !w["spot_max_price"]) {
        Add("SK011", file, Line(w), "worker '" + name + "' is spot without spot_max_price",
            "set spot_max_price (USD per hour) to cap what it can cost, or on_demand: true");
      }
      NodeType t{name, Line(w), {}};
      t.resources["CPU"] = Number(w["cpus"], 0);
      t.resources["GPU"] = Number(w["gpus"], 0);
      if (!instance.empty()) t.resources["vm:" + instance] = 1;
      if (w["resources"] && w["resources"].IsMap()) {
        for (const auto& kv : w["resources"]) {
          const std::string key = kv.first.as<std::string>();
          if (key.rfind("vm:", 0) == 0 && key != "vm:" + instance) {
            Add("SK015", file, Line(kv.first),
                "worker '" + name + "' offers " + key + " but is a " + instance,
                "drop it: every worker gets vm:<its instance_type> from its spec");
          }
          t.resources[key] = Number(kv.second, 1);
        }
      }
      types_.push_back(t);
    }
  }

  void IdleTimeout(const YAML::Node& doc, const std::string& file) {
    const YAML::Node idle = doc["idle_timeout_minutes"];
    if (!idle || Number(idle, 0) <= 0) {
      Add("SK012", file, idle ? Line(idle) : 1,
          "no idle_timeout_minutes: idle workers keep running",
          "set idle_timeout_minutes (e.g. 10) so the autoscaler removes idle workers");
    }
  }

  // The keys of every `--resources` JSON in `text`.
  static std::set<std::string> Registered(const std::string& text, bool* any) {
    std::set<std::string> keys;
    static const util::Regex single(R"(--resources[= ]\s*'([^']*)')");
    static const util::Regex dbl(R"re(--resources[= ]\s*"((?:[^"\\]|\\.)*)")re");
    static const util::Regex escaped(R"(\\(.))");
    for (const util::Regex* re : {&single, &dbl}) {
      for (const std::vector<std::string>& m : re->FindAll(text)) {
        std::string json = m[1];
        if (re == &dbl) json = escaped.ReplaceAll(json, "$1");
        *any = true;
        Json parsed = Json::parse(json, nullptr, false);
        if (parsed.is_object()) {
          for (const auto& [k, v] : parsed.items()) keys.insert(k);
        }
      }
    }
    return keys;
  }

  static std::string Joined(const YAML::Node& commands) {
    std::string out;
    if (commands && commands.IsSequence()) {
      for (const auto& c : commands) out += c.as<std::string>("") + "\n";
    }
    return out;
  }

  void Autoscaler(const YAML::Node& doc, const std::string& file) {
    have_cluster_ = true;
    const YAML::Node provider = doc["provider"];
    const bool updaters_off = provider && provider["disable_node_updaters"] &&
                              provider["disable_node_updaters"].as<std::string>() == "true";
    const std::string head_type =
        doc["head_node_type"] ? doc["head_node_type"].as<std::string>() : "";
    const std::string worker_start = Joined(doc["worker_start_ray_commands"]);
    std::string all_starts = Joined(doc["head_start_ray_commands"]) + worker_start;
    IdleTimeout(doc, file);
    if (!provider || !provider["cache_stopped_nodes"] ||
        provider["cache_stopped_nodes"].as<std::string>() != "false") {
      Add("SK014", file,
          provider && provider["cache_stopped_nodes"] ? Line(provider["cache_stopped_nodes"])
                                                      : Line(provider),
          "stopped workers are kept (cache_stopped_nodes defaults to true) and their volumes bill",
          "set provider.cache_stopped_nodes: false");
    }
    for (const auto& kv : doc["available_node_types"]) {
      const std::string name = kv.first.as<std::string>();
      const YAML::Node type = kv.second;
      const YAML::Node config = type["node_config"];
      NodeType t{name, Line(kv.first), {}};
      const std::string instance =
          config && config["InstanceType"] ? config["InstanceType"].as<std::string>() : "";
      if (type["resources"] && type["resources"].IsMap()) {
        for (const auto& r : type["resources"])
          t.resources[r.first.as<std::string>()] = Number(r.second, 0);
      }
      types_.push_back(t);
      const std::string user_data =
          config && config["UserData"] ? config["UserData"].as<std::string>("") : "";
      all_starts += user_data;
      for (const auto& [key, amount] : t.resources) {
        if (key.rfind("vm:", 0) == 0 && !instance.empty() && key != "vm:" + instance) {
          Add("SK015", file, t.line,
              "node type " + name + " offers " + key + " but launches " + instance,
              "make it vm:" + instance + ", in the node type and in its start command");
        }
      }
      if (config && config["InstanceMarketOptions"] &&
          config["InstanceMarketOptions"]["MarketType"].as<std::string>("") == "spot" &&
          !(config["InstanceMarketOptions"]["SpotOptions"] &&
            config["InstanceMarketOptions"]["SpotOptions"]["MaxPrice"])) {
        Add("SK011", file, Line(config["InstanceMarketOptions"]),
            "node type " + name + " is spot without SpotOptions.MaxPrice",
            "set InstanceMarketOptions.SpotOptions.MaxPrice (a string, USD per hour)");
      }
      if (name == head_type && (t.resources["GPU"] > 0 || Number(type["max_workers"], 0) > 0)) {
        Add("SK013", file, t.line,
            "the head node type " + name + " has GPUs or max_workers above 0",
            "give the head GPU: 0 and max_workers: 0; work goes to worker types");
      }
      if (name != head_type && (updaters_off || !user_data.empty())) {
        // Without node updaters, nothing passes the node type's resources
        // to its raylet: its own start command must.
        bool any = false;
        std::set<std::string> registered = Registered(user_data + worker_start, &any);
        for (const auto& [key, amount] : t.resources) {
          if (key == "CPU" || key == "GPU" || key == "memory" || key == "object_store_memory")
            continue;
          if (registered.count(key) == 0) {
            Add("SK001", file, t.line,
                "node type " + name + " declares " + key +
                    " but its start command does not register it",
                "add it to `ray start --resources` in its UserData (stagekit cluster config "
                "generates both from one spec)");
          }
        }
      }
    }
    if (all_starts.find("--disable-usage-stats") == std::string::npos &&
        all_starts.find("RAY_USAGE_STATS_ENABLED=0") == std::string::npos) {
      Add("SK007", file, Line(doc["head_start_ray_commands"]),
          "usage stats are not disabled in the head's or the workers' start commands",
          "add --disable-usage-stats to `ray start` (or RAY_USAGE_STATS_ENABLED=0)");
    }
  }

  void RuntimeEnv(const YAML::Node& doc, const std::string& file) {
    const YAML::Node pip = doc["pip"];
    YAML::Node packages = pip && pip.IsMap() ? pip["packages"] : pip;
    if (packages && packages.IsSequence() && packages.size() > 2) {
      Add("SK004", file, Line(pip),
          "runtime_env.pip installs " + std::to_string(packages.size()) +
              " packages into a fresh environment on every cold worker (minutes; Ray Client "
              "connections time out)",
          "bake dependencies into the worker image; keep pip for one or two small pure-Python "
          "packages");
    }
    if (doc["env_vars"] && doc["env_vars"].IsMap()) {
      for (const auto& kv : doc["env_vars"]) {
        const std::string name = kv.first.as<std::string>();
        if (auto why = deploy::LooksLikeCredential(name, kv.second.as<std::string>(""))) {
          Add("SK009", file, Line(kv.first),
              "env_vars." + name + " looks like a credential (" + *why + ")",
              "env_vars are shown in the dashboard and job table; use an instance role instead");
        }
      }
    }
    ScanText(doc, file);
  }

  Status PipelineChecks() {
    auto pipeline = LoadPipeline(options_.pipeline);
    if (!pipeline.ok()) return pipeline.status();
    const std::string file = pipeline->file.string();
    const fs::path dir = pipeline->file.parent_path();
    std::uint64_t bytes = 0;
    std::error_code ec;
    std::set<fs::path> counted;
    auto count = [&](const fs::path& p) {
      if (counted.insert(p).second) {
        auto size = fs::file_size(p, ec);
        if (!ec) bytes += size;
      }
    };
    std::vector<fs::path> search = DefaultStageDirs();
    search.insert(search.begin(), dir);
    if (auto libs = ResolveLibraries(*pipeline, search); libs.ok()) {
      for (const fs::path& l : *libs) count(l);
    }
    // stagekit's own binaries are not counted: `ship` strips their debug
    // information, which leaves a few MiB of the ~100 MiB they have in a
    // RelWithDebInfo build.
    for (const PipelineStage& st : pipeline->stages) {
      for (const auto& [name, ref] : st.inputs) {
        if (!ref.from_stage.empty()) continue;
        count(ref.file);
        if (!util::IsWithin(ref.file, dir)) {
          Add("SK008", file, st.line,
              "stage '" + st.name + "' input '" + name + "' is " + ref.file.string() +
                  ", outside the pipeline's folder: that path does not exist on a worker",
              "move it under " + dir.string() + ", or ship it with `--include " +
                  ref.file.parent_path().string() + "=PLACE`");
        }
      }
      if (have_cluster_) Feasible(st, file);
    }
    if (bytes > options_.max_bytes) {
      Add("SK003", file, 0,
          "the package would be at least " + std::to_string(bytes >> 20) + " MiB, over the " +
              std::to_string(options_.max_bytes >> 20) + " MiB cap",
          "leave out what the workers do not need, or raise the cap with --max-size");
    }
    return OkStatus();
  }

  void Feasible(const PipelineStage& st, const std::string& file) {
    const Resources& r = st.options.resources;
    std::map<std::string, double> want = {{"CPU", r.cpus}, {"GPU", r.gpus}};
    for (const auto& [k, v] : r.custom) want[k] = v;
    std::string missing;
    for (const NodeType& t : types_) {
      std::string lacks;
      for (const auto& [k, v] : want) {
        if (v <= 0) continue;
        auto it = t.resources.find(k);
        if (it == t.resources.end() || it->second < v) lacks = k;
      }
      if (lacks.empty()) return;
      missing = lacks;
    }
    Add("SK002", file, st.line,
        "stage '" + st.name + "' asks for " + Json(want).dump() +
            " and no node type offers it (e.g. " + missing + ")",
        "change the stage's resources, or add a node type that offers them");
  }

  void Environment() {
    auto get = [&](const char* k) {
      auto it = options_.env.find(k);
      return it == options_.env.end() ? std::string() : it->second;
    };
    if (!get("UV_RUN_RECURSION_DEPTH").empty() && get("RAY_ENABLE_UV_RUN_RUNTIME_ENV") != "0") {
      Add("SK006", "(environment)", 0,
          "this driver runs under `uv run` without RAY_ENABLE_UV_RUN_RUNTIME_ENV=0",
          "export RAY_ENABLE_UV_RUN_RUNTIME_ENV=0 before `uv run`");
    }
  }

  const DoctorOptions& options_;
  bool have_cluster_ = false;
  std::vector<NodeType> types_;
};

}  // namespace

const std::vector<Check>& DoctorChecks() { return kChecks; }

Result<std::vector<Finding>> RunDoctor(const DoctorOptions& options) {
  Doctor doctor(options);
  if (Status s = doctor.Run(); !s.ok()) return s;
  return doctor.findings;
}

Json FindingsJson(const std::vector<Finding>& findings) {
  Json out = Json::array();
  for (const Finding& f : findings) {
    out.push_back({{"id", f.id},
                   {"name", f.name},
                   {"severity", f.severity},
                   {"file", f.file},
                   {"line", f.line},
                   {"message", f.message},
                   {"fix", f.fix}});
  }
  return out;
}

}  // namespace stagekit::operate
