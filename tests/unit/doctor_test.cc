// `stagekit doctor`: every seeded mistake is found by its own id, and the good
// spec, config, pipeline and runtime_env give no finding at all.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <yaml-cpp/yaml.h>

#include <functional>
#include <set>

#include "operate/cluster.h"
#include "operate/doctor.h"
#include "unit/test_util.h"

namespace stagekit::operate {

namespace {

namespace fs = std::filesystem;
using testing::TempDir;
using testing::WriteFile;

const fs::path kSpec = STAGEKIT_SOURCE_DIR "/examples/cluster/spec.yaml";

std::string Emit(const YAML::Node& node) {
  YAML::Emitter out;
  out << node;
  return std::string(out.c_str()) + "\n";
}

class DoctorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto spec = LoadClusterSpec(kSpec);
    ASSERT_TRUE(spec.ok()) << spec.status().message();
    config_ = ToYaml(MakeAutoscalerConfig(*spec, {}));
    WriteFile(dir_ / "data" / "in.txt", "x\n");
    pipeline_ = "name: gpu\nlibraries: [" STAGEKIT_TEST_STAGES
                "]\nstages:\n"
                "  - {name: copy, stage: test.copy, inputs: {in: data/in.txt},\n"
                "     resources: {gpus: 1, custom: {\"vm:g4dn.2xlarge\": 1}}}\n"
                "  - {name: l4, stage: test.noop, resources: {cpus: 2, custom: {l4: 1}}}\n";
    runtime_env_ = "pip: [requests]\nenv_vars: {MY_APP_BACKEND: cuda}\n";
  }

  // The ids found, with `mutate` applied to the file of one kind.
  std::multiset<std::string> Ids(const std::string& what,
                                 const std::function<void(YAML::Node&)>& mutate,
                                 std::map<std::string, std::string> env = {},
                                 std::uint64_t max_bytes = 100ull << 20) {
    YAML::Node spec = YAML::LoadFile(kSpec.string());
    YAML::Node config = YAML::Load(config_);
    YAML::Node pipeline = YAML::Load(pipeline_);
    YAML::Node runtime_env = YAML::Load(runtime_env_);
    YAML::Node* target = what == "spec"       ? &spec
                         : what == "config"   ? &config
                         : what == "pipeline" ? &pipeline
                                              : &runtime_env;
    if (mutate) mutate(*target);
    DoctorOptions options;
    const bool use_spec = what != "config";
    WriteFile(dir_ / "cluster.yaml", Emit(use_spec ? spec : config));
    WriteFile(dir_ / "pipeline.yaml", Emit(pipeline));
    WriteFile(dir_ / "runtime_env.yaml", Emit(runtime_env));
    options.cluster = dir_ / "cluster.yaml";
    options.pipeline = dir_ / "pipeline.yaml";
    options.runtime_env = dir_ / "runtime_env.yaml";
    options.env = std::move(env);
    options.max_bytes = max_bytes;
    auto findings = RunDoctor(options);
    EXPECT_TRUE(findings.ok()) << findings.status().message();
    std::multiset<std::string> ids;
    if (!findings.ok()) return ids;
    for (const Finding& f : *findings) {
      ids.insert(f.id);
      EXPECT_FALSE(f.fix.empty()) << f.id;
      EXPECT_FALSE(f.file.empty()) << f.id;
    }
    last_ = *findings;
    return ids;
  }

  TempDir dir_;
  std::string config_, pipeline_, runtime_env_;
  std::vector<Finding> last_;
};

using IdSet = std::multiset<std::string>;

TEST_F(DoctorTest, TheGoodOnesHaveNoFinding) {
  EXPECT_EQ(Ids("spec", nullptr), IdSet{}) << FindingsJson(last_).dump(1);
  EXPECT_EQ(Ids("config", nullptr), IdSet{}) << FindingsJson(last_).dump(1);
}

