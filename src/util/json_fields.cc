#include "util/json_fields.h"

#include <cstdint>
#include <limits>
#include <string>
#include <utility>

namespace stagekit::util {

namespace {

bool IsString(const Json& j) { return j.is_string(); }
bool IsNumber(const Json& j) { return j.is_number(); }
bool IsBool(const Json& j) { return j.is_boolean(); }
bool IsObject(const Json& j) { return j.is_object(); }
bool IsArray(const Json& j) { return j.is_array(); }
bool IsUInt64(const Json& j) {
  return j.is_number_unsigned() || (j.is_number_integer() && j.get<std::int64_t>() >= 0);
}
bool IsInt64(const Json& j) {
  return j.is_number_integer() &&
         (!j.is_number_unsigned() ||
          j.get<std::uint64_t>() <=
              static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()));
}

}  // namespace

bool FieldReader::IsInt(const Json& j) {
  if (!IsInt64(j)) return false;
  const auto v = j.get<std::int64_t>();
  return v >= std::numeric_limits<int>::min() && v <= std::numeric_limits<int>::max();
}

FieldReader::FieldReader(const Json& object, std::string context, Code code, Mode mode)
    : object_(object), context_(std::move(context)), code_(code), mode_(mode) {
  if (!object_.is_object()) Fail("must be a JSON object");
}

void FieldReader::Fail(const std::string& message) {
  if (status_.ok()) status_ = Status(code_, context_ + ": " + message);
}

void FieldReader::Take(const Status& s) {
  if (status_.ok() && !s.ok()) status_ = s;
}

const Json* FieldReader::Field(std::string_view key, Presence presence, const char* type,
                               bool (*is)(const Json&)) {
  if (!ok()) return nullptr;
  const bool nullable = presence == Presence::kNullable;
  const bool required =
      presence == Presence::kRequired || (presence == Presence::kDefault && mode_ == Mode::kStrict);
  auto it = object_.find(key);
  if (it == object_.end()) {
    if (required) Fail("missing required field '" + std::string(key) + "'");
    return nullptr;
  }
  if (it->is_null() && nullable) return nullptr;
  if (it->is_null() && required) {
    Fail("'" + std::string(key) + "' must be " + type + ", not null");
    return nullptr;
  }
  if (!is(*it)) {
    Fail("'" + std::string(key) + "' must be " + type + (nullable ? " or null" : ""));
    return nullptr;
  }
  return &*it;
}

void FieldReader::String(std::string_view key, std::string& out, bool required) {
  const Presence p = required ? Presence::kRequired : Presence::kDefault;
  if (const Json* v = Field(key, p, "a string", IsString)) out = v->get<std::string>();
}
void FieldReader::String(std::string_view key, std::optional<std::string>& out) {
  if (const Json* v = Field(key, Presence::kNullable, "a string", IsString)) {
    out = v->get<std::string>();
  }
}
void FieldReader::UInt64(std::string_view key, std::uint64_t& out) {
  if (const Json* v = Field(key, Presence::kDefault, "a non-negative integer", IsUInt64)) {
    out = v->get<std::uint64_t>();
  }
}
void FieldReader::UInt64(std::string_view key, std::optional<std::uint64_t>& out) {
  if (const Json* v = Field(key, Presence::kNullable, "a non-negative integer", IsUInt64)) {
    out = v->get<std::uint64_t>();
  }
}
void FieldReader::Int(std::string_view key, int& out) {
  if (const Json* v = Field(key, Presence::kDefault, "an integer", IsInt)) out = v->get<int>();
}
void FieldReader::Int(std::string_view key, std::optional<int>& out) {
  if (const Json* v = Field(key, Presence::kNullable, "an integer", IsInt)) out = v->get<int>();
}
void FieldReader::Int64(std::string_view key, std::int64_t& out) {
  if (const Json* v = Field(key, Presence::kDefault, "an integer", IsInt64)) {
    out = v->get<std::int64_t>();
  }
}
void FieldReader::Double(std::string_view key, double& out) {
  if (const Json* v = Field(key, Presence::kDefault, "a number", IsNumber)) out = v->get<double>();
}
void FieldReader::Double(std::string_view key, std::optional<double>& out) {
  if (const Json* v = Field(key, Presence::kNullable, "a number", IsNumber)) {
    out = v->get<double>();
  }
}
void FieldReader::Bool(std::string_view key, bool& out) {
  if (const Json* v = Field(key, Presence::kDefault, "true or false", IsBool)) out = v->get<bool>();
}
void FieldReader::Bool(std::string_view key, std::optional<bool>& out) {
  if (const Json* v = Field(key, Presence::kNullable, "true or false", IsBool)) {
    out = v->get<bool>();
  }
}
void FieldReader::Object(std::string_view key, Json& out) {
  if (const Json* v = Object(key)) out = *v;
}
const Json* FieldReader::Object(std::string_view key) {
  return Field(key, Presence::kDefault, "a JSON object", IsObject);
}
const Json* FieldReader::OptObject(std::string_view key) {
  return Field(key, Presence::kNullable, "a JSON object", IsObject);
}
const Json* FieldReader::Array(std::string_view key) {
  return Field(key, Presence::kDefault, "an array", IsArray);
}
const Json* FieldReader::OptArray(std::string_view key) {
  return Field(key, Presence::kNullable, "an array", IsArray);
}

void FieldReader::OnlyKeys(std::initializer_list<std::string_view> allowed) {
  if (!ok()) return;
  for (const auto& [key, value] : object_.items()) {
    bool known = false;
    for (std::string_view a : allowed) known = known || key == a;
    if (!known) return Fail("unknown field '" + key + "'");
  }
}

Result<Json> ParseJsonWithin(std::string_view text, std::string_view what, Code code,
                             const JsonLimits& limits) {
  if (text.size() > limits.max_bytes) {
    return Status(code, std::string(what) + " is " + std::to_string(text.size()) +
                            " bytes; at most " + std::to_string(limits.max_bytes) +
                            " are accepted");
  }
  // First a pass that only counts depth (nothing is built), then the parse.
  struct DepthCheck : nlohmann::json_sax<Json> {
    int depth = 0, max = 0;
    bool too_deep = false;
    std::string error;
    bool Enter() {
      too_deep = ++depth > max;
      return !too_deep;
    }
    bool null() override { return true; }
    bool boolean(bool) override { return true; }
    bool number_integer(number_integer_t) override { return true; }
    bool number_unsigned(number_unsigned_t) override { return true; }
    bool number_float(number_float_t, const string_t&) override { return true; }
    bool string(string_t&) override { return true; }
    bool binary(binary_t&) override { return true; }
    bool start_object(std::size_t) override { return Enter(); }
    bool key(string_t&) override { return true; }
    bool end_object() override { return --depth, true; }
    bool start_array(std::size_t) override { return Enter(); }
    bool end_array() override { return --depth, true; }
    bool parse_error(std::size_t, const std::string&,
                     const nlohmann::detail::exception& e) override {
      error = e.what();
      return false;
    }
  } check;
  check.max = limits.max_depth;
  if (!Json::sax_parse(text, &check)) {
    if (check.too_deep) {
      return Status(code, std::string(what) + " is nested more than " +
                              std::to_string(limits.max_depth) +
                              " levels deep (arrays and objects); flatten it");
    }
    return Status(code, std::string(what) + " is not valid JSON: " + check.error);
  }
  return Json::parse(text);
}

}  // namespace stagekit::util
