// Typed access to JSON object fields with messages that name the field.
#ifndef STAGEKIT_UTIL_JSON_FIELDS_H_
#define STAGEKIT_UTIL_JSON_FIELDS_H_

#include <string>
#include <string_view>

#include "stagekit/stage.h"
#include "stagekit/status.h"

namespace stagekit::util {

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

// How much JSON a reader of untrusted text accepts.
struct JsonLimits {
  std::size_t max_bytes = std::size_t{64} << 20;
  int max_depth = 256;  // arrays and objects inside one another
};

// Parses `text` as JSON, refusing with `code` text longer than max_bytes or
// nested deeper than max_depth, or not JSON at all (with the position):
// "<what>: ...". The depth is checked while parsing (nlohmann's parser keeps
// its own stack), before anything walks the document recursively: a stage
// request with kwargs 200,000 levels deep crashed the runner.
Result<Json> ParseJsonWithin(std::string_view text, std::string_view what, Code code,
                             const JsonLimits& limits = {});

}  // namespace stagekit::util

#endif  // STAGEKIT_UTIL_JSON_FIELDS_H_