TEST_F(DoctorTest, EachSeededMistakeByItsOwnId) {
  struct Case {
    const char* id;
    const char* what;
    std::function<void(YAML::Node&)> mutate;
  };
  const std::vector<Case> cases = {
      {"SK001", "config",
       [](YAML::Node& c) {
         c["available_node_types"]["ray.worker.g4dn"]["resources"]["nvme"] = 1;
       }},
      {"SK002", "pipeline",
       [](YAML::Node& p) { p["stages"][1]["resources"]["custom"]["vm:p5.48xlarge"] = 1; }},
      {"SK004", "runtime_env",
       [](YAML::Node& r) {
         for (const char* p : {"torch", "numpy", "scipy", "pandas"}) r["pip"].push_back(p);
       }},
      {"SK005", "config",
       [](YAML::Node& c) {
         c["initialization_commands"].push_back("uv venv /opt/venv && echo ok");
       }},
      {"SK006", "config",
       [](YAML::Node& c) { c["head_setup_commands"].push_back("uv run python driver.py"); }},
      {"SK007", "config",
       [](YAML::Node& c) {
         for (const char* t : {"ray.worker.g4dn", "ray.worker.g6"}) {
           std::string ud =
               c["available_node_types"][t]["node_config"]["UserData"].as<std::string>();
           for (const std::string s : {"-e RAY_USAGE_STATS_ENABLED=0 ", "--disable-usage-stats"}) {
             for (size_t at; (at = ud.find(s)) != std::string::npos;) ud.erase(at, s.size());
           }
           c["available_node_types"][t]["node_config"]["UserData"] = ud;
         }
         YAML::Node head = YAML::Node(YAML::NodeType::Sequence);
         for (const auto& cmd : c["head_start_ray_commands"]) {
           std::string s = cmd.as<std::string>();
           for (size_t at; (at = s.find(" --disable-usage-stats")) != std::string::npos;)
             s.erase(at, 22);
           head.push_back(s);
         }
         c["head_start_ray_commands"] = head;
       }},
      {"SK008", "pipeline",
       [](YAML::Node& p) { p["stages"][0]["inputs"]["in"] = "/etc/hostname"; }},
      {"SK009", "runtime_env",
       [](YAML::Node& r) { r["env_vars"]["AWS_SECRET_ACCESS_KEY"] = "abc"; }},
      {"SK009", "config",
       [](YAML::Node& c) {
         c["head_setup_commands"].push_back(
             "export HF_TOKEN=hf_abcdefghijklmnopqrstuvwxyzABCDEFGH");
       }},
      {"SK010", "config",
       [](YAML::Node& c) {
         YAML::Node perm;
         perm["FromPort"] = 8265;
         perm["ToPort"] = 8265;
         perm["IpProtocol"] = "tcp";
         YAML::Node range;
         range["CidrIp"] = "0.0.0.0/0";
         perm["IpRanges"].push_back(range);
         c["provider"]["security_group"]["IpPermissions"].push_back(perm);
       }},
      {"SK011", "spec", [](YAML::Node& s) { s["workers"][0].remove("spot_max_price"); }},
      {"SK011", "config",
       [](YAML::Node& c) {
         c["available_node_types"]["ray.worker.g6"]["node_config"]["InstanceMarketOptions"].remove(
             "SpotOptions");
       }},
      {"SK012", "spec", [](YAML::Node& s) { s.remove("idle_timeout_minutes"); }},
      {"SK012", "config", [](YAML::Node& c) { c["idle_timeout_minutes"] = 0; }},
      {"SK013", "spec", [](YAML::Node& s) { s["head"]["gpus"] = 1; }},
      {"SK013", "config",
       [](YAML::Node& c) { c["available_node_types"]["ray.head.default"]["max_workers"] = 2; }},
      {"SK014", "config", [](YAML::Node& c) { c["provider"]["cache_stopped_nodes"] = true; }},
      {"SK015", "config",
       [](YAML::Node& c) {
         c["available_node_types"]["ray.worker.g6"]["node_config"]["InstanceType"] = "g6.2xlarge";
       }},
      {"SK015", "spec", [](YAML::Node& s) { s["workers"][1]["resources"]["vm:g6.12xlarge"] = 1; }},
  };
  std::set<std::string> covered;
  for (const Case& c : cases) {
    EXPECT_EQ(Ids(c.what, c.mutate), IdSet{c.id}) << c.id << " in the " << c.what << "\n"
                                                  << FindingsJson(last_).dump(1);
    covered.insert(c.id);
  }
  // The two that need no mutation of a file.
  EXPECT_EQ(Ids("spec", nullptr, {}, 1024), IdSet{"SK003"}) << FindingsJson(last_).dump(1);
  EXPECT_EQ(Ids("spec", nullptr, {{"UV_RUN_RECURSION_DEPTH", "1"}}), IdSet{"SK006"});
  EXPECT_EQ(Ids("spec", nullptr,
                {{"UV_RUN_RECURSION_DEPTH", "1"}, {"RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0"}}),
            IdSet{});
  covered.insert("SK003");
  EXPECT_EQ(covered.size(), DoctorChecks().size()) << "every check has a seeded mistake";
}

