// Fuzz target: the cluster spec parser (`stagekit cluster` YAML).
// Property: no crash, no sanitizer report, refusals carry a message.
#include <cstddef>
#include <cstdint>
#include <string>

#include "operate/cluster.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto spec = stagekit::operate::ParseClusterSpec(text, "fuzz.yaml");
  if (!spec.ok() && spec.status().message().empty()) __builtin_trap();
  return 0;
}
