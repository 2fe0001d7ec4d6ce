// A config from `stagekit cluster config --provider fake-multinode` on a real
// local head with Ray's fake multi-node autoscaler: a stage that needs a worker
// type's vm: resource makes the autoscaler launch a node of that type, runs
// there, and the node is removed after the idle timeout. The test checks that
// nothing it started is left running.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <thread>

#include "ray/cluster_util.h"
#include "stagekit/ray.h"
#include "unit/test_util.h"
#include "util/process.h"

namespace stagekit {
namespace {

namespace fs = std::filesystem;
using testing::CommandResult;
using testing::kRayBin;
using testing::ProcessesWith;
using testing::ReadFile;
using testing::RunCli;
using testing::RunCommand;
using testing::Show;
using testing::TempDir;
using testing::WriteFile;

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

constexpr const char* kAliveNodes = R"PY(
import json, os, sys
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
import ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False, configure_logging=False)
print(json.dumps([n["Resources"] for n in ray.nodes() if n["Alive"]]))
)PY";

class FakeAutoscaler : public ::testing::Test {
 protected:
  void SetUp() override {
    WriteFile(dir_ / "token", "0123456789abcdef0123456789abcdef");
    ::setenv("RAY_AUTH_MODE", "token", 1);
    ::setenv("RAY_AUTH_TOKEN_PATH", (dir_ / "token").c_str(), 1);
    std::string tmpl = "/tmp/skas-XXXXXX";  // short: Ray puts Unix sockets below it
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    ray_tmp_ = tmpl;
  }
  void TearDown() override {
    if (head_sid_ > 0) StopProcessSession(head_sid_, std::chrono::seconds(2));
    EXPECT_TRUE(ProcessesWith(ray_tmp_).empty()) << "the test cluster was left running";
    std::error_code ec;
    fs::remove_all(ray_tmp_, ec);
    for (const char* env : {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_FAKE_CLUSTER",
                            "AUTOSCALER_UPDATE_INTERVAL_S", "STAGEKIT_AUTOSCALER_CONFIG"})
      ::unsetenv(env);
  }

  // Resources of the alive nodes, as the GCS reports them.
  Json AliveNodes() {
    CommandResult r = RunCommand({(kRayBin / "python").string(), "-c", kAliveNodes, address_});
    EXPECT_EQ(r.exit_code, 0) << Show(r);
    Json nodes = Json::parse(r.out, nullptr, false);
    EXPECT_TRUE(nodes.is_array()) << Show(r);
    return nodes.is_array() ? nodes : Json::array({Json::object({{"unknown", 1}})});
  }
  static int WithResource(const Json& nodes, const std::string& name) {
    int n = 0;
    for (const Json& node : nodes) n += node.contains(name) ? 1 : 0;
    return n;
  }

  TempDir dir_;
  std::string ray_tmp_;
  std::string address_;
  pid_t head_sid_ = -1;
};

