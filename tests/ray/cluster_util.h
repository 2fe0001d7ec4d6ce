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
// ends in "--"), for a node in a mount namespace of its own.
Node StartNode(std::vector<std::string> args, const std::filesystem::path& log,
               const std::vector<std::string>& wrapper = {});

}  // namespace stagekit::testing

#endif  // STAGEKIT_TESTS_RAY_CLUSTER_UTIL_H_
