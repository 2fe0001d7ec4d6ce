// Status and Result: how stagekit reports expected failures.
//
// Every expected failure (unknown stage, unreadable input, child failed,
// timeout, ...) is returned as a Status with one of the codes below and a
// message that says what to do. The numeric value of a code is also the exit
// code of the `stagekit` command line tool, so scripts can tell failures apart.
#ifndef STAGEKIT_STATUS_H_
#define STAGEKIT_STATUS_H_

#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include "stagekit/c_api.h"
#include "stagekit/export.h"

namespace stagekit {

// The codes the library reports; their values are the C API's (c_api.h). The
// command line's own outcomes (10 and 13 to 18: parity mismatch, package too
// large, ...) are not library codes: they live in its outcome table
// (src/util/outcome.h), and a Status carries one as Code{13}. CodeName() names
// only the codes below.
enum class Code : int {
  kOk = STAGEKIT_OK,
  kStageFailed = STAGEKIT_STAGE_FAILED,  // the stage threw, wrote no output, or its process died
  kUsage = STAGEKIT_USAGE,               // bad command line
  kInvalidPipeline = STAGEKIT_INVALID_PIPELINE,  // malformed pipeline file, cycle, duplicate names
  kUnknownStage = STAGEKIT_UNKNOWN_STAGE,        // no registered stage has that name
  kInputError = STAGEKIT_INPUT_ERROR,            // an input file is missing or unreadable
  kBadRequest = STAGEKIT_BAD_REQUEST,      // a malformed request (JSON) reached the entry point
  kOutputError = STAGEKIT_OUTPUT_ERROR,    // the output location cannot be written
  kTimeout = STAGEKIT_TIMEOUT,             // the stage ran past its timeout and was stopped
  kLibraryError = STAGEKIT_LIBRARY_ERROR,  // a stage library failed to load or registers duplicates
  kInfeasible = STAGEKIT_INFEASIBLE,  // no node of the cluster can ever provide a stage's resources
  kRayUnavailable = STAGEKIT_RAY_UNAVAILABLE,  // Ray is not installed, or the cluster or its
                                               // dashboard cannot be reached
  kInternal = STAGEKIT_INTERNAL,               // a bug in stagekit itself
  kInterrupted = STAGEKIT_INTERRUPTED,         // Ctrl-C / SIGTERM / SIGHUP
};

// Stable lower_snake_case name of a library code ("stage_failed"), used on the
// wire: stagekit_code_name(); "internal" for any other value.
STAGEKIT_API std::string_view CodeName(Code code);
// Inverse of CodeName; unknown names (a command line outcome's too) map to kInternal.
STAGEKIT_API Code CodeFromName(std::string_view name);

class [[nodiscard]] STAGEKIT_API Status {
 public:
  Status() = default;
  Status(Code code, std::string message) : code_(code), message_(std::move(message)) {}

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  // "stage_failed: <message>"
  std::string ToString() const;

 private:
  Code code_ = Code::kOk;
  std::string message_;
};

inline Status OkStatus() { return Status(); }

// A value or a non-OK Status.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value)
      : value_(std::move(value)) {}  // NOLINT(google-explicit-constructor): mirrors absl::StatusOr
  Result(Status status)
      : status_(std::move(status)) {
  }  // NOLINT(google-explicit-constructor): mirrors absl::StatusOr

  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }
  // The value; on an error, std::logic_error with the status's message (a
  // bug in the caller, who should have checked ok(), never undefined behaviour).
  const T& value() const& { return Checked(), *value_; }
  T& value() & { return Checked(), *value_; }
  T&& value() && { return Checked(), std::move(*value_); }
  const T& operator*() const& { return value(); }
  T& operator*() & { return value(); }
  const T* operator->() const { return &value(); }
  T* operator->() { return &value(); }

 private:
  void Checked() const {
    if (!value_) {
      throw std::logic_error("Result::value() on an error (" +
                             std::string(CodeName(status_.code())) + "): " + status_.message());
    }
  }
  Status status_;
  std::optional<T> value_;
};

}  // namespace stagekit

#endif  // STAGEKIT_STATUS_H_
