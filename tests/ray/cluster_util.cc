#include "ray/cluster_util.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>

#include "unit/test_util.h"
#include "util/process.h"

namespace stagekit::testing {

namespace fs = std::filesystem;

const fs::path kRayBin = STAGEKIT_RAY_BIN_DIR_FOR_TEST;

std::vector<pid_t> ProcessesWith(const std::string& needle) {
  std::vector<pid_t> out;
  for (const auto& e : fs::directory_iterator("/proc")) {
    std::string name = e.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream stat(e.path() / "stat");
    std::string s((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
    std::size_t close = s.rfind(')');
    if (close == std::string::npos || s.substr(close + 2, 1) == "Z") continue;
    std::ifstream cmd(e.path() / "cmdline");
    std::string c((std::istreambuf_iterator<char>(cmd)), std::istreambuf_iterator<char>());
    if (c.find(needle) != std::string::npos) out.push_back(static_cast<pid_t>(std::stol(name)));
  }
  return out;
}

pid_t SessionOf(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string s((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  std::size_t close = s.rfind(')');
  if (close == std::string::npos) return -1;
  std::istringstream rest(s.substr(close + 2));
  std::string state;
  long ppid, pgrp, session = -1;
  rest >> state >> ppid >> pgrp >> session;
  return static_cast<pid_t>(session);
}

std::vector<std::string> PortFlags(bool head) {
  std::vector<std::string> names = {"--node-manager-port",         "--object-manager-port",
                                    "--metrics-export-port",       "--dashboard-agent-listen-port",
                                    "--dashboard-agent-grpc-port", "--runtime-env-agent-port"};
  if (head) names.push_back("--port");
  std::vector<int> ports = util::FreePorts(names.size());
  EXPECT_EQ(ports.size(), names.size());
  std::vector<std::string> flags = {"--min-worker-port=0", "--max-worker-port=0"};
  for (std::size_t i = 0; i < ports.size(); ++i)
    flags.push_back(names[i] + "=" + std::to_string(ports[i]));
  return flags;
}

Node StartNode(std::vector<std::string> args, const fs::path& log,
               const std::vector<std::string>& wrapper) {
  std::vector<std::string> argv = wrapper;
  for (const std::string& a :
       {(kRayBin / "ray").string(), std::string("start"), std::string("--disable-usage-stats")}) {
    argv.push_back(a);
  }
  std::vector<std::string> ports =
      PortFlags(std::find(args.begin(), args.end(), "--head") != args.end());
  argv.insert(argv.end(), ports.begin(), ports.end());
  argv.insert(argv.end(), args.begin(), args.end());
  util::SpawnSpec spec;
  spec.argv = argv;
  spec.new_session = true;
  spec.log_path = log.string();
  auto spawned = util::Spawn(spec);
  EXPECT_TRUE(spawned.ok()) << spawned.status().message();
  Node node;
  node.sid = spawned->pid;
  // Without --block, `ray start` returns once the node runs; with it, wait
  // for the node's "started" line instead.
  if (std::find(args.begin(), args.end(), "--block") != args.end()) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(3);
    while (ReadFile(log).find("Ray runtime started") == std::string::npos &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    EXPECT_NE(ReadFile(log).find("Ray runtime started"), std::string::npos) << ReadFile(log);
  } else {
    int rc = util::WaitFor(spawned->pid, std::chrono::minutes(3));
    EXPECT_EQ(rc, 0) << ReadFile(log);
  }
  char host[256] = {};
  ::gethostname(host, sizeof(host) - 1);
  for (const std::string& p : ports) {
    if (p.rfind("--node-manager-port=", 0) == 0)
      node.node_name = std::string(host) + ":" + p.substr(20);
  }
  return node;
}

}  // namespace stagekit::testing
