// The ray executor against real local Ray clusters: the private head a new
// user gets by default, and a two-node cluster (a head plus a second raylet
// with a fake GPU and a vm:g4dn.2xlarge resource) started here with
// `ray start`. Every test checks that nothing it started is left running.
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <random>
#include <set>
#include <sstream>
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
using testing::ListFiles;
using testing::Node;
using testing::ProcessesWith;
using testing::ReadFile;
using testing::RunCli;
using testing::SessionOf;
using testing::Show;
using testing::StartNode;
using testing::TempDir;
using testing::WriteFile;

const std::string kExamples = STAGEKIT_SOURCE_DIR "/examples";

// The pid in a pid file's name: the digits before ".pid" (test.pid_sleep
// writes INSTANCE.PID.pid, warm.probe INSTANCE-PID.pid). The name, not the
// content: the stage may still be writing that when the test lists the folder.
pid_t PidOf(const std::string& file) {
  const std::size_t end = file.rfind(".pid");
  std::size_t start = end;
  while (start > 0 && std::isdigit(static_cast<unsigned char>(file[start - 1]))) --start;
  if (end == std::string::npos || start == end) {
    ADD_FAILURE() << "no pid in the file name '" << file << "'";
    return -1;
  }
  return static_cast<pid_t>(std::stol(file.substr(start, end - start)));
}

// ---- the default path: a private head started and stopped by the executor --

TEST(RayPrivateHead, ParityAcrossAllThreeExecutorsOnEveryExample) {
  TempDir dir;
  for (const char* example : {"trivial", "wordcount", "montecarlo", "fanout", "dynamic"}) {
    CommandResult r = RunCli({"parity", kExamples + "/" + example + "/pipeline.yaml", "--out",
                              (dir / example).string(), "-q"});
    EXPECT_EQ(r.exit_code, 0) << example << "\n" << Show(r);
    EXPECT_NE(r.out.find("identical across inprocess, subprocess, ray"), std::string::npos)
        << Show(r);
    EXPECT_EQ(r.out.find("DIFFERS"), std::string::npos) << Show(r);
  }
  // Dynamic fan-out with --outputs final: the item list reaches the driver
  // (it makes the instances there), the counts stay on the cluster and reach
  // the collect by reference; the result is the parity run's.
  CommandResult r = RunCli({"run", kExamples + "/dynamic/pipeline.yaml", "-e", "ray", "--outputs",
                            "final", "--no-cache", "-q", "--out", (dir / "final").string()});
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  EXPECT_EQ(testing::ListFiles(dir / "final"),
            (std::vector<std::string>{".stagekit-run.json", "chunks.jsonl", "top_words.tsv"}));
  EXPECT_EQ(testing::ReadFile(dir / "final" / "top_words.tsv"),
            testing::ReadFile(dir / "dynamic" / "inprocess" / "top_words.tsv"));
  EXPECT_TRUE(ProcessesWith("/tmp/skray-").empty()) << "a private Ray head was left running";
}

// A shipped package on a "stock node": Ray at another path (.venv-node), the
// build's .venv and build tree hidden, libyaml-cpp, libzip and libcurl
// hidden. The package's stagekit finds the node's Ray on PATH, starts a
// private head with it, and its workers load the bridge and the stage library
// from the package; the loader's trace shows every library outside the
// allowlist, libnettle and libpcre2 included, coming from the package.
TEST(RayPrivateHead, AShippedPackageRunsOnAStockNodeFromItsOwnLibraries) {
  TempDir dir;
  CommandResult ship = RunCli({"ship", kExamples + "/wordcount/pipeline.yaml", "--include",
                               "/usr/share/games/fortunes=corpus", "-o", (dir / "zip").string(),
                               "--tree", (dir / "pkg").string()});
  ASSERT_EQ(ship.exit_code, 0) << Show(ship);
  CommandResult here = RunCli({"run", kExamples + "/wordcount/pipeline.yaml", "-e", "inprocess",
                               "--no-cache", "-q", "--out", (dir / "here").string()});
  ASSERT_EQ(here.exit_code, 0) << Show(here);

  std::vector<std::string> argv = testing::StockNode(testing::kNodeRayBin);
  ASSERT_FALSE(argv.empty());
  fs::create_directories(dir / "ld");
  argv.insert(argv.begin(), {"/usr/bin/env", "LD_DEBUG=libs",
                             "LD_DEBUG_OUTPUT=" + (dir / "ld" / "trace").string()});
  for (const char* a : {"/bin/sh", ".stagekit/bin/stagekit-launch", "run", "pipeline.yaml", "-e",
                        "ray", "--no-cache", "-q", "--json", "--out"}) {
    argv.emplace_back(a);
  }
  argv.push_back((dir / "node").string());
  CommandResult node = testing::RunCommand(argv, "", dir / "pkg");
  ASSERT_EQ(node.exit_code, 0) << Show(node);
  Json summary = Json::parse(node.out);
  for (const Json& st : summary["stages"]) EXPECT_EQ(st["stats"]["executor"], "ray");
  ASSERT_EQ(ListFiles(dir / "node").size(), 18u);  // 16 maps, the reduce, the record
  for (const std::string& f : ListFiles(dir / "here")) {
    if (f == ".stagekit-run.json") continue;
    EXPECT_EQ(ReadFile(dir / "node" / f), ReadFile(dir / "here" / f)) << f;
  }

  int processes = 0;
  const fs::path package = fs::canonical(dir / "pkg");
  std::vector<std::string> outside = testing::LoadedFromOutside(dir / "ld", package, &processes);
  EXPECT_TRUE(outside.empty()) << ::testing::PrintToString(outside);
  EXPECT_GE(processes, 2);  // the driver and at least one Ray worker
  std::string traces;
  for (const auto& e : fs::directory_iterator(dir / "ld")) traces += ReadFile(e.path());
  std::set<std::string> from_package;  // file names of what was loaded from the package
  std::istringstream lines(traces);
  for (std::string line; std::getline(lines, line);) {
    const std::size_t at = line.find("calling init: " + package.string() + "/");
    if (at != std::string::npos) from_package.insert(fs::path(line).filename().string());
  }
  for (const char* lib : {"libnettle.so.8", "libpcre2-8.so.0", "libyaml-cpp.so.0.7", "libzip.so.4",
                          "libcurl.so.4", "libstagekit.so.0", "libstagekit_examples.so"}) {
    EXPECT_EQ(from_package.count(lib), 1u) << lib << " was not loaded from the package";
  }
  // The workers ran the node's Ray, not the build's.
  EXPECT_NE(traces.find("calling init: " + fs::canonical(testing::kNodeRayBin / "..").string() +
                        "/lib/python3.11/site-packages/ray/cpp/lib/libray_api.so"),
            std::string::npos);
  EXPECT_TRUE(ProcessesWith("/tmp/skray-").empty()) << "a private Ray head was left running";
}

