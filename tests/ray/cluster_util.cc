#include "ray/cluster_util.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include "deploy/bundle.h"
#include "stagekit/ray.h"
#include "unit/test_util.h"
#include "util/process.h"

namespace stagekit::testing {

namespace fs = std::filesystem;

const fs::path kRayBin = STAGEKIT_RAY_BIN_DIR_FOR_TEST;
const fs::path kNodeRayBin = fs::path(STAGEKIT_SOURCE_DIR) / ".venv-node" / "bin";

std::vector<std::string> StockNode(const fs::path& ray_bin, const std::string& before) {
  if (before.empty() && !fs::exists(ray_bin / "ray")) {  // (`before` may make it)
    ADD_FAILURE() << "no Ray in " << ray_bin
                  << ": run `STAGEKIT_VENV=.venv-node STAGEKIT_RAY_ONLY=1 bash scripts/ray.sh` "
                     "(scripts/test.sh does)";
    return {};
  }
  // The files this machine's loader finds for the libraries to hide.
  CommandResult ldd = RunCommand({"/usr/bin/ldd", STAGEKIT_CLI});
  std::string hide;
  for (const char* lib : {"libyaml-cpp.so", "libzip.so", "libcurl.so"}) {
    std::size_t at = ldd.out.find(std::string("\t") + lib);
    std::size_t arrow = ldd.out.find(" => ", at);
    EXPECT_NE(at, std::string::npos) << lib << " is not in ldd's answer:\n" << ldd.out;
    if (at == std::string::npos || arrow == std::string::npos) return {};
    std::string path = ldd.out.substr(arrow + 4, ldd.out.find(" (", arrow) - arrow - 4);
    hide += " '" + fs::canonical(path).string() + "'";
  }
  const fs::path build = fs::path(STAGEKIT_CLI).parent_path().parent_path();
  const std::string script = "set -e; " + before + (before.empty() ? "" : "; ") + "for f in" +
                             hide +
                             "; do mount --bind /dev/null \"$f\"; done; "
                             "mount -t tmpfs stock-node '" +
                             (fs::path(STAGEKIT_SOURCE_DIR) / ".venv").string() +
                             "'; "
                             "mount -t tmpfs stock-node '" +
                             build.string() +
                             "'; "
                             "export PATH='" +
                             ray_bin.string() +
                             ":/usr/bin:/bin'; unset STAGEKIT_RAY_BIN_DIR; "
                             "exec \"$@\"";
  return {"/usr/bin/unshare", "--mount", "--propagation", "private",
          "/bin/sh",          "-c",      script,          "stock-node"};
}

std::vector<std::string> LoadedFromOutside(const fs::path& dir, const fs::path& package,
                                           int* processes) {
  std::vector<std::string> out;
  *processes = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string trace = ReadFile(e.path());
    if (trace.find("libstagekit.so") == std::string::npos) continue;
    ++*processes;
    // Lines up to a program's "transferring control" are its loading (and
    // the previous program's dlopens); after the last, its own dlopens.
    std::vector<std::string> inits;
    std::istringstream lines(trace);
    for (std::string line; std::getline(lines, line);) {
      if (line.find("calling init: ") != std::string::npos) {
        inits.push_back(line.substr(line.find("calling init: ") + 14));
      }
      const std::size_t control = line.find("transferring control: ");
      const bool last = lines.peek() == EOF;
      if (control == std::string::npos && !last) continue;
      const std::string program =
          control == std::string::npos ? "(dlopen)" : line.substr(control + 22);
      const std::string name = fs::path(program).filename().string();
      if (name == "stagekit" || name == "default_worker" || program == "(dlopen)") {
        for (const std::string& lib : inits) {
          const std::string base = fs::path(lib).filename().string();
          const bool allowed =
              lib.rfind(package.string() + "/", 0) == 0 || deploy::OnEveryNode(base) ||
              // The bridge, through the folder that links it to the node's libray_api.so.
              (base == "libstagekit_ray.so" && lib.find("/.stagekit-tmp.") != std::string::npos);
          if (!allowed) out.push_back(name + ": " + lib);
        }
      }
      inits.clear();
    }
  }
  return out;
}

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
               const std::vector<std::string>& wrapper, const std::vector<std::string>& ray) {
  std::vector<std::string> argv = wrapper;
  if (ray.empty()) {
    argv.push_back((kRayBin / "ray").string());
  } else {
    argv.insert(argv.end(), ray.begin(), ray.end());
  }
  for (const char* a : {"start", "--disable-usage-stats"}) argv.emplace_back(a);
  const bool block = std::find(args.begin(), args.end(), "--block") != args.end();
  std::vector<std::string> ports;
  Node node;
  // A head whose `ray start` fails (its dashboard's modules sometimes miss
  // their 60 s start on a loaded machine) is stopped and started once more,
  // as the executor does with a private head.
  for (int attempt = 1;; ++attempt) {
    ports = PortFlags(std::find(args.begin(), args.end(), "--head") != args.end());
    util::SpawnSpec spec;
    spec.argv = argv;
    spec.argv.insert(spec.argv.end(), ports.begin(), ports.end());
    spec.argv.insert(spec.argv.end(), args.begin(), args.end());
    spec.new_session = true;
    spec.log_path = log.string();
    auto spawned = util::Spawn(spec);
    EXPECT_TRUE(spawned.ok()) << spawned.status().message();
    if (!spawned.ok()) return node;
    node.sid = spawned->pid;
    // Without --block, `ray start` returns once the node runs; with it, wait
    // for the node's "started" line instead.
    if (block) {
      auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(3);
      while (ReadFile(log).find("Ray runtime started") == std::string::npos &&
             std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
      }
      EXPECT_NE(ReadFile(log).find("Ray runtime started"), std::string::npos) << ReadFile(log);
      break;
    }
    int rc = util::WaitFor(spawned->pid, std::chrono::minutes(3));
    if (rc == 0 || attempt == 2) {
      EXPECT_EQ(rc, 0) << ReadFile(log);
      break;
    }
    std::cerr << "`ray start` failed (exit " << rc << "); starting it once more. Its log:\n"
              << util::Tail(ReadFile(log), 2000) << "\n";
    StopProcessSession(node.sid, std::chrono::seconds(2));
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
