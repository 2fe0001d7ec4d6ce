// `stagekit cluster`: specs and their errors, the autoscaler config, worker
// start scripts, the SSM tunnel's commands, and the teardown order (against a
// stub `ray` on PATH that records its calls).
#include "operate/cluster.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <yaml-cpp/yaml.h>

#include <cstdlib>
#include <fstream>
#include <regex>

#include "operate/cost.h"
#include "unit/test_util.h"

namespace stagekit::operate {

namespace {

namespace fs = std::filesystem;
using testing::CommandResult;
using testing::ReadFile;
using testing::RunCli;
using testing::RunCommand;
using testing::Show;
using testing::TempDir;
using testing::WriteFile;

const std::string kExampleSpec = STAGEKIT_SOURCE_DIR "/examples/cluster/spec.yaml";

const char* kGoodSpec = R"(cluster_name: c1
region: us-east-1
image: repo/img:1
idle_timeout_minutes: 7.5
ami: ami-0123456789abcdef0
subnet_ids: [subnet-0123456789abcdef0]
head: {instance_type: t3.medium}
workers:
  - name: a
    instance_type: g4dn.2xlarge
    gpus: 1
    cpus: 8
    spot_max_price: 0.20
    max_workers: 3
  - name: b
    instance_type: g6.12xlarge
    gpus: 4
    cpus: 48
    on_demand: true
    min_workers: 1
    max_workers: 2
    resources: {nvme: 2}
)";

ClusterSpec Good() {
  auto spec = ParseClusterSpec(kGoodSpec, "good.yaml");
  EXPECT_TRUE(spec.ok()) << spec.status().message();
  return *spec;
}

TEST(ClusterSpec, TheExampleParsesWithTwoGpuWorkerTypes) {
  auto spec = LoadClusterSpec(kExampleSpec);
  ASSERT_TRUE(spec.ok()) << spec.status().message();
  ASSERT_EQ(spec->workers.size(), 2u);
  for (const WorkerType& w : spec->workers) EXPECT_GE(w.gpus, 1);
  EXPECT_TRUE(CheckAwsSpec(*spec).ok());
}

TEST(ClusterConfig, HeadOnDemandWithoutGpuAndNoWorkersOfItsOwn) {
  OrderedJson c = MakeAutoscalerConfig(Good(), {});
  const OrderedJson& head = c["available_node_types"][kHeadNodeType];
  EXPECT_EQ(head["max_workers"], 0);
  EXPECT_EQ(head["resources"]["GPU"], 0);
  EXPECT_EQ(head["resources"]["CPU"], 2);  // the default
  EXPECT_FALSE(head["node_config"].contains("InstanceMarketOptions"));
  EXPECT_EQ(c["head_node_type"], kHeadNodeType);
  EXPECT_EQ(c["provider"]["cache_stopped_nodes"], false);
  EXPECT_EQ(c["provider"]["disable_launch_config_check"], true);
  EXPECT_EQ(c["provider"]["disable_node_updaters"], true);
  EXPECT_EQ(c["idle_timeout_minutes"], 7.5);
  EXPECT_EQ(c["max_workers"], 5);
  std::string start = c["head_start_ray_commands"][1];
  EXPECT_NE(start.find("ray start --head --port=6379 --num-cpus=2 --num-gpus=0"),
            std::string::npos);
  EXPECT_NE(start.find(" --autoscaling-config=~/ray_bootstrap_config.yaml"), std::string::npos)
      << start;
}

TEST(ClusterConfig, WorkersOfferTheirVmResourceSpotWorkersHaveAPriceCap) {
  OrderedJson c = MakeAutoscalerConfig(Good(), {});
  const OrderedJson& a = c["available_node_types"]["ray.worker.a"];
  EXPECT_EQ(a["resources"], OrderedJson::parse(R"({"CPU": 8, "GPU": 1, "vm:g4dn.2xlarge": 1})"));
  EXPECT_EQ(a["node_config"]["InstanceMarketOptions"],
            OrderedJson::parse(R"({"MarketType": "spot", "SpotOptions": {"MaxPrice": "0.20"}})"));
  EXPECT_EQ(a["node_config"]["SubnetIds"][0], "subnet-0123456789abcdef0");
  EXPECT_EQ(a["node_config"]["ImageId"], "ami-0123456789abcdef0");
  const OrderedJson& b = c["available_node_types"]["ray.worker.b"];
  EXPECT_EQ(b["resources"],
            OrderedJson::parse(R"({"CPU": 48, "GPU": 4, "vm:g6.12xlarge": 1, "nvme": 2})"));
  EXPECT_FALSE(b["node_config"].contains("InstanceMarketOptions"));
  EXPECT_EQ(b["min_workers"], 1);
}

// The resources a node type declares are the ones its start script registers.
TEST(ClusterConfig, UserDataRegistersExactlyTheNodeTypesResources) {
  ClusterSpec spec = Good();
  OrderedJson c = MakeAutoscalerConfig(spec, {});
  for (const WorkerType& w : spec.workers) {
    const OrderedJson& t = c["available_node_types"][w.NodeType()];
    std::string ud = t["node_config"]["UserData"];
    EXPECT_EQ(ud, WorkerUserData(spec, w));
    std::smatch m;
    ASSERT_TRUE(std::regex_search(ud, m, std::regex("--resources='([^']*)'"))) << ud;
    OrderedJson registered = OrderedJson::parse(m[1].str());
    ASSERT_TRUE(std::regex_search(ud, m, std::regex("--num-cpus=([0-9]+) --num-gpus=([0-9]+)")));
    registered["CPU"] = std::stoi(m[1]);
    registered["GPU"] = std::stoi(m[2]);
    EXPECT_EQ(nlohmann::json::parse(registered.dump()),
              nlohmann::json::parse(t["resources"].dump()))
        << ud;
    EXPECT_NE(ud.find("--network host --shm-size=2g"), std::string::npos);
    EXPECT_NE(ud.find("--gpus all"), std::string::npos);
    EXPECT_NE(ud.find("ray start --address=\"$HEAD_IP:6379\""), std::string::npos) << ud;
    EXPECT_NE(ud.find(" --block"), std::string::npos);
    EXPECT_NE(ud.find("IMAGE=repo/img:1"), std::string::npos);
    // No head.private_ip: the head is found by Ray's tags.
    EXPECT_NE(ud.find("Name=tag:ray-cluster-name,Values=c1 Name=tag:ray-node-type,Values=head"),
              std::string::npos)
        << ud;
  }
  // A worker without GPUs does not ask docker for them.
  spec.workers[0].gpus = 0;
  EXPECT_EQ(WorkerUserData(spec, spec.workers[0]).find("--gpus all"), std::string::npos);
  spec.head.private_ip = "10.1.2.3";
  EXPECT_NE(WorkerUserData(spec, spec.workers[0]).find("HEAD_IP=10.1.2.3"), std::string::npos);
}

TEST(ClusterConfig, TheYamlReadsBackWithPricesAsStrings) {
  OrderedJson c = MakeAutoscalerConfig(Good(), {});
  YAML::Node y = YAML::Load(ToYaml(c));
  YAML::Node price = y["available_node_types"]["ray.worker.a"]["node_config"]
                      ["InstanceMarketOptions"]["SpotOptions"]["MaxPrice"];
  EXPECT_EQ(price.Tag(), "!");  // quoted: a string, not a float
  EXPECT_EQ(price.Scalar(), "0.20");
  EXPECT_EQ(y["available_node_types"]["ray.worker.a"]["resources"]["vm:g4dn.2xlarge"].as<int>(), 1);
  EXPECT_EQ(y["available_node_types"]["ray.worker.a"]["node_config"]["UserData"].as<std::string>(),
            c["available_node_types"]["ray.worker.a"]["node_config"]["UserData"]);
  EXPECT_EQ(y["provider"]["cache_stopped_nodes"].as<bool>(), false);
}

TEST(ClusterConfig, FakeMultinodeKeepsTheNodeTypesButNoAwsSettings) {
  OrderedJson c = MakeAutoscalerConfig(Good(), {Provider::kFakeMultinode, "10.0.0.1:7000"});
  EXPECT_EQ(c["provider"]["type"], "fake_multinode");
  EXPECT_EQ(c["provider"]["gcs_address"], "10.0.0.1:7000");
  EXPECT_EQ(c["provider"]["use_node_id_as_ip"], true);
  EXPECT_EQ(c["available_node_types"]["ray.worker.a"]["node_config"], OrderedJson::object());
  EXPECT_EQ(c["available_node_types"]["ray.worker.a"]["resources"]["vm:g4dn.2xlarge"], 1);
}

struct BadSpec {
  std::string from, to;  // edit of kGoodSpec
  std::string message;   // expected in the error, with its position
};

TEST(ClusterSpec, MistakesAreOneLineErrorsWithThePosition) {
  const std::vector<BadSpec> cases = {
      {"region: us-east-1\n", "region: us-east-1\nzone: a\n",
       "bad.yaml:3:1: unknown key 'zone' in the cluster spec"},
      {"    gpus: 1\n", "    gpus: 1\n    gpu: 1\n",
       "bad.yaml:12:5: unknown key 'gpu' in a worker"},
      {"    spot_max_price: 0.20\n", "",
       "bad.yaml:9:5: worker 'a' is a spot worker without a price cap: set 'spot_max_price'"},
      {"    on_demand: true\n", "    on_demand: true\n    spot_max_price: 1\n",
       "bad.yaml:20:21: worker 'b' has both 'spot_max_price' and 'on_demand: true'"},
      {"spot_max_price: 0.20", "spot_max_price: cheap",
       "bad.yaml:13:21: 'spot_max_price' must be a price in USD per hour"},
      {"    cpus: 8\n", "    cpus: 7.5\n", "bad.yaml:12:11: 'cpus' must be a whole number"},
      {"    min_workers: 1\n", "    min_workers: 3\n",
       "bad.yaml:20:18: worker 'b': min_workers (3) is above max_workers (2)"},
      {"    instance_type: g4dn.2xlarge\n", "", "bad.yaml:9:5: worker 'a' needs 'instance_type'"},
      {"idle_timeout_minutes: 7.5\n", "",
       "bad.yaml:1:1: the cluster spec needs 'idle_timeout_minutes'"},
      {"idle_timeout_minutes: 7.5\n", "idle_timeout_minutes: 0\n",
       "bad.yaml:4:23: 'idle_timeout_minutes' must be a number above 0"},
      {"  - name: b\n", "  - name: a\n", "bad.yaml:15:11: two workers are named 'a'"},
      {"resources: {nvme: 2}", "resources: {\"vm:x.y\": 1}",
       "bad.yaml:22:17: 'vm:x.y': every worker registers vm:<instance type> by itself"},
      {"resources: {nvme: 2}", "resources: {GPU: 1}", "'GPU' is not a custom resource"},
      {"resources: {nvme: 2}", "resources: {nvme: 0.5}",
       "bad.yaml:22:23: resource 'nvme' must be a whole number"},
      {"head: {instance_type: t3.medium}\n", "", "bad.yaml:1:1: the cluster spec needs 'head'"},
      {"image: repo/img:1\n", "image: [a]\n", "bad.yaml:3:8: 'image' must be a non-empty string"},
      {"workers:\n", "workers: {}\nx:\n", "unknown key 'x'"},
      {"head: {instance_type: t3.medium}", "head: {instance_type: t3.medium",
       "bad.yaml:8:8: end of map flow not found"},
  };
  for (const BadSpec& c : cases) {
    std::string text = kGoodSpec;
    std::size_t at = text.find(c.from);
    ASSERT_NE(at, std::string::npos) << c.from;
    text.replace(at, c.from.size(), c.to);
    auto spec = ParseClusterSpec(text, "bad.yaml");
    ASSERT_FALSE(spec.ok()) << "accepted:\n" << text;
    EXPECT_EQ(spec.status().code(), Code::kInputError);
    EXPECT_NE(spec.status().message().find(c.message), std::string::npos)
        << "expected: " << c.message << "\ngot:      " << spec.status().message();
    EXPECT_EQ(spec.status().message().find('\n'), std::string::npos) << spec.status().message();
  }
}

TEST(ClusterSpec, AwsNeedsSubnetsAndAnAmi) {
  ClusterSpec spec = Good();
  EXPECT_TRUE(CheckAwsSpec(spec).ok());
  spec.ami.clear();
  Status s = CheckAwsSpec(spec);
  EXPECT_NE(s.message().find("good.yaml:9: worker 'a' has no AMI"), std::string::npos)
      << s.message();
  spec.workers[0].ami = spec.workers[1].ami = "ami-0123456789abcdef1";
  EXPECT_TRUE(CheckAwsSpec(spec).ok());
  spec.subnet_ids.clear();
  EXPECT_NE(CheckAwsSpec(spec).message().find("needs 'subnet_ids'"), std::string::npos);
}

// ---- the command line ------------------------------------------------------

TEST(ClusterCli, ConfigWritesTheFileAndReportsSpecErrorsWithExitCode5) {
  TempDir dir;
  CommandResult r = RunCli({"cluster", "config", kExampleSpec, "-o", (dir / "c.yaml").string()});
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  YAML::Node c = YAML::LoadFile((dir / "c.yaml").string());
  EXPECT_EQ(c["available_node_types"].size(), 3u);
  EXPECT_EQ(c["available_node_types"]["ray.worker.g6"]["resources"]["vm:g6.xlarge"].as<int>(), 1);

  WriteFile(dir / "bad.yaml", std::string(kGoodSpec) + "extra: 1\n");
  r = RunCli({"cluster", "config", (dir / "bad.yaml").string()});
  EXPECT_EQ(r.exit_code, 5) << Show(r);
  EXPECT_NE(r.err.find("bad.yaml:23:1: unknown key 'extra'"), std::string::npos) << Show(r);
  r = RunCli({"cluster", "config", (dir / "missing.yaml").string()});
  EXPECT_EQ(r.exit_code, 5) << Show(r);

  std::string no_subnet = kGoodSpec;
  no_subnet.erase(no_subnet.find("subnet_ids"),
                  std::string("subnet_ids: [subnet-0123456789abcdef0]\n").size());
  WriteFile(dir / "nosubnet.yaml", no_subnet);
  r = RunCli({"cluster", "config", (dir / "nosubnet.yaml").string()});
  EXPECT_EQ(r.exit_code, 5) << Show(r);
  EXPECT_NE(r.err.find("needs 'subnet_ids'"), std::string::npos) << Show(r);
  // ... which a local fake cluster does not need.
  r = RunCli(
      {"cluster", "config", (dir / "nosubnet.yaml").string(), "--provider", "fake-multinode"});
  EXPECT_EQ(r.exit_code, 0) << Show(r);
  r = RunCli({"cluster", "config", kExampleSpec, "--provider", "gcp"});
  EXPECT_EQ(r.exit_code, 2) << Show(r);
}

TEST(ClusterCli, UserdataAndHeadCommand) {
  CommandResult r = RunCli({"cluster", "userdata", kExampleSpec, "--worker", "g6"});
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  EXPECT_NE(r.out.find("--num-cpus=4 --num-gpus=1 --resources='{\"vm:g6.xlarge\":1,\"l4\":1}' "
                       "--block"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("HEAD_IP=10.0.1.10"), std::string::npos) << r.out;
  // The script is valid bash.
  CommandResult syntax = RunCommand({"/bin/bash", "-n"}, r.out);
  EXPECT_EQ(syntax.exit_code, 0) << Show(syntax);
  r = RunCli({"cluster", "userdata", kExampleSpec, "--worker", "nope"});
  EXPECT_EQ(r.exit_code, 2) << Show(r);
  EXPECT_NE(r.err.find("workers: g4dn, g6"), std::string::npos) << Show(r);

  r = RunCli({"cluster", "head-command", kExampleSpec});
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  EXPECT_NE(r.out.find("--network host"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("ray start --head --port=6379 --num-cpus=2 --num-gpus=0"),
            std::string::npos);
  EXPECT_NE(r.out.find("--autoscaling-config=/tmp/ray_bootstrap_config.yaml"), std::string::npos);
  syntax = RunCommand({"/bin/bash", "-n"}, r.out);
  EXPECT_EQ(syntax.exit_code, 0) << Show(syntax);
}

TEST(ClusterCli, TunnelPrintsTwoSsmPortForwardsAndTheAddresses) {
  CommandResult r =
      RunCli({"cluster", "tunnel", "i-0123456789abcdef0", "--region", "eu-west-1", "--print"});
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  EXPECT_NE(r.out.find("aws ssm start-session --target i-0123456789abcdef0 --region eu-west-1 "
                       "--document-name AWS-StartPortForwardingSession --parameters "
                       "'{\"portNumber\":[\"10001\"],\"localPortNumber\":[\"10001\"]}'"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("'{\"portNumber\":[\"8265\"],\"localPortNumber\":[\"8265\"]}'"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("export RAY_ADDRESS=ray://127.0.0.1:10001"), std::string::npos);
  EXPECT_NE(r.out.find("export RAY_API_SERVER_ADDRESS=http://127.0.0.1:8265"), std::string::npos);
  EXPECT_EQ(r.out.find("0.0.0.0"), std::string::npos);

  r = RunCli({"cluster", "tunnel", "i-0123456789abcdef0", "--region", "eu-west-1", "--print",
              "--dashboard-port", "18265"});
  EXPECT_NE(r.out.find("\"localPortNumber\":[\"18265\"]"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("RAY_API_SERVER_ADDRESS=http://127.0.0.1:18265"), std::string::npos);

  r = RunCli({"cluster", "tunnel", "not-an-id", "--region", "eu-west-1", "--print"});
  EXPECT_EQ(r.exit_code, 2) << Show(r);
  r = RunCommand({"/usr/bin/env", "-u", "AWS_REGION", "-u", "AWS_DEFAULT_REGION", STAGEKIT_CLI,
                  "cluster", "tunnel", "i-0123456789abcdef0", "--print"});
  EXPECT_EQ(r.exit_code, 2) << Show(r);
  EXPECT_NE(r.err.find("--region"), std::string::npos) << Show(r);
}

// A stub on PATH: records its arguments, one call per line, and exits 3.
TEST(ClusterCli, TunnelRunsBothSessionsAndStopsWhenOneEnds) {
  TempDir dir;
  fs::create_directories(dir / "bin");
  WriteFile(dir / "bin" / "aws",
            "#!/bin/sh\necho \"$*\" >> " + (dir / "calls").string() + "\nexit 3\n");
  ::chmod((dir / "bin" / "aws").c_str(), 0755);
  CommandResult r =
      RunCommand({"/usr/bin/env", "PATH=" + (dir / "bin").string() + ":/usr/bin:/bin", STAGEKIT_CLI,
                  "cluster", "tunnel", "i-0123456789abcdef0", "--region", "us-east-1"});
  EXPECT_EQ(r.exit_code, 12) << Show(r);
  EXPECT_NE(r.err.find("ended (exit 3)"), std::string::npos) << Show(r);
  std::string calls = ReadFile(dir / "calls");
  EXPECT_NE(calls.find("\"portNumber\":[\"10001\"]"), std::string::npos) << calls;
  EXPECT_NE(calls.find("\"portNumber\":[\"8265\"]"), std::string::npos) << calls;
}

// A stub `ray`: `down` and `get-worker-ips` as the test wants them; every call
// is recorded. `ray down --workers-only` clears the worker list unless the
// file `sticky` exists (workers that do not go).
class ClusterDownTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fs::create_directories(dir_ / "bin");
    WriteFile(dir_ / "bin" / "ray",
              "#!/bin/sh\nD=" + dir_.path().string() +
                  "\necho \"$*\" >> $D/calls\n"
                  "case \"$1\" in\n"
                  "  down) [ -e $D/fail_down ] && { echo 'boom' >&2; exit 1; }\n"
                  "        [ \"$2\" = --workers-only ] && [ ! -e $D/sticky ] && : > $D/workers\n"
                  "        exit 0 ;;\n"
                  "  get-worker-ips) echo 'Loaded cached provider configuration'; cat $D/workers;"
                  " exit 0 ;;\n"
                  "esac\nexit 9\n");
    ::chmod((dir_ / "bin" / "ray").c_str(), 0755);
    WriteFile(dir_ / "workers", "10.0.1.20\n10.0.1.21\n");
    WriteFile(dir_ / "c.yaml", "cluster_name: c1\n");
  }
  CommandResult Down(std::vector<std::string> extra) {
    std::vector<std::string> argv = {
        "/usr/bin/env", "PATH=" + (dir_ / "bin").string() + ":/usr/bin:/bin",
        STAGEKIT_CLI,   "cluster",
        "down",         (dir_ / "c.yaml").string()};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return RunCommand(argv);
  }
  std::string Calls() { return fs::exists(dir_ / "calls") ? ReadFile(dir_ / "calls") : ""; }
  TempDir dir_;
};

TEST_F(ClusterDownTest, WorkersFirstThenTheHead) {
  CommandResult r = Down({"--yes"});
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  std::string c = (dir_ / "c.yaml").string();
  EXPECT_EQ(Calls(),
            "down --workers-only -y " + c + "\nget-worker-ips " + c + "\ndown -y " + c + "\n");
}

TEST_F(ClusterDownTest, RefusesToDestroyTheHeadWhileWorkersAreUp) {
  WriteFile(dir_ / "sticky", "");
  CommandResult r = Down({"--yes", "--wait", "1s"});
  EXPECT_EQ(r.exit_code, 18) << Show(r);  // operation_failed
  EXPECT_NE(r.err.find("2 workers are still up (10.0.1.20, 10.0.1.21); not destroying the head"),
            std::string::npos)
      << Show(r);
  std::string calls = Calls();
  EXPECT_EQ(calls.rfind("down --workers-only", 0), 0u) << calls;
  EXPECT_NE(calls.find("get-worker-ips"), std::string::npos) << calls;
  EXPECT_EQ(calls.find("down -y"), std::string::npos) << "the head was torn down:\n" << calls;
}

TEST_F(ClusterDownTest, AFailedWorkerTeardownLeavesTheHeadAlone) {
  WriteFile(dir_ / "fail_down", "");
  CommandResult r = Down({"--yes"});
  EXPECT_EQ(r.exit_code, 12) << Show(r);
  EXPECT_NE(r.err.find("boom"), std::string::npos) << Show(r);
  EXPECT_EQ(Calls(), "down --workers-only -y " + (dir_ / "c.yaml").string() + "\n");
}

TEST_F(ClusterDownTest, NeedsYes) {
  CommandResult r = Down({});
  EXPECT_EQ(r.exit_code, 2) << Show(r);
  EXPECT_EQ(Calls(), "");
}

TEST(ClusterSpecTest, NumbersWithInvalidUtf8AroundThemAreRefusedNotThrown) {
  // Found by the cluster_spec fuzzer: "cpus: \xff\xff\xff\xff2" passed the
  // "[0-9]{1,6}" check and std::stoi threw. Now the check refuses it.
  const std::string text = stagekit::testing::ReadFile(
      std::string(STAGEKIT_SOURCE_DIR) +
      "/tests/fuzz/corpus/cluster_spec/regression-invalid-utf8-in-cpus.yaml");
  ASSERT_NE(text.find("cpus: \xff"), std::string::npos);
  auto spec = ParseClusterSpec(text, "spec.yaml");
  ASSERT_FALSE(spec.ok());
  EXPECT_EQ(spec.status().code(), Code::kInputError);
  EXPECT_NE(spec.status().message().find("'cpus' must be a whole number"), std::string::npos)
      << spec.status().message();
}

TEST(CostRecordTest, RoundTripsWithAVersionAndRefusesWhatItCannotRead) {
  CostRecord r;
  r.command = "run";
  r.pipeline = "wc";
  r.executor = "ray";
  r.start = "2026-12-01T10:00:00Z";
  r.end = "2026-12-01T10:01:00Z";
  r.wall_s = 60;
  r.outcome = "succeeded";
  r.node_types = {{"g4dn.xlarge", 2}};
  r.node_seconds = {{"g4dn.xlarge", 120}};
  r.spot_price_caps = {{"g4dn.xlarge", 0.3}};
  r.estimated_usd = 0.01;
  r.budget_usd = 5;
  const Json j = r.ToJson();
  EXPECT_EQ(j["version"], CostRecord::kVersion);
  auto back = CostRecord::FromJson(j);
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_EQ(back->ToJson(), j);
  EXPECT_EQ(back->node_seconds.at("g4dn.xlarge"), 120);
  EXPECT_EQ(*back->budget_usd, 5);
  // A record written before versions were recorded reads as version 1.
  Json old = j;
  old.erase("version");
  EXPECT_TRUE(CostRecord::FromJson(old).ok());
  // A newer one, a missing field or a field of the wrong type is refused, by name.
  Json newer = j;
  newer["version"] = CostRecord::kVersion + 1;
  auto refused = CostRecord::FromJson(newer);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("newer"), std::string::npos);
  Json missing = j;
  missing.erase("outcome");
  EXPECT_NE(CostRecord::FromJson(missing).status().message().find("outcome"), std::string::npos);
  Json wrong = j;
  wrong["wall_s"] = "a minute";
  EXPECT_NE(CostRecord::FromJson(wrong).status().message().find("wall_s"), std::string::npos);
  Json bad_map = j;
  bad_map["node_seconds"] = {{"g4dn.xlarge", "long"}};
  EXPECT_FALSE(CostRecord::FromJson(bad_map).ok());
  Json bad_cost = j;
  bad_cost["estimated_usd"] = "cheap";
  EXPECT_FALSE(CostRecord::FromJson(bad_cost).ok());
}

TEST(CostRecordTest, TheLogSkipsAndCountsLinesThatAreNotRecords) {
  stagekit::testing::TempDir dir;
  const auto log = dir.path() / "cost.jsonl";
  CostRecord r;
  r.command = "submit";
  r.start = "2026-12-01T10:00:00Z";
  r.outcome = "submitted";
  ASSERT_TRUE(AppendCostRecord(log, r).ok());
  {
    std::ofstream out(log, std::ios::app);
    out << "not json\n"
        << R"({"command": "run"})"
        << "\n"
        << R"({"version": 99, "command": "run", "start": "x", "outcome": "y"})"
        << "\n";
  }
  ASSERT_TRUE(AppendCostRecord(log, r).ok());
  int bad = 0;
  auto records = ReadCostLog(log, &bad);
  ASSERT_TRUE(records.ok());
  EXPECT_EQ(records->size(), 2u);
  EXPECT_EQ(bad, 3);
  const Json sum = SummarizeCost(*records, "");
  EXPECT_EQ(sum["runs"], 2);
  EXPECT_EQ(sum["unpriced_runs"], 2);
  EXPECT_EQ(sum["by_outcome"]["submitted"], 2);
}

}  // namespace
}  // namespace stagekit::operate
