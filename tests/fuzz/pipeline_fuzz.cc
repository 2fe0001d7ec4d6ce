// Fuzz target: the pipeline loader (YAML text to a validated Pipeline).
// Property: no crash, no sanitizer report, and a refusal is a usage-class
// error with a message, never an exception or an internal error.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "stagekit/pipeline.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto pipeline = stagekit::ParsePipeline(text, "fuzz.yaml");
  if (!pipeline.ok() && (pipeline.status().message().empty() ||
                         pipeline.status().code() == stagekit::Code::kInternal)) {
    __builtin_trap();
  }
  return 0;
}
