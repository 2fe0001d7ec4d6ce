#include "util/yaml.h"

#include "util/files.h"

namespace stagekit::util {

Result<YAML::Node> LoadYamlFile(const std::filesystem::path& path, Code code,
                                std::uint64_t max_bytes) {
  Result<std::string> text = ReadFile(path, max_bytes);
  if (!text.ok()) return Status(code, text.status().message());
  try {
    return YAML::Load(*text);
  } catch (const YAML::Exception& e) {
    return Status(code, path.string() + ":" + std::to_string(e.mark.line + 1) + ":" +
                            std::to_string(e.mark.column + 1) + ": " + e.msg);
  }
}

}  // namespace stagekit::util
