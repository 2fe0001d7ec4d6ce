#include "stagekit/status.h"

#include <array>
#include <utility>

namespace stagekit {
namespace {
constexpr std::array<std::pair<Code, std::string_view>, 20> kNames = {{
    {Code::kOk, "ok"},
    {Code::kStageFailed, "stage_failed"},
    {Code::kUsage, "usage"},
    {Code::kInvalidPipeline, "invalid_pipeline"},
    {Code::kUnknownStage, "unknown_stage"},
    {Code::kInputError, "input_error"},
    {Code::kBadRequest, "bad_request"},
    {Code::kOutputError, "output_error"},
    {Code::kTimeout, "timeout"},
    {Code::kLibraryError, "library_error"},
    {Code::kParityMismatch, "parity_mismatch"},
    {Code::kInfeasible, "infeasible"},
    {Code::kRayUnavailable, "ray_unavailable"},
    {Code::kTooLarge, "too_large"},
    {Code::kSecretRefused, "secret_refused"},
    {Code::kJobFailed, "job_failed"},
    {Code::kBudgetExceeded, "budget_exceeded"},
    {Code::kChecksFailed, "checks_failed"},
    {Code::kInternal, "internal"},
    {Code::kInterrupted, "interrupted"},
}};
}  // namespace

std::string_view CodeName(Code code) {
  for (const auto& [c, name] : kNames) {
    if (c == code) return name;
  }
  return "internal";
}

Code CodeFromName(std::string_view name) {
  for (const auto& [c, n] : kNames) {
    if (n == name) return c;
  }
  return Code::kInternal;
}

std::string Status::ToString() const {
  std::string out(CodeName(code_));
  if (!message_.empty()) out += ": " + message_;
  return out;
}

}  // namespace stagekit
