// `stagekit doctor`: checks a cluster (a stagekit cluster spec or a Ray
// autoscaler YAML), a pipeline, a runtime_env file and the driver's
// environment for the mistakes that cost money or hang runs, before launch.
// Every finding has a stable id, a severity, a file and line, and a fix.
#ifndef STAGEKIT_OPERATE_DOCTOR_H_
#define STAGEKIT_OPERATE_DOCTOR_H_

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "stagekit/stage.h"
#include "stagekit/status.h"

namespace stagekit::operate {

struct Finding {
  std::string id;        // "SK011"
  std::string name;      // "spot-without-cap"
  std::string severity;  // "error" | "warning"
  std::string file;
  int line = 0;  // 0 when it is about the whole file or the environment
  std::string message;
  std::string fix;
};

struct DoctorOptions {
  std::filesystem::path cluster;      // spec or autoscaler YAML
  std::filesystem::path pipeline;     // a pipeline file
  std::filesystem::path runtime_env;  // a runtime_env YAML/JSON (as for `ray job submit`)
  std::uint64_t max_bytes = 100ull << 20;
  std::map<std::string, std::string> env;  // the driver's environment (tests pass their own)
};

// Every check that applies to what is given. kInputError only when a file
// cannot be read or parsed at all.
Result<std::vector<Finding>> RunDoctor(const DoctorOptions& options);

// The catalogue: id -> name, severity and what it is about (for --help and docs).
struct Check {
  const char* id;
  const char* name;
  const char* severity;
  const char* about;
};
const std::vector<Check>& DoctorChecks();

Json FindingsJson(const std::vector<Finding>& findings);

}  // namespace stagekit::operate

#endif  // STAGEKIT_OPERATE_DOCTOR_H_
