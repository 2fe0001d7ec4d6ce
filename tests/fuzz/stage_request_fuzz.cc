// Fuzz target: the stage request JSON every runner reads (StageRequest::Parse).
// Property: no crash, no sanitizer report, and a request that parses
// survives its own round trip unchanged.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "stagekit/invoke.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto request = stagekit::StageRequest::Parse(text);
  if (!request.ok()) return 0;
  const std::string again = request->ToJson().dump();
  auto back = stagekit::StageRequest::Parse(again);
  if (!back.ok() || back->ToJson() != request->ToJson()) __builtin_trap();
  return 0;
}