// A node whose Ray is another release than the bridge's is refused before
// anything is loaded: exit 12, naming both versions.
TEST(RayPrivateHead, ANodeWithAnotherRayVersionIsRefused) {
  TempDir dir;
  const fs::path pkg = dir / "env/lib/python3.11/site-packages/ray";
  WriteFile(pkg / "_version.py", "version = \"2.9.3\"\n");
  WriteFile(pkg / "cpp/lib/libray_api.so", "");
  WriteFile(dir / "env/bin/ray", "#!/bin/sh\nexit 3\n");
  fs::permissions(dir / "env/bin/ray", fs::perms::owner_all);
  fs::create_symlink(kRayBin / "python", dir / "env/bin/python");
  CommandResult r = testing::RunCommand(
      {"/usr/bin/env", "STAGEKIT_RAY_BIN_DIR=" + (dir / "env/bin").string(), STAGEKIT_CLI, "run",
       kExamples + "/trivial/pipeline.yaml", "-e", "ray", "--out", (dir / "o").string()});
  EXPECT_EQ(r.exit_code, 12) << Show(r);
  EXPECT_NE(r.err.find("is Ray 2.9.3, but this stagekit's Ray bridge was built for Ray " +
                       RayBridgeVersion()),
            std::string::npos)
      << Show(r);
  EXPECT_FALSE(fs::exists(dir / "o"));
}

TEST(RayPrivateHead, RunReportsTheClusterAndStopsIt) {
  TempDir dir;
  CommandResult r = RunCli({"run", kExamples + "/wordcount/pipeline.yaml", "-e", "ray", "--json",
                            "--out", (dir / "o").string()});
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  Json summary = Json::parse(r.out);
  EXPECT_EQ(summary["ray"]["private_head"], true);
  // 16 corpus files, then the 16 map outputs as the reduce's inputs.
  // The 16 corpus files; the 16 map outputs reach the reduce by reference.
  EXPECT_EQ(summary["ray"]["stats"]["objects_put"], 16);
  EXPECT_EQ(summary["ray"]["stats"]["inputs_by_reference"], 16);
  for (const Json& st : summary["stages"]) EXPECT_EQ(st["stats"]["executor"], "ray");
  // Ray's INFO lines from connecting are filtered out of stagekit's stderr.
  EXPECT_EQ(r.err.find(" I "), std::string::npos) << r.err;
  EXPECT_TRUE(ProcessesWith("/tmp/skray-").empty());
}

TEST(RayPrivateHead, AFailedRunStopsTheHeadToo) {
  TempDir dir;
  WriteFile(dir / "p.yaml", "libraries: [" STAGEKIT_TEST_STAGES
                            "]\nstages:\n"
                            "  - {name: bad, stage: test.throws, kwargs: {message: no luck}}\n");
  CommandResult r =
      RunCli({"run", (dir / "p.yaml").string(), "-e", "ray", "--out", (dir / "o").string()});
  EXPECT_EQ(r.exit_code, 1) << Show(r);
  EXPECT_NE(r.err.find("stage 'bad' (test.throws) failed: no luck (on Ray node "),
            std::string::npos)
      << Show(r);
  EXPECT_TRUE(ProcessesWith("/tmp/skray-").empty()) << "a failed run left the private head running";
}

// A `ray start --head` that times out while starting (seen once in CI under
// load: "The current node timed out during startup") is tried once more, with
// a fresh token, and the run goes on.
TEST(RayPrivateHead, AHeadThatTimesOutStartingIsStartedOnceMore) {
  TempDir dir;
  const fs::path bin = dir / "bin";
  const fs::path marker = dir / "failed-once";
  fs::create_directories(bin);
  WriteFile(bin / "python", "#!/bin/sh\nexec '" + (kRayBin / "python").string() + "' \"$@\"\n");
  WriteFile(bin / "ray", "#!/bin/sh\nif [ ! -e '" + marker.string() + "' ]; then\n  touch '" +
                             marker.string() +
                             "'\n  echo 'Exception: The current node timed out during startup.' "
                             ">&2\n  exit 1\nfi\nexec '" +
                             (kRayBin / "ray").string() + "' \"$@\"\n");
  for (const char* f : {"python", "ray"})
    fs::permissions(bin / f, fs::perms::owner_all, fs::perm_options::add);
  WriteFile(dir / "p.yaml",
            "libraries: [" STAGEKIT_TEST_STAGES "]\nstages:\n  - {name: n, stage: test.noop}\n");
  ::setenv("STAGEKIT_RAY_BIN_DIR", bin.c_str(), 1);
  CommandResult r =
      RunCli({"run", (dir / "p.yaml").string(), "-e", "ray", "--out", (dir / "o").string()});
  ::unsetenv("STAGEKIT_RAY_BIN_DIR");
  EXPECT_EQ(r.exit_code, 0) << Show(r);
  EXPECT_TRUE(fs::exists(marker)) << "the first start did not fail";
  EXPECT_TRUE(ProcessesWith("/tmp/skray-").empty()) << "a head was left running";
}