TEST_F(FakeAutoscaler, LaunchesTheNodeTypeAStageNeedsAndRemovesItWhenIdle) {
  // The node IP fake nodes get, and a GCS port chosen now: the config names it.
  CommandResult ip = RunCommand({(kRayBin / "python").string(), "-c",
                                 "import ray._private.services as s; "
                                 "print(s.get_node_ip_address())"});
  ASSERT_EQ(ip.exit_code, 0) << Show(ip);
  std::vector<int> ports = util::FreePorts(1);
  address_ = Trim(ip.out) + ":" + std::to_string(ports.at(0));

  const std::string vm = "vm:g4dn.xlarge";
  WriteFile(dir_ / "spec.yaml",
            "cluster_name: sktest\nregion: us-east-1\nimage: stagekit:test\n"
            "idle_timeout_minutes: 0.1\n"
            "head: {instance_type: t3.medium, cpus: 1}\n"
            "workers:\n"
            "  - {name: gpu, instance_type: g4dn.xlarge, gpus: 1, cpus: 1, spot_max_price: 0.2,\n"
            "     max_workers: 1}\n"
            "  - {name: big, instance_type: g6.xlarge, gpus: 1, cpus: 1, spot_max_price: 0.4,\n"
            "     max_workers: 1}\n");
  fs::path config = dir_ / "config.yaml";
  CommandResult gen = RunCli({"cluster", "config", (dir_ / "spec.yaml").string(), "--provider",
                              "fake-multinode", "--gcs-address", address_, "-o", config.string()});
  ASSERT_EQ(gen.exit_code, 0) << Show(gen);

  // The head, as `ray start --head --autoscaling-config` with the fake provider.
  ::setenv("RAY_FAKE_CLUSTER", "1", 1);
  ::setenv("AUTOSCALER_UPDATE_INTERVAL_S", "1", 1);
  std::vector<std::string> argv = {(kRayBin / "ray").string(),
                                   "start",
                                   "--head",
                                   "--disable-usage-stats",
                                   "--port=" + std::to_string(ports[0]),
                                   "--temp-dir=" + ray_tmp_,
                                   "--num-cpus=1",
                                   "--num-gpus=0",
                                   "--include-dashboard=false",
                                   "--object-store-memory=300000000",
                                   "--autoscaling-config=" + config.string()};
  std::vector<std::string> flags = testing::PortFlags(false);
  argv.insert(argv.end(), flags.begin(), flags.end());
  util::SpawnSpec spec;
  spec.argv = argv;
  spec.new_session = true;
  spec.log_path = (dir_ / "head.log").string();
  auto head = util::Spawn(spec);
  ASSERT_TRUE(head.ok()) << head.status().message();
  head_sid_ = head->pid;
  ASSERT_EQ(util::WaitFor(head->pid, std::chrono::minutes(2)), 0) << ReadFile(dir_ / "head.log");
  ::unsetenv("RAY_FAKE_CLUSTER");
  ::unsetenv("AUTOSCALER_UPDATE_INTERVAL_S");
  Json nodes = AliveNodes();
  ASSERT_EQ(nodes.size(), 1u) << nodes.dump();
  EXPECT_EQ(WithResource(nodes, vm), 0);

  WriteFile(dir_ / "in.txt", "autoscaled\n");
  WriteFile(dir_ / "p.yaml", "name: autoscaled\nlibraries: [" STAGEKIT_TEST_STAGES
                             "]\nstages:\n"
                             "  - {name: on_gpu_type, stage: test.copy, inputs: {in: " +
                                 (dir_ / "in.txt").string() + "}, resources: {custom: {\"" + vm +
                                 "\": 1}}}\n");
  auto run = [&](const std::string& out) {
    return RunCli({"run", (dir_ / "p.yaml").string(), "-e", "ray", "--address", address_, "--json",
                   "--out", (dir_ / out).string(), "--ray-attempts", "1"});
  };
  // Without the autoscaler config, no node that is up offers the resource.
  CommandResult refused = run("o1");
  EXPECT_EQ(refused.exit_code, static_cast<int>(Code::kInfeasible)) << Show(refused);
  EXPECT_NE(refused.err.find(vm), std::string::npos) << Show(refused);

  // With it, the stage is submitted and the autoscaler launches a node for it.
  ::setenv("STAGEKIT_AUTOSCALER_CONFIG", config.c_str(), 1);
  auto started = std::chrono::steady_clock::now();
  CommandResult r = run("o2");
  ::unsetenv("STAGEKIT_AUTOSCALER_CONFIG");
  ASSERT_EQ(r.exit_code, 0) << Show(r) << "\n" << ReadFile(dir_ / "head.log");
  EXPECT_EQ(ReadFile(dir_ / "o2" / "on_gpu_type.out"), "autoscaled\n");
  Json summary = Json::parse(r.out);
  std::string ran_on = summary["stages"][0]["stats"]["node"].get<std::string>();
  std::string head_port;
  for (const std::string& f : flags)
    if (f.rfind("--node-manager-port=", 0) == 0) head_port = f.substr(20);
  EXPECT_NE(ran_on.substr(ran_on.rfind(':') + 1), head_port)
      << "the stage ran on the head, not on a launched node: " << summary.dump(2);
  // The monitor's log names the launch of the right node type. The node
  // launcher logs it once create_node returns, which can be after the stage
  // already ran there: wait for the line.
  std::string monitor;
  const auto log_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  do {
    monitor.clear();
    for (const auto& e : fs::recursive_directory_iterator(ray_tmp_)) {
      if (e.path().filename().string().rfind("monitor.", 0) == 0) monitor += ReadFile(e.path());
    }
    if (monitor.find("Launching 1 nodes, type ray.worker.gpu.") != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  } while (std::chrono::steady_clock::now() < log_deadline);
  EXPECT_NE(monitor.find("Launching 1 nodes, type ray.worker.gpu."), std::string::npos) << monitor;
  EXPECT_EQ(monitor.find("nodes, type ray.worker.big"), std::string::npos) << monitor;

  // Idle for 0.1 minutes: the node goes away.
  nodes = AliveNodes();
  EXPECT_EQ(WithResource(nodes, "vm:g6.xlarge"), 0) << nodes.dump();
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(90);
  while (WithResource(nodes, vm) > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::seconds(2));
    nodes = AliveNodes();
  }
  EXPECT_EQ(WithResource(nodes, vm), 0) << "the idle node was not removed: " << nodes.dump();
  EXPECT_EQ(nodes.size(), 1u) << nodes.dump();
  std::cerr << "launched, ran and removed in "
            << std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() -
                                                                started)
                   .count()
            << " s\n";
}

}  // namespace
}  // namespace stagekit
