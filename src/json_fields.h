// Typed access to JSON object fields with messages that name the field.
#ifndef STAGEKIT_SRC_JSON_FIELDS_H_
#define STAGEKIT_SRC_JSON_FIELDS_H_

#include <string>
#include <string_view>

#include "stagekit/stage.h"
#include "stagekit/status.h"

namespace stagekit::internal {

// Reads optional fields of one JSON object; the first problem is kept in
// status() with `code`, e.g. "request: 'attempt' must be an integer".
class FieldReader {
 public:
  FieldReader(const Json& object, std::string context, Code code);

  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }

  void String(std::string_view key, std::string& out, bool required = false);
  void UInt64(std::string_view key, std::uint64_t& out);
  void Int(std::string_view key, int& out);
  void Double(std::string_view key, double& out);
  void Object(std::string_view key, Json& out);
  // Fails for keys outside `allowed`.
  void OnlyKeys(std::initializer_list<std::string_view> allowed);

 private:
  const Json* Get(std::string_view key, bool required);
  void Fail(std::string message);

  const Json& object_;
  std::string context_;
  Code code_;
  Status status_;
};

}  // namespace stagekit::internal

#endif  // STAGEKIT_SRC_JSON_FIELDS_H_
