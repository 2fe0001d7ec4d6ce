// The command line's outcomes: every exit code of `stagekit`, in one table.
//
// The library's codes (stagekit::Code, include/stagekit/status.h, with values
// from include/stagekit/c_api.h) are only what the library itself can report.
// The command line and its back ends end in a few more ways (a parity
// mismatch, a package over its cap, a failed job, ...): those are the outcomes
// below, carried in a Status like any code (Status(util::kTooLarge, ...)).
// The table in outcome.cc lists both, with their stable wire names; the
// `--help` footer and docs/exit-codes.md (checked by a test) come from it.
#ifndef STAGEKIT_UTIL_OUTCOME_H_
#define STAGEKIT_UTIL_OUTCOME_H_

#include <string>
#include <string_view>
#include <vector>

#include "stagekit/status.h"

namespace stagekit::util {

inline constexpr Code kParityMismatch{10};   // executors produced different bytes
inline constexpr Code kTooLarge{13};         // a package is over its size cap
inline constexpr Code kSecretRefused{14};    // a credential-looking value was about to be sent
inline constexpr Code kJobFailed{15};        // a submitted job failed or was stopped
inline constexpr Code kBudgetExceeded{16};   // --budget ran out: no more stages were launched
inline constexpr Code kChecksFailed{17};     // doctor found errors; audit, a nondeterministic stage
inline constexpr Code kOperationFailed{18};  // an operation on a cluster or service failed
inline constexpr Code kNodeTooOld{19};  // a node's glibc or libstdc++ is older than a package needs

// One row of the table: the exit code, its wire name, and what it means (one
// line, as `stagekit --help` prints it).
struct Outcome {
  Code code;
  std::string_view name;
  std::string_view meaning;
};

// Every exit code, library codes and command line outcomes, in numeric order.
const std::vector<Outcome>& Outcomes();

// The stable lower_snake_case name of any exit code ("too_large"); "internal"
// for a value that is in no row (as CodeName() says for a library code).
std::string_view OutcomeName(Code code);

// The process exit code for `status`: its code's number, or 70 (internal)
// for a value that is in no row.
int ExitCode(const Status& status);

// The "Exit codes:" footer of `stagekit --help`, one line per row.
std::string ExitCodesHelp();

}  // namespace stagekit::util

#endif  // STAGEKIT_UTIL_OUTCOME_H_