TEST(RayPrivateHead, CtrlCStopsTheRunAndTheHead) {
  TempDir dir;
  WriteFile(dir / "p.yaml",
            "libraries: [" STAGEKIT_TEST_STAGES
            "]\nstages:\n"
            "  - {name: long, stage: test.pid_sleep, kwargs: {seconds: 120, pid_dir: " +
                dir.path().string() + "}}\n");
  util::SpawnSpec spec;
  spec.argv = {STAGEKIT_CLI, "run",   (dir / "p.yaml").string(), "-e",
               "ray",        "--out", (dir / "o").string()};
  spec.log_path = (dir / "cli.log").string();
  auto cli = util::Spawn(spec);
  ASSERT_TRUE(cli.ok());
  auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(2);
  bool started = false;
  while (!started && std::chrono::steady_clock::now() < deadline) {
    for (const std::string& f : ListFiles(dir.path()))
      started = started || f.find(".pid") != std::string::npos;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_TRUE(started) << ReadFile(dir / "cli.log");
  ::kill(cli->pid, SIGINT);
  int rc = util::WaitFor(cli->pid, std::chrono::minutes(1));
  EXPECT_EQ(rc, 130) << ReadFile(dir / "cli.log");
  EXPECT_NE(ReadFile(dir / "cli.log").find("interrupted"), std::string::npos)
      << ReadFile(dir / "cli.log");
  EXPECT_TRUE(ProcessesWith("/tmp/skray-").empty()) << "Ctrl-C left the private head running";
}

TEST(RayPrivateHead, WarmStagesSetUpOncePerActorWithInProcessOutputs) {
  TempDir dir;
  const std::string pipeline = kExamples + "/warm/pipeline.yaml";
  CommandResult r =
      RunCli({"run", pipeline, "-e", "ray", "-j", "2", "--json", "--out", (dir / "ray").string()});
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  Json summary = Json::parse(r.out);
  std::map<std::string, int> setups_per_actor;
  int warm_stages = 0;
  for (const Json& st : summary["stages"]) {
    if (st["name"].get<std::string>().rfind("embed_", 0) != 0) continue;
    ++warm_stages;
    const Json& w = st["stats"]["metrics"]["warm"];
    ASSERT_TRUE(w.contains("actor")) << st.dump();
    int& s = setups_per_actor[w["actor"].get<std::string>()];
    s = std::max(s, w["setups"].get<int>());
  }
  EXPECT_EQ(warm_stages, 16);
  EXPECT_GE(setups_per_actor.size(), 1u);
  EXPECT_LE(setups_per_actor.size(), 2u) << "at most one actor per concurrent use (-j 2)";
  for (const auto& [actor, setups] : setups_per_actor)
    EXPECT_EQ(setups, 1) << "actor " << actor << " set up more than once";
  EXPECT_EQ(summary["ray"]["stats"]["actors_started"], setups_per_actor.size());
  CommandResult local = RunCli({"run", pipeline, "--out", (dir / "local").string(), "-q"});
  ASSERT_EQ(local.exit_code, 0) << Show(local);
  for (const std::string& f : ListFiles(dir / "local")) {
    if (f == ".stagekit-run.json") continue;
    EXPECT_EQ(ReadFile(dir / "ray" / f), ReadFile(dir / "local" / f)) << f;
  }
  EXPECT_TRUE(ProcessesWith("/tmp/skray-").empty()) << "a private Ray head was left running";
}

// ---- a two-node cluster started by the test --------------------------------

class RayTwoNodes : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    // Token authentication, as newer Ray uses by default; the CLI inherits it.
    WriteFile(dir_->path() / "token", "0123456789abcdef0123456789abcdef");
    ::setenv("RAY_AUTH_MODE", "token", 1);
    ::setenv("RAY_AUTH_TOKEN_PATH", (dir_->path() / "token").c_str(), 1);
    std::string tmpl = "/tmp/sktest-XXXXXX";  // short: Ray puts Unix sockets below it
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    ray_tmp_ = tmpl;
    head_ = StartNode({"--head", "--temp-dir=" + ray_tmp_ + "/head", "--num-cpus=2",
                       "--include-dashboard=false", "--object-store-memory=600000000"},
                      dir_->path() / "head.log");
    address_ = ReadFile(ray_tmp_ + "/head/ray_current_cluster");
    while (!address_.empty() && address_.back() == '\n') address_.pop_back();
    // Its own IP on the loopback range: a driver attaches to a raylet on its own
    // IP, and on a real cluster that is never the worker node that gets lost.
    gpu_node_ =
        StartNode({"--address=" + address_, "--node-ip-address=127.0.0.2",
                   "--temp-dir=" + ray_tmp_ + "/node2", "--num-cpus=1", "--num-gpus=1",
                   "--resources={\"vm:g4dn.2xlarge\": 1}", "--object-store-memory=300000000"},
                  dir_->path() / "node2.log");
  }
  static void TearDownTestSuite() {
    StopProcessSession(gpu_node_.sid, std::chrono::seconds(2));
    StopProcessSession(head_.sid, std::chrono::seconds(2));
    EXPECT_TRUE(ProcessesWith(ray_tmp_).empty()) << "the test cluster was left running";
    std::error_code ec;
    fs::remove_all(ray_tmp_, ec);
    delete dir_;
    ::unsetenv("RAY_AUTH_MODE");
    ::unsetenv("RAY_AUTH_TOKEN_PATH");
  }

  fs::path Pipeline(const std::string& name, const std::string& stages) {
    fs::path p = dir_->path() / (name + ".yaml");
    WriteFile(p, "name: " + name + "\nlibraries: [" STAGEKIT_TEST_STAGES "]\nstages:\n" + stages);
    return p;
  }
  CommandResult Run(const fs::path& pipeline, const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args = {
        "run",    pipeline.string(), "-e",
        "ray",    "--address",       address_,
        "--json", "--out",           (dir_->path() / "out" / pipeline.stem()).string()};
    args.insert(args.end(), extra.begin(), extra.end());
    return RunCli(args);
  }

  static TempDir* dir_;
  static std::string ray_tmp_;
  static std::string address_;
  static Node head_, gpu_node_;
};

TempDir* RayTwoNodes::dir_ = nullptr;
std::string RayTwoNodes::ray_tmp_;
std::string RayTwoNodes::address_;
Node RayTwoNodes::head_;
Node RayTwoNodes::gpu_node_;