TEST_F(DoctorTest, FindingsNameTheLine) {
  Ids("spec", [](YAML::Node& s) { s["workers"][0].remove("spot_max_price"); });
  ASSERT_EQ(last_.size(), 1u);
  EXPECT_EQ(last_[0].file, (dir_ / "cluster.yaml").string());
  // The emitted spec: the first worker's line, where its mapping starts.
  std::string text = testing::ReadFile(dir_ / "cluster.yaml");
  int line = 1;
  for (size_t i = 0; i < text.find("  - name: g4dn"); ++i) line += text[i] == '\n';
  EXPECT_EQ(last_[0].line, line) << text;
  EXPECT_EQ(last_[0].severity, "error");
}

TEST(DoctorCli, ExitsNonZeroOnErrorsAndPrintsJson) {
  TempDir dir;
  YAML::Node spec = YAML::LoadFile(kSpec.string());
  spec["workers"][0].remove("spot_max_price");
  WriteFile(dir / "spec.yaml", Emit(spec));
  auto r = testing::RunCli({"doctor", "--cluster", (dir / "spec.yaml").string(), "--json"});
  EXPECT_EQ(r.exit_code, 17) << testing::Show(r);
  Json findings = Json::parse(r.out);
  ASSERT_EQ(findings.size(), 1u);
  EXPECT_EQ(findings[0]["id"], "SK011");
  auto good = testing::RunCli({"doctor", "--cluster", kSpec.string()});
  EXPECT_EQ(good.exit_code, 0) << testing::Show(good);
  EXPECT_EQ(testing::RunCli({"doctor"}).exit_code, 2);
}

// A folder once said "basic_filebuf::underflow" with exit 70; a FIFO hung.
TEST(DoctorCli, AFolderOrAFifoIsAClearInputError) {
  TempDir dir;
  auto folder = testing::RunCli({"doctor", "--cluster", dir.path().string()});
  EXPECT_EQ(folder.exit_code, 5) << testing::Show(folder);
  EXPECT_NE(folder.err.find("it is a folder"), std::string::npos) << folder.err;
  auto env = testing::RunCli({"doctor", "--runtime-env", dir.path().string()});
  EXPECT_EQ(env.exit_code, 5) << testing::Show(env);
  ASSERT_EQ(::mkfifo((dir / "fifo").c_str(), 0600), 0);
  auto fifo = testing::RunCli({"doctor", "--cluster", (dir / "fifo").string()});
  EXPECT_NE(fifo.exit_code, 0) << testing::Show(fifo);
  EXPECT_NE(fifo.exit_code, 70) << testing::Show(fifo);
}

}  // namespace
}  // namespace stagekit::operate
