// Reading a YAML file a user gives (a cluster spec, an autoscaler config, a
// pipeline being repackaged), with the same limits and messages everywhere.
#ifndef STAGEKIT_UTIL_YAML_H_
#define STAGEKIT_UTIL_YAML_H_

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <filesystem>
#include <string>

#include "stagekit/status.h"

namespace stagekit::util {

// How much YAML text a reader of a user's file accepts (yaml-cpp itself
// refuses documents nested deeper than it can parse).
inline constexpr std::uint64_t kYamlFileLimit = std::uint64_t{16} << 20;

// The document in `path`: only a regular file of at most `max_bytes` is
// read. Problems are `code`: "cannot read 'P': it is a folder", or the
// parser's "P:LINE:COLUMN: message".
Result<YAML::Node> LoadYamlFile(const std::filesystem::path& path, Code code,
                                std::uint64_t max_bytes = kYamlFileLimit);

}  // namespace stagekit::util

#endif  // STAGEKIT_UTIL_YAML_H_