TEST_F(RayTwoNodes, PlacementFollowsGpuAndCustomResources) {
  WriteFile(dir_->path() / "in.txt", "placement\n");
  fs::path p = Pipeline(
      "placement",
      "  - {name: sync, stage: test.copy, inputs: {in: " + (dir_->path() / "in.txt").string() +
          "}, resources: {gpus: 0.01}}\n"
          "  - {name: vm, stage: test.copy, inputs: {in: {from: sync}}, "
          "resources: {custom: {\"vm:g4dn.2xlarge\": 1}}}\n");
  CommandResult r = Run(p);
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  Json summary = Json::parse(r.out);
  EXPECT_EQ(summary["stages"][0]["stats"]["node"], gpu_node_.node_name) << summary.dump(2);
  EXPECT_EQ(summary["stages"][1]["stats"]["node"], gpu_node_.node_name) << summary.dump(2);
  EXPECT_EQ(summary["ray"]["nodes"].size(), 2u);
}

// The data plane: a chain and a fan-in, all on node 2. Intermediates go
// from stage to stage by reference and stay on node 2; the driver fetches
// what --outputs and keep ask for, and nothing else.
TEST_F(RayTwoNodes, IntermediatesStayOnTheClusterAndOnlyWhatIsAskedReachesTheDriver) {
  std::string big(3 << 20, '\0');
  std::mt19937_64 rng(11);
  for (char& c : big) c = static_cast<char>(rng());
  WriteFile(dir_->path() / "byref-in.bin", big);
  const std::string node2 = ", resources: {custom: {\"vm:g4dn.2xlarge\": 1}}";
  auto pipeline = [&](const std::string& keep_b) {
    return Pipeline(
        "byref", "  - {name: a, stage: test.copy, output: a.bin, inputs: {in: " +
                     (dir_->path() / "byref-in.bin").string() + "}" + node2 +
                     "}\n"
                     "  - {name: b, stage: test.checksum, output: b.txt, inputs: {in: {from: a}}" +
                     node2 + keep_b +
                     "}\n"
                     "  - {name: c, stage: test.copy, output: c.bin, inputs: {in: {from: a}}" +
                     node2 +
                     "}\n"
                     "  - {name: d, stage: test.concat, output: d.bin, inputs: {x: {from: b}, "
                     "y: {from: c}}" +
                     node2 + "}\n");
  };
  fs::path p = pipeline("");
  const fs::path local = dir_->path() / "byref-local";
  CommandResult ref = RunCli({"run", p.string(), "--out", local.string(), "-q", "--no-cache"});
  ASSERT_EQ(ref.exit_code, 0) << Show(ref);

  auto run = [&](const std::string& outputs, const fs::path& out) {
    return RunCli({"run", p.string(), "-e", "ray", "--address", address_, "--json", "--no-cache",
                   "--outputs", outputs, "--out", out.string()});
  };
  const fs::path final_out = dir_->path() / "byref-final";
  CommandResult r = run("final", final_out);
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  Json summary = Json::parse(r.out);
  for (const Json& st : summary["stages"]) {
    EXPECT_EQ(st["stats"]["node"], gpu_node_.node_name) << st.dump(2);
    EXPECT_EQ(st["fetched"], st["name"] == "d") << st.dump(2);
  }
  // Only the final output is in the output folder, byte-identical.
  EXPECT_EQ(ListFiles(final_out), (std::vector<std::string>{".stagekit-run.json", "d.bin"}));
  EXPECT_EQ(ReadFile(final_out / "d.bin"), ReadFile(local / "d.bin"));
  const Json& stats = summary["ray"]["stats"];
  EXPECT_EQ(stats["objects_put"], 1) << "only the input file is put by the driver";
  EXPECT_EQ(stats["bytes_put"], big.size());
  EXPECT_EQ(stats["inputs_by_reference"], 4);  // b and c read a; d reads b and c
  EXPECT_EQ(stats["outputs_fetched"], 1);
  EXPECT_EQ(stats["bytes_fetched"], fs::file_size(local / "d.bin"));
  EXPECT_EQ(stats["outputs_left_on_cluster"], 3);
  // a, b and c are released once their readers are done; d has none.
  EXPECT_EQ(stats["results_released"], 3);
  const Json& data = summary["data"];
  EXPECT_EQ(data["bytes_fetched"], fs::file_size(local / "d.bin"));
  EXPECT_EQ(data["bytes_left_on_cluster"], fs::file_size(local / "a.bin") +
                                               fs::file_size(local / "b.txt") +
                                               fs::file_size(local / "c.bin"));
  ASSERT_TRUE(data["by_node"].contains(gpu_node_.node_name)) << data.dump(2);
  EXPECT_EQ(data["by_node"][gpu_node_.node_name]["stages"], 4);

  // keep: true fetches an intermediate too.
  p = pipeline(", keep: true");
  const fs::path kept = dir_->path() / "byref-keep";
  r = run("final", kept);
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  EXPECT_EQ(ListFiles(kept), (std::vector<std::string>{".stagekit-run.json", "b.txt", "d.bin"}));
  EXPECT_EQ(ReadFile(kept / "b.txt"), ReadFile(local / "b.txt"));

  // none: the driver receives no output bytes at all.
  p = pipeline("");
  const fs::path none = dir_->path() / "byref-none";
  r = run("none", none);
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  summary = Json::parse(r.out);
  EXPECT_EQ(summary["ray"]["stats"]["bytes_fetched"], 0);
  EXPECT_EQ(summary["data"]["bytes_fetched"], 0);
  EXPECT_EQ(ListFiles(none), std::vector<std::string>{".stagekit-run.json"});
}

