// Starting and checking local Ray nodes for the Ray tests.
#ifndef STAGEKIT_TESTS_RAY_CLUSTER_UTIL_H_
#define STAGEKIT_TESTS_RAY_CLUSTER_UTIL_H_

#include <sys/types.h>

#include <filesystem>
#include <string>
#include <vector>

namespace stagekit::testing {

// The venv's bin directory, with `ray`, `python` and `moto_server`.
extern const std::filesystem::path kRayBin;

// The same Ray at another path (scripts/test.sh installs it in .venv-node):
// the Ray of a "stock node".
extern const std::filesystem::path kNodeRayBin;

// A command line prefix that runs what follows as on a stock node that has
// `ray_bin`'s Ray and nothing of this build: in a mount namespace of its own,
// the build's .venv and build tree are empty folders, libyaml-cpp, libzip and
// libcurl are empty files (what a stock image lacks or has other versions
// of), and PATH is `ray_bin`, /usr/bin and /bin. Needs root, as CI runs.
// Fails the test (and returns {}) when the node's Ray is not installed.
// `before` is shell code run first in the namespace (e.g. to bind a folder
// somewhere before it is hidden).
std::vector<std::string> StockNode(const std::filesystem::path& ray_bin,
                                   const std::string& before = "");

// What the dynamic loader's trace (LD_DEBUG=libs, one file per process in
// `dir`) says the processes that loaded libstagekit loaded from outside
// `package` and outside the allowlist of libraries every node has: each as
// "PROGRAM: PATH". Each process's programs are told apart at exec.
std::vector<std::string> LoadedFromOutside(const std::filesystem::path& dir,
                                           const std::filesystem::path& package, int* processes);

// Alive (not zombie) processes whose command line contains `needle`.
std::vector<pid_t> ProcessesWith(const std::string& needle);
pid_t SessionOf(pid_t pid);

// Port flags for one `ray start`, all ports distinct and free; `head` adds --port.
std::vector<std::string> PortFlags(bool head);

struct Node {
  pid_t sid = -1;
  std::string node_name;  // "host:node_manager_port", as RunStats.node reports it
};

// `ray start` in a session of its own, so that StopProcessSession stops
// exactly it. `wrapper` goes before `ray` (e.g. an unshare command line that
// ends in "--"), for a node in a mount namespace of its own. `ray` is the
// command that runs Ray's CLI (default: kRayBin's `ray`).
Node StartNode(std::vector<std::string> args, const std::filesystem::path& log,
               const std::vector<std::string>& wrapper = {},
               const std::vector<std::string>& ray = {});

}  // namespace stagekit::testing

#endif  // STAGEKIT_TESTS_RAY_CLUSTER_UTIL_H_
