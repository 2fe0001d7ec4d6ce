#include "util/outcome.h"

#include <cstdio>

namespace stagekit::util {

const std::vector<Outcome>& Outcomes() {
  // The one table of exit codes. A library code's name must be the one
  // stagekit_code_name() gives (c_api.h); docs/exit-codes.md lists the same
  // numbers and names (both checked by tests/unit/outcome_test.cc).
  static const std::vector<Outcome> kTable = {
      {Code::kOk, "ok", "success"},
      {Code::kStageFailed, "stage_failed",
       "a stage failed (threw, wrote no output, its process died)"},
      {Code::kUsage, "usage", "usage error"},
      {Code::kInvalidPipeline, "invalid_pipeline",
       "invalid pipeline file (syntax, cycle, duplicates)"},
      {Code::kUnknownStage, "unknown_stage", "unknown stage"},
      {Code::kInputError, "input_error", "input missing or unreadable"},
      {Code::kBadRequest, "bad_request", "malformed request"},
      {Code::kOutputError, "output_error", "output not writable"},
      {Code::kTimeout, "timeout", "stage timed out"},
      {Code::kLibraryError, "library_error", "stage library error"},
      {kParityMismatch, "parity_mismatch", "parity mismatch"},
      {Code::kInfeasible, "infeasible", "resources infeasible on Ray"},
      {Code::kRayUnavailable, "ray_unavailable", "Ray or cluster unreachable"},
      {kTooLarge, "too_large", "package over its size cap"},
      {kSecretRefused, "secret_refused", "credential refused"},
      {kJobFailed, "job_failed", "submitted job failed"},
      {kBudgetExceeded, "budget_exceeded", "budget ran out"},
      {kChecksFailed, "checks_failed", "doctor found errors, or audit a nondeterministic stage"},
      {kOperationFailed, "operation_failed", "an operation on a cluster or service failed"},
      {kNodeTooOld, "node_too_old", "a node's glibc or libstdc++ is older than the package needs"},
      {Code::kInternal, "internal", "internal error"},
      {Code::kInterrupted, "interrupted", "interrupted (SIGINT, SIGTERM or SIGHUP)"},
  };
  return kTable;
}

namespace {
const Outcome* Find(Code code) {
  for (const Outcome& o : Outcomes()) {
    if (o.code == code) return &o;
  }
  return nullptr;
}
}  // namespace

std::string_view OutcomeName(Code code) {
  const Outcome* o = Find(code);
  return o != nullptr ? o->name : "internal";
}

int ExitCode(const Status& status) {
  return Find(status.code()) != nullptr ? static_cast<int>(status.code())
                                        : static_cast<int>(Code::kInternal);
}

std::string ExitCodesHelp() {
  std::string out = "Exit codes:";
  for (const Outcome& o : Outcomes()) {
    char number[8];
    std::snprintf(number, sizeof number, "%3d ", static_cast<int>(o.code));
    out += "\n  ";
    out += number;
    out += o.meaning;
  }
  return out;
}

}  // namespace stagekit::util