// An output larger than the fetch window reaches the driver in windows: its
// memory grows by a few windows, not by the output. The whole output fetched
// at once (window above its size) is the control.
TEST_F(RayTwoNodes, ALargeOutputIsFetchedInWindowsWithBoundedDriverMemory) {
  constexpr std::uint64_t kBytes = 64ull << 20;
  fs::path p =
      Pipeline("windows", "  - {name: fill, stage: test.fill, output: big.bin, kwargs: {bytes: " +
                              std::to_string(kBytes) +
                              ", seed: 5}, resources: {custom: {\"vm:g4dn.2xlarge\": 1}}}\n");
  const fs::path local = dir_->path() / "windows-local";
  CommandResult ref = RunCli({"run", p.string(), "--out", local.string(), "-q", "--no-cache"});
  ASSERT_EQ(ref.exit_code, 0) << Show(ref);
  auto run = [&](const std::string& window_mib, const fs::path& out) {
    return RunCli({"run", p.string(), "-e", "ray", "--address", address_, "--json", "--no-cache",
                   "--fetch-window", window_mib, "--out", out.string()});
  };
  CommandResult windowed = run("4", dir_->path() / "windows-4");
  ASSERT_EQ(windowed.exit_code, 0) << Show(windowed);
  CommandResult whole = run("256", dir_->path() / "windows-whole");
  ASSERT_EQ(whole.exit_code, 0) << Show(whole);
  Json summary = Json::parse(windowed.out);
  EXPECT_EQ(summary["ray"]["stats"]["windows_fetched"], 16);
  EXPECT_EQ(summary["ray"]["stats"]["bytes_fetched"], kBytes);
  EXPECT_EQ(Json::parse(whole.out)["ray"]["stats"]["windows_fetched"], 0);
  EXPECT_EQ(ReadFile(dir_->path() / "windows-4" / "big.bin"), ReadFile(local / "big.bin"));
  EXPECT_EQ(ReadFile(dir_->path() / "windows-whole" / "big.bin"), ReadFile(local / "big.bin"));
  std::cout << "driver peak RSS fetching 64 MiB: " << windowed.max_rss_kb / 1024
            << " MiB in 4 MiB windows, " << whole.max_rss_kb / 1024 << " MiB whole\n";
  // Whole, the driver holds the output at least once; in windows, far less.
  EXPECT_GT(whole.max_rss_kb - windowed.max_rss_kb, static_cast<long>(kBytes / 1024 / 2))
      << "windowed " << windowed.max_rss_kb << " KiB, whole " << whole.max_rss_kb << " KiB";
}

TEST_F(RayTwoNodes, RayAddressFromTheEnvironmentIsUsed) {
  fs::path p = Pipeline("env", "  - {name: one, stage: test.noop}\n");
  CommandResult r = testing::RunCommand({"/usr/bin/env", "RAY_ADDRESS=" + address_, STAGEKIT_CLI,
                                         "run", p.string(), "-e", "ray", "--json", "--out",
                                         (dir_->path() / "out" / "env").string()});
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  Json summary = Json::parse(r.out);
  EXPECT_EQ(summary["ray"]["private_head"], false);
  EXPECT_EQ(summary["ray"]["address"], address_);
  EXPECT_TRUE(ProcessesWith("/tmp/skray-").empty()) << "started a private head despite RAY_ADDRESS";
}

TEST_F(RayTwoNodes, CommandLineOverridesPlaceStagesToo) {
  fs::path p = Pipeline("override", "  - {name: plain, stage: test.noop}\n");
  CommandResult r = Run(p, {"--resources", "plain:cpus=1,vm:g4dn.2xlarge=1"});
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  Json summary = Json::parse(r.out);
  EXPECT_EQ(summary["stages"][0]["stats"]["node"], gpu_node_.node_name) << summary.dump(2);
  EXPECT_EQ(summary["stages"][0]["resources"]["custom"]["vm:g4dn.2xlarge"], 1);
}

TEST_F(RayTwoNodes, StageErrorsAreNotRetriedAndNameTheNode) {
  fs::path p = Pipeline("throws",
                        "  - {name: bad, stage: test.throws, kwargs: {message: bad pixel}, "
                        "resources: {gpus: 0.01}}\n");
  CommandResult r = Run(p);
  EXPECT_EQ(r.exit_code, 1) << Show(r);
  EXPECT_NE(r.err.find("stage 'bad' (test.throws) failed: bad pixel (on Ray node " +
                       gpu_node_.node_name + ")"),
            std::string::npos)
      << Show(r);
  Json summary = Json::parse(r.out);
  EXPECT_EQ(summary["ray"]["stats"]["tasks_submitted"], 1);  // not retried
}

// Outputs are byte-identical across executors, so the cache is shared by all
// of them: what an in-process run stored is restored by a Ray run (which then
// needs no cluster at all), and what Ray computed is restored locally.
TEST_F(RayTwoNodes, TheCacheIsSharedByAllExecutors) {
  const fs::path cache = dir_->path() / "shared-cache";
  WriteFile(dir_->path() / "shared-in.txt", "computed in-process first\n");
  fs::path p = Pipeline(
      "shared", "  - {name: first, stage: test.copy, inputs: {in: " +
                    (dir_->path() / "shared-in.txt").string() +
                    "}}\n"
                    "  - {name: second, stage: test.checksum, inputs: {in: {from: first}}}\n");
  auto all_cached = [](const Json& summary, bool cached) {
    for (const Json& st : summary["stages"]) {
      if (st["cached"] != cached) return false;
    }
    return summary["stages"].size() == 2;
  };
  const fs::path local = dir_->path() / "out" / "shared-local";
  CommandResult r = RunCli({"run", p.string(), "-e", "inprocess", "--cache-dir", cache.string(),
                            "--json", "--out", local.string()});
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  EXPECT_TRUE(all_cached(Json::parse(r.out), false)) << r.out;

  r = Run(p, {"--resume", "--cache-dir", cache.string()});
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  Json summary = Json::parse(r.out);
  EXPECT_TRUE(all_cached(summary, true)) << r.out;
  EXPECT_EQ(summary["started_executor"], false) << "a fully cached run used the cluster";
  EXPECT_FALSE(summary.contains("ray")) << r.out;
  const fs::path on_ray = dir_->path() / "out" / "shared";
  EXPECT_EQ(ReadFile(on_ray / "second.out"), ReadFile(local / "second.out"));

  // A changed input: both stages run on Ray and are stored; a local run restores them.
  WriteFile(dir_->path() / "shared-in.txt", "computed on Ray this time\n");
  r = Run(p, {"--resume", "--cache-dir", cache.string()});
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  summary = Json::parse(r.out);
  EXPECT_TRUE(all_cached(summary, false)) << r.out;
  EXPECT_EQ(summary["stages"][1]["stats"]["executor"], "ray") << r.out;
  EXPECT_TRUE(summary.contains("ray")) << r.out;
  const fs::path back = dir_->path() / "out" / "shared-back";
  r = RunCli({"run", p.string(), "-e", "subprocess", "--resume", "--cache-dir", cache.string(),
              "--json", "--out", back.string()});
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  summary = Json::parse(r.out);
  EXPECT_TRUE(all_cached(summary, true)) << r.out;
  EXPECT_EQ(summary["stages"][1]["stats"]["executor"], "ray") << "restored from the Ray run";
  EXPECT_EQ(ReadFile(back / "first.out"), "computed on Ray this time\n");
  EXPECT_EQ(ReadFile(back / "second.out"), ReadFile(on_ray / "second.out"));
}

