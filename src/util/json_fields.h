// Typed access to JSON object fields with messages that name the field.
#ifndef STAGEKIT_UTIL_JSON_FIELDS_H_
#define STAGEKIT_UTIL_JSON_FIELDS_H_

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>

#include "stagekit/stage.h"
#include "stagekit/status.h"

namespace stagekit::util {

// Reads the fields of one JSON object, keeping the first problem in
// status() with `code` and a message that says where it is, e.g.
// "request: 'attempt' must be an integer" or "run record: stages[2]: 'state'
// must be a string". A reader is lenient (absent fields keep their defaults)
// or strict (fields must be present and not null); the std::optional
// overloads take absent or null as "not set" in both. A present field of the
// wrong type is always a problem.
class FieldReader {
 public:
  enum class Mode { kLenient, kStrict };
  FieldReader(const Json& object, std::string context, Code code, Mode mode = Mode::kLenient);

  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }
  const std::string& context() const { return context_; }
  // Where a field's own fields are: "run record: stages[2]".
  std::string Inside(std::string_view key) const { return context_ + ": " + std::string(key); }
  void Fail(const std::string& message);
  // Keeps the first problem of a nested reader (or of a nested FromJson).
  void Take(const Status& s);

  // `required` makes one field of a lenient reader required.
  void String(std::string_view key, std::string& out, bool required = false);
  void String(std::string_view key, std::optional<std::string>& out);
  void UInt64(std::string_view key, std::uint64_t& out);
  void UInt64(std::string_view key, std::optional<std::uint64_t>& out);
  void Int(std::string_view key, int& out);  // refuses values outside int
  void Int(std::string_view key, std::optional<int>& out);
  void Int64(std::string_view key, std::int64_t& out);
  void Double(std::string_view key, double& out);
  void Double(std::string_view key, std::optional<double>& out);
  void Bool(std::string_view key, bool& out);
  void Bool(std::string_view key, std::optional<bool>& out);
  void Object(std::string_view key, Json& out);
  // The object or array at `key`, or nullptr (absent, or a problem kept).
  const Json* Object(std::string_view key);
  const Json* OptObject(std::string_view key);  // absent or null is fine
  const Json* Array(std::string_view key);
  const Json* OptArray(std::string_view key);
  // Fails for keys outside `allowed`.
  void OnlyKeys(std::initializer_list<std::string_view> allowed);

  static bool IsInt(const Json& j);  // an integer that fits in int

 private:
  enum class Presence { kDefault, kRequired, kNullable };
  // The value of `key` if it is present and of the right type; nullptr
  // otherwise (a problem unless absence is allowed).
  const Json* Field(std::string_view key, Presence presence, const char* type,
                    bool (*is)(const Json&));

  const Json& object_;
  std::string context_;
  Code code_;
  Mode mode_;
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
