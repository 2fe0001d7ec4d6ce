#include "stagekit/status.h"

#include <array>

namespace stagekit {
namespace {
// The library's codes, in order; their names come from stagekit_code_name().
constexpr std::array<Code, 14> kLibraryCodes = {
    Code::kOk,           Code::kStageFailed,  Code::kUsage,      Code::kInvalidPipeline,
    Code::kUnknownStage, Code::kInputError,   Code::kBadRequest, Code::kOutputError,
    Code::kTimeout,      Code::kLibraryError, Code::kInfeasible, Code::kRayUnavailable,
    Code::kInternal,     Code::kInterrupted,
};
}  // namespace

std::string_view CodeName(Code code) {
  const char* name = stagekit_code_name(static_cast<int>(code));
  return name != nullptr ? name : "internal";
}

Code CodeFromName(std::string_view name) {
  for (Code c : kLibraryCodes) {
    if (CodeName(c) == name) return c;
  }
  return Code::kInternal;
}

std::string Status::ToString() const {
  std::string out(CodeName(code_));
  if (!message_.empty()) out += ": " + message_;
  return out;
}

}  // namespace stagekit