// --resume on Ray: a restored output is put into the object store once and
// every stage that reads it gets it by reference.
TEST_F(RayTwoNodes, AResumedOutputIsPutOnceAndReadByReference) {
  const fs::path cache = dir_->path() / "resume-ref-cache";
  WriteFile(dir_->path() / "resume-ref-in.txt", std::string(300000, 'r'));
  const std::string first = "  - {name: first, stage: test.copy, inputs: {in: " +
                            (dir_->path() / "resume-ref-in.txt").string() + "}}\n";
  fs::path p = Pipeline("resumeref", first);
  CommandResult r = RunCli({"run", p.string(), "--cache-dir", cache.string(), "--json", "--out",
                            (dir_->path() / "out" / "resumeref-local").string()});
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  // The same pipeline grows two readers of `first`: only they run.
  p = Pipeline("resumeref",
               first +
                   "  - {name: sum, stage: test.checksum, inputs: {in: {from: first}}}\n"
                   "  - {name: both, stage: test.concat, inputs: {a: {from: first}}}\n");
  r = Run(p, {"--resume", "--cache-dir", cache.string()});
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  Json summary = Json::parse(r.out);
  EXPECT_EQ(summary["stages"][0]["cached"], true) << r.out;
  EXPECT_EQ(summary["stages"][1]["cached"], false) << r.out;
  EXPECT_EQ(summary["ray"]["stats"]["objects_put"], 1u) << summary["ray"].dump(1);
  EXPECT_EQ(summary["ray"]["stats"]["bytes_put"], 300000u) << summary["ray"].dump(1);
  const fs::path out = dir_->path() / "out" / "resumeref";
  CommandResult in = RunCli({"run", p.string(), "--no-cache", "-q", "--out",
                             (dir_->path() / "out" / "resumeref-in").string()});
  ASSERT_EQ(in.exit_code, 0) << Show(in);
  for (const char* f : {"first.out", "sum.out", "both.out"})
    EXPECT_EQ(ReadFile(out / f), ReadFile(dir_->path() / "out" / "resumeref-in" / f)) << f;
}

// A reader starts on its input's result by reference as soon as that is
// made, not once the driver has its own copy: here the driver fetches 48 MiB
// in 1 MiB windows while the reader already runs.
TEST_F(RayTwoNodes, ReadersDoNotWaitForTheDriversCopy) {
  fs::path p = Pipeline("earlyreaders",
                        "  - {name: big, stage: test.fill, kwargs: {bytes: 50331648, seed: 3}}\n"
                        "  - {name: sum, stage: test.checksum, inputs: {in: {from: big}}}\n");
  CommandResult r = Run(p, {"--fetch-window", "1"});
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  Json summary = Json::parse(r.out);
  const Json& big = summary["stages"][0];
  const Json& sum = summary["stages"][1];
  EXPECT_LT(sum["start_s"].get<double>(), big["end_s"].get<double>()) << summary["stages"].dump(1);
  EXPECT_EQ(summary["ray"]["stats"]["inputs_by_reference"], 1u) << summary["ray"].dump(1);
  EXPECT_GE(summary["ray"]["stats"]["windows_fetched"], 48u) << summary["ray"].dump(1);
  const fs::path in = dir_->path() / "out" / "earlyreaders-in";
  CommandResult local = RunCli({"run", p.string(), "--no-cache", "-q", "--out", in.string()});
  ASSERT_EQ(local.exit_code, 0) << Show(local);
  const fs::path out = dir_->path() / "out" / "earlyreaders";
  EXPECT_EQ(ReadFile(out / "sum.out"), ReadFile(in / "sum.out"));
  EXPECT_EQ(ReadFile(out / "big.out"), ReadFile(in / "big.out"));
}

TEST_F(RayTwoNodes, InfeasibleRequestFailsFastNamingTheResource) {
  fs::path p =
      Pipeline("infeasible",
               "  - {name: big, stage: test.noop, resources: {custom: {\"vm:p5.48xlarge\": 1}}}\n");
  auto start = std::chrono::steady_clock::now();
  CommandResult r = Run(p);
  EXPECT_EQ(r.exit_code, 11) << Show(r);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(30))
      << "did not fail fast";
  EXPECT_NE(
      r.err.find(
          "stage 'big' (test.noop) asks for {CPU: 1, vm:p5.48xlarge: 1} but no node of the Ray "
          "cluster can ever provide it (no node has vm:p5.48xlarge: 1)"),
      std::string::npos)
      << Show(r);
  EXPECT_NE(r.err.find("vm:g4dn.2xlarge: 1"), std::string::npos) << "should list what nodes offer\n"
                                                                 << Show(r);
}

