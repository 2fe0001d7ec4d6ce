#include "util/json_fields.h"

#include <string>

namespace stagekit::util {

FieldReader::FieldReader(const Json& object, std::string context, Code code)
    : object_(object), context_(std::move(context)), code_(code) {
  if (!object_.is_object()) Fail("must be a JSON object");
}

void FieldReader::Fail(std::string message) {
  if (status_.ok()) status_ = Status(code_, context_ + ": " + message);
}

const Json* FieldReader::Get(std::string_view key, bool required) {
  if (!ok()) return nullptr;
  auto it = object_.find(key);
  if (it == object_.end()) {
    if (required) Fail("missing required field '" + std::string(key) + "'");
    return nullptr;
  }
  return &*it;
}

void FieldReader::String(std::string_view key, std::string& out, bool required) {
  if (const Json* v = Get(key, required)) {
    if (!v->is_string()) return Fail("'" + std::string(key) + "' must be a string");
    out = v->get<std::string>();
  }
}

void FieldReader::UInt64(std::string_view key, std::uint64_t& out) {
  if (const Json* v = Get(key, false)) {
    if (!v->is_number_unsigned()) {
      return Fail("'" + std::string(key) + "' must be a non-negative integer");
    }
    out = v->get<std::uint64_t>();
  }
}

void FieldReader::Int(std::string_view key, int& out) {
  if (const Json* v = Get(key, false)) {
    if (!v->is_number_integer()) return Fail("'" + std::string(key) + "' must be an integer");
    out = v->get<int>();
  }
}

void FieldReader::Double(std::string_view key, double& out) {
  if (const Json* v = Get(key, false)) {
    if (!v->is_number()) return Fail("'" + std::string(key) + "' must be a number");
    out = v->get<double>();
  }
}

void FieldReader::Object(std::string_view key, Json& out) {
  if (const Json* v = Get(key, false)) {
    if (!v->is_object()) return Fail("'" + std::string(key) + "' must be a JSON object");
    out = *v;
  }
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
