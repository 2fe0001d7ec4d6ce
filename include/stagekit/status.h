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
#include "stagekit/export.h"

namespace stagekit {

enum class Code : int {
  kOk = 0,
  kStageFailed = 1,      // the stage threw, wrote no output, or its process died
  kUsage = 2,            // bad command line
  kInvalidPipeline = 3,  // malformed pipeline file, cycle, duplicate names
  kUnknownStage = 4,     // no registered stage has that name
  kInputError = 5,       // an input file is missing or unreadable
  kBadRequest = 6,       // a malformed request (JSON) reached the entry point
  kOutputError = 7,      // the output location cannot be written
  kTimeout = 8,          // the stage ran past its timeout and was stopped
  kLibraryError = 9,     // a stage library failed to load or registers duplicates
  kParityMismatch = 10,  // executors produced different bytes
  kInfeasible = 11,      // no node of the cluster can ever provide a stage's resources
  kRayUnavailable = 12,  // Ray is not installed, or the cluster or its dashboard cannot be reached
  kTooLarge = 13,        // a package is over its size cap
  kSecretRefused = 14,   // a credential-looking value was about to be sent as an env var
  kJobFailed = 15,       // a submitted job failed or was stopped
  kBudgetExceeded = 16,  // --budget ran out: no more stages were launched
  kChecksFailed = 17,    // doctor found errors; audit, a nondeterministic stage
  kInternal = 70,        // a bug in stagekit itself
  kInterrupted = 130,    // Ctrl-C / SIGTERM
};

// Stable lower_snake_case name of a code ("stage_failed"), used on the wire.
STAGEKIT_API std::string_view CodeName(Code code);
// Inverse of CodeName; unknown names map to kInternal.
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