TEST_F(RayTwoNodes, KilledWorkerIsRetriedAndOutputIsIdentical) {
  fs::path pid_dir = dir_->path() / "pids-kill";
  fs::create_directories(pid_dir);
  fs::path p =
      Pipeline("kill",
               "  - {name: victim, stage: test.pid_sleep, output: victim.txt, kwargs: {seconds: 3, "
               "pid_dir: " +
                   pid_dir.string() + "}}\n");
  CommandResult r;
  std::thread cli([&] { r = Run(p); });
  // Kill the first two attempts: Ray's C++ API retries a dead worker's task
  // once by itself, so the second kill reaches stagekit's own retry.
  std::set<std::string> seen;
  int killed = 0;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(3);
  while (killed < 2 && std::chrono::steady_clock::now() < deadline) {
    for (const std::string& f : ListFiles(pid_dir)) {
      if (!seen.insert(f).second) continue;
      pid_t pid = PidOf(f);
      EXPECT_EQ(::kill(pid, SIGKILL), 0);
      ++killed;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  cli.join();
  EXPECT_EQ(killed, 2);
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  Json summary = Json::parse(r.out);
  EXPECT_EQ(summary["stages"][0]["stats"]["attempt"], 2) << summary.dump(2);
  EXPECT_GE(summary["ray"]["stats"]["system_retries"], 1);
  fs::path out = dir_->path() / "out" / "kill";
  EXPECT_EQ(ReadFile(out / "victim.txt"), "slept for victim\n");  // what inprocess writes
  EXPECT_EQ(ListFiles(out), (std::vector<std::string>{".stagekit-run.json", "victim.txt"}));
}

TEST_F(RayTwoNodes, AWarmActorThatDiesIsReplacedAndTheStageRetried) {
  fs::path pid_dir = dir_->path() / "pids-actor";
  fs::create_directories(pid_dir);
  fs::path p = dir_->path() / "actor.yaml";
  WriteFile(p, "name: actor\nlibraries: [" STAGEKIT_EXAMPLE_STAGES
               "]\nstages:\n"
               "  - {name: victim, stage: warm.probe, output: victim.txt, kwargs: {sleep_ms: 3000, "
               "pid_dir: " +
                   pid_dir.string() + "}}\n");
  CommandResult r;
  std::thread cli([&] { r = Run(p); });
  pid_t killed = -1;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(3);
  while (killed < 0 && std::chrono::steady_clock::now() < deadline) {
    for (const std::string& f : ListFiles(pid_dir)) {
      killed = PidOf(f);
      EXPECT_EQ(::kill(killed, SIGKILL), 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  cli.join();
  ASSERT_GT(killed, 0) << "the warm actor never ran the stage";
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  Json summary = Json::parse(r.out);
  const Json& stats = summary["stages"][0]["stats"];
  EXPECT_EQ(stats["attempt"], 2) << summary.dump(2);
  EXPECT_EQ(stats["metrics"]["warm"]["new_actor"], true);
  EXPECT_NE(stats["metrics"]["warm"]["worker"], "pid:" + std::to_string(killed));
  EXPECT_EQ(summary["ray"]["stats"]["actors_started"], 2);
  EXPECT_GE(summary["ray"]["stats"]["system_retries"], 1);
  EXPECT_EQ(ReadFile(dir_->path() / "out" / "actor" / "victim.txt").rfind("probe victim ", 0), 0u);
}

// A warm actor keeps its GPU while idle. With one GPU in the cluster, a
// second actor for the same stage could never start, and a plain GPU stage
// after the warm ones could never run: stagekit caps the actors at what the
// cluster can hold and lets idle ones go for a stage that needs their GPU.
TEST_F(RayTwoNodes, WarmGpuStagesShareTheOnlyGpuWithoutWaitingForever) {
  fs::path p = dir_->path() / "gpu-warm.yaml";
  std::string stages;
  for (int i = 0; i < 4; ++i) {
    stages += "  - {name: gpu_" + std::to_string(i) +
              ", stage: warm.probe, kwargs: {sleep_ms: 200}, resources: {gpus: 1}}\n";
  }
  // The plain stage reads all four, so that it wants the GPU only once every
  // warm stage is done: one that read fewer could want it while a warm stage
  // still waits for the actor, which then rightly gives the GPU up and is
  // started again afterwards (two actors, by timing).
  stages +=
      "  - {name: plain_gpu, stage: warm.collect, inputs: {a: {from: gpu_0}, b: {from: gpu_1}, "
      "c: {from: gpu_2}, d: {from: gpu_3}}, resources: {gpus: 1}}\n";
  WriteFile(p, "name: gpu-warm\nlibraries: [" STAGEKIT_EXAMPLE_STAGES "]\nstages:\n" + stages);
  // A stage that waited forever would time out instead of hanging the test.
  CommandResult r = Run(p, {"-j", "3", "--timeout", "90s"});
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  Json summary = Json::parse(r.out);
  for (const Json& st : summary["stages"]) {
    EXPECT_EQ(st["stats"]["node"], gpu_node_.node_name) << st.dump(2);
  }
  EXPECT_EQ(summary["ray"]["stats"]["actors_started"], 1) << summary.dump(2);
}

TEST_F(RayTwoNodes, BigInputGoesIntoTheObjectStoreOnce) {
  fs::path big = dir_->path() / "big.bin";
  {
    std::mt19937_64 rng(7);
    std::string bytes(64 << 20, '\0');
    for (std::size_t i = 0; i < bytes.size(); i += 8) {
      std::uint64_t v = rng();
      std::memcpy(&bytes[i], &v, 8);
    }
    WriteFile(big, bytes);
  }
  std::string stages;
  for (int i = 0; i < 16; ++i) {
    stages += "  - {name: read" + std::to_string(i) +
              ", stage: test.checksum, inputs: {in: " + big.string() + "}}\n";
  }
  fs::path p = Pipeline("big", stages);
  CommandResult r = Run(p, {"-j", "4"});
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  Json summary = Json::parse(r.out);
  EXPECT_EQ(summary["ray"]["stats"]["objects_put"], 1);
  EXPECT_EQ(summary["ray"]["stats"]["bytes_put"], 64 << 20);
  // Sixteen copies would take the driver past 1 GiB; one stays far below.
  std::cout << "driver peak RSS with a 64 MiB input read by 16 stages: " << r.max_rss_kb / 1024
            << " MiB\n";
  EXPECT_LT(r.max_rss_kb, 600 * 1024) << "driver peak RSS " << r.max_rss_kb << " KiB";
  std::string first = ReadFile(dir_->path() / "out" / "big" / "read0.out");
  for (int i = 1; i < 16; ++i) {
    EXPECT_EQ(ReadFile(dir_->path() / "out" / "big" / ("read" + std::to_string(i) + ".out")),
              first);
  }
  CommandResult local =
      RunCli({"run", p.string(), "--out", (dir_->path() / "local-big").string(), "-q"});
  ASSERT_EQ(local.exit_code, 0) << Show(local);
  EXPECT_EQ(ReadFile(dir_->path() / "local-big" / "read0.out"), first);
}

// Last: it takes the second node away.
// Ray makes a lost result again by itself only while the task that made it
// has a retry left (Ray's C++ API submits every task with one, and cannot
// set more). Here the producer's first worker is killed (Ray retries it:
// the retry is used up), then its node is stopped before the reader starts,
// and node 4 offers resource `lineage` instead. The reader's attempt fails on
// the lost input; the next one makes the producer again from its recipe, and
// the output is what test.sizes makes of the producer's bytes.
TEST_F(RayTwoNodes, AnIntermediateLostWithItsNodeIsMadeAgain) {
  Node node3 = StartNode(
      {"--address=" + address_, "--node-ip-address=127.0.0.3", "--temp-dir=" + ray_tmp_ + "/node3",
       "--num-cpus=1", "--resources={\"lineage\": 1}", "--object-store-memory=100000000"},
      dir_->path() / "node3.log");
  fs::path made_pids = dir_->path() / "pids-made", wait_pids = dir_->path() / "pids-wait";
  fs::create_directories(made_pids);
  fs::create_directories(wait_pids);
  const std::string on_head =
      ", resources: {custom: {\"node:" + address_.substr(0, address_.find(':')) + "\": 0.01}}";
  // 3 MiB: above Ray's 100 KiB inline limit, so the result lives in node 3's object store.
  fs::path p = Pipeline(
      "lineage",
      "  - {name: made, stage: test.pid_sleep, kwargs: {seconds: 2, pad: 3145728, pid_dir: " +
          made_pids.string() +
          "}, resources: {custom: {lineage: 1}}}\n"
          "  - {name: wait, stage: test.pid_sleep, kwargs: {seconds: 14, pid_dir: " +
          wait_pids.string() + "}" + on_head +
          "}\n"
          "  - {name: read, stage: test.sizes, inputs: {a: {from: made}, b: {from: wait}}" +
          on_head + "}\n");
  CommandResult r;
  std::thread cli([&] { r = Run(p, {"-j", "3", "--outputs", "final"}); });
  auto wait_for_pids = [](const fs::path& dir, std::size_t n) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(2);
    while (ListFiles(dir).size() < n && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return ListFiles(dir);
  };
  std::vector<std::string> first = wait_for_pids(made_pids, 1);
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(::kill(PidOf(first[0]), SIGKILL), 0);
  ASSERT_EQ(wait_for_pids(made_pids, 2).size(), 2u) << "Ray did not retry the killed producer";
  // The retried producer sleeps 2 s; then its node goes, and another offers `lineage`.
  std::this_thread::sleep_for(std::chrono::seconds(4));
  StopProcessSession(node3.sid, std::chrono::seconds(1));
  Node node4 = StartNode(
      {"--address=" + address_, "--node-ip-address=127.0.0.4", "--temp-dir=" + ray_tmp_ + "/node4",
       "--num-cpus=1", "--resources={\"lineage\": 1}", "--object-store-memory=100000000"},
      dir_->path() / "node4.log");
  cli.join();
  StopProcessSession(node4.sid, std::chrono::seconds(1));
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  Json summary = Json::parse(r.out);
  EXPECT_EQ(summary["stages"][0]["stats"]["node"], node3.node_name) << summary.dump(2);
  EXPECT_GE(summary["ray"]["stats"]["results_remade"], 1) << summary.dump(2);
  EXPECT_GE(summary["stages"][2]["stats"]["attempt"], 2);
  EXPECT_EQ(ListFiles(made_pids).size(), 3u);  // two runs on node 3, one on node 4
  // What test.sizes makes of the two outputs, as in-process would.
  auto line = [](const std::string& name, const std::string& text, std::size_t pad) {
    std::string bytes = text;
    while (bytes.size() < pad) bytes += text;
    std::uint64_t sum = 0;
    for (char c : bytes) sum = sum * 31 + static_cast<unsigned char>(c);
    return name + " " + std::to_string(bytes.size()) + " " + std::to_string(sum) + "\n";
  };
  EXPECT_EQ(ReadFile(dir_->path() / "out" / "lineage" / "read.out"),
            line("a", "slept for made\n", 3145728) + line("b", "slept for wait\n", 0));
  EXPECT_FALSE(fs::exists(dir_->path() / "out" / "lineage" / "made.out"));  // never fetched
}

TEST_F(RayTwoNodes, StagesOfAStoppedNodeAreRescheduled) {
  fs::path pid_dir = dir_->path() / "pids-node";
  fs::create_directories(pid_dir);
  std::string stages;
  for (int i = 0; i < 4; ++i) {
    stages += "  - {name: s" + std::to_string(i) +
              ", stage: test.pid_sleep, kwargs: {seconds: 4, pid_dir: " + pid_dir.string() + "}}\n";
  }
  fs::path p = Pipeline("nodeloss", stages);
  CommandResult r;
  std::thread cli([&] { r = Run(p, {"-j", "4"}); });
  bool stopped = false;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(2);
  while (!stopped && std::chrono::steady_clock::now() < deadline) {
    for (const std::string& f : ListFiles(pid_dir)) {
      pid_t pid = PidOf(f);
      if (SessionOf(pid) == gpu_node_.sid) {
        StopProcessSession(gpu_node_.sid, std::chrono::seconds(1));
        stopped = true;
        break;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  cli.join();
  EXPECT_TRUE(stopped) << "no stage ever ran on the second node";
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  fs::path out = dir_->path() / "out" / "nodeloss";
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(ReadFile(out / ("s" + std::to_string(i) + ".out")),
              "slept for s" + std::to_string(i) + "\n");
  }
  EXPECT_TRUE(ProcessesWith(ray_tmp_ + "/node2").empty());
}

// A stage's timeout runs from its submission, and one past it fails the run
// with exit 8, naming the stage, and publishes nothing, while the task itself
// (which the C++ API cannot cancel) runs on to its end.
TEST_F(RayTwoNodes, AStagePastItsTimeoutFailsTheRunWithExit8) {
  fs::path p = Pipeline("late", "  - {name: slow, stage: test.sleep, kwargs: {seconds: 4}}\n");
  CommandResult r = Run(p, {"--timeout", "1s"});
  EXPECT_EQ(r.exit_code, 8) << Show(r);
  EXPECT_NE(r.err.find("stage 'slow' (test.sleep) timed out after 1000ms on Ray"),
            std::string::npos)
      << r.err;
  EXPECT_FALSE(fs::exists(dir_->path() / "out" / "late" / "slow.out"));
}

}  // namespace
}  // namespace stagekit
