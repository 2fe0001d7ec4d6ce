// Canonical JSON and the plain-data types that cross executor boundaries.
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "json_fields.h"
#include "sha256.h"
#include "stagekit/invoke.h"
#include "stagekit/stage.h"

namespace stagekit {

namespace internal {

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

}  // namespace internal

using internal::FieldReader;

std::string CanonicalJson(const Json& value) {
  // nlohmann::json keeps object keys in a std::map (sorted) and prints
  // doubles in shortest round-trip form; strict UTF-8 checking keeps invalid
  // strings from turning into replacement characters silently.
  return value.dump(-1, ' ', false, Json::error_handler_t::strict);
}

Json JobSpec::ToJson() const { return Json{{"name", name}, {"seed", seed}, {"params", params}}; }

Result<JobSpec> JobSpec::FromJson(const Json& json) {
  JobSpec job;
  FieldReader r(json, "job", Code::kBadRequest);
  r.OnlyKeys({"name", "seed", "params"});
  r.String("name", job.name);
  r.UInt64("seed", job.seed);
  r.Object("params", job.params);
  if (!r.ok()) return r.status();
  return job;
}

Json RunStats::ToJson() const {
  Json j{{"stage", stage},       {"executor", executor},   {"attempt", attempt},
         {"host", host},         {"node", node},           {"wall_s", wall_s},
         {"bytes_in", bytes_in}, {"bytes_out", bytes_out}, {"output_digest", output_digest},
         {"metrics", metrics}};
  if (artifact.is_object()) j["artifact"] = artifact;
  return j;
}

Result<RunStats> RunStats::FromJson(const Json& json) {
  RunStats s;
  FieldReader r(json, "run stats", Code::kBadRequest);
  r.String("stage", s.stage, true);
  r.String("executor", s.executor);
  r.Int("attempt", s.attempt);
  r.String("host", s.host);
  r.String("node", s.node);
  r.Double("wall_s", s.wall_s);
  r.UInt64("bytes_in", s.bytes_in);
  r.UInt64("bytes_out", s.bytes_out);
  r.String("output_digest", s.output_digest, true);
  r.Object("metrics", s.metrics);
  if (json.is_object() && json.contains("artifact") && json["artifact"].is_object())
    s.artifact = json["artifact"];
  if (!r.ok()) return r.status();
  return s;
}

Json StageRequest::ToJson() const {
  Json in = Json::object();
  for (const auto& [name, path] : inputs) in[name] = path.string();
  return Json{{"stage", stage},       {"instance", instance},
              {"inputs", in},         {"output", output.string()},
              {"job", job.ToJson()},  {"kwargs", kwargs},
              {"executor", executor}, {"attempt", attempt},
              {"threads", threads}};
}

Result<StageRequest> StageRequest::FromJson(const Json& json) {
  StageRequest req;
  FieldReader r(json, "request", Code::kBadRequest);
  r.OnlyKeys(
      {"stage", "instance", "inputs", "output", "job", "kwargs", "executor", "attempt", "threads"});
  std::string output;
  Json inputs = Json::object();
  Json job = Json::object();
  r.String("stage", req.stage, true);
  r.String("instance", req.instance);
  r.String("output", output, true);
  r.Object("inputs", inputs);
  r.Object("job", job);
  r.Object("kwargs", req.kwargs);
  r.String("executor", req.executor);
  r.Int("attempt", req.attempt);
  r.Int("threads", req.threads);
  if (!r.ok()) return r.status();
  if (req.stage.empty()) return Status(Code::kBadRequest, "request: 'stage' is empty");
  if (output.empty()) return Status(Code::kBadRequest, "request: 'output' is empty");
  if (req.attempt < 1) return Status(Code::kBadRequest, "request: 'attempt' must be >= 1");
  if (req.threads < 0) return Status(Code::kBadRequest, "request: 'threads' must be >= 0");
  if (req.instance.empty()) req.instance = req.stage;
  req.output = output;
  for (const auto& [name, path] : inputs.items()) {
    if (!path.is_string() || path.get<std::string>().empty()) {
      return Status(Code::kBadRequest,
                    "request: input '" + name + "' must be a non-empty path string");
    }
    req.inputs[name] = path.get<std::string>();
  }
  auto parsed_job = JobSpec::FromJson(job);
  if (!parsed_job.ok()) {
    return Status(Code::kBadRequest, "request: " + parsed_job.status().message());
  }
  req.job = std::move(parsed_job).value();
  return req;
}

Result<StageRequest> StageRequest::Parse(std::string_view json_text) {
  auto json = internal::ParseJsonWithin(json_text, "request", Code::kBadRequest);
  if (!json.ok()) return json.status();
  return FromJson(*json);
}

namespace internal {

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

}  // namespace internal

Json ErrorToJson(const Status& status) {
  return Json{{"error", {{"code", CodeName(status.code())}, {"message", status.message()}}}};
}

Result<RunStats> RunStatsOrErrorFromJson(const Json& json) {
  if (json.is_object() && json.contains("error")) {
    const Json& e = json["error"];
    if (e.is_object() && e.contains("code") && e["code"].is_string()) {
      std::string message = e.value("message", std::string());
      Code code = CodeFromName(e["code"].get<std::string>());
      if (code == Code::kOk) code = Code::kInternal;
      return Status(code, message);
    }
    return Status(Code::kInternal, "malformed error object: " + json.dump());
  }
  return RunStats::FromJson(json);
}

std::uint64_t DeriveSeed(const JobSpec& job, std::string_view instance_name) {
  std::string material = job.Canonical();
  material.push_back('\0');
  material.append(instance_name);
  internal::Sha256Digest d = internal::Sha256(material);
  std::uint64_t seed = 0;
  for (int i = 0; i < 8; ++i) seed = (seed << 8) | d[i];
  return seed;
}

StageContext::StageContext(std::string stage, std::string instance,
                           const std::map<std::string, std::filesystem::path>* inputs,
                           std::filesystem::path output, const JobSpec* job, const Json* kwargs,
                           int threads)
    : stage_(std::move(stage)),
      instance_(std::move(instance)),
      inputs_(inputs),
      output_(std::move(output)),
      job_(job),
      kwargs_(kwargs),
      threads_(threads < 1 ? 1 : threads) {}

std::uint64_t StageContext::seed() const {
  if (!seed_) seed_ = DeriveSeed(*job_, instance_);
  return *seed_;
}

const std::filesystem::path& StageContext::input(std::string_view name) const {
  auto it = inputs_->find(std::string(name));
  if (it == inputs_->end()) {
    std::string have;
    for (const auto& [n, p] : *inputs_) have += (have.empty() ? "" : ", ") + n;
    throw std::out_of_range("stage '" + stage_ + "' needs an input named '" + std::string(name) +
                            "' but the request has " +
                            (have.empty() ? std::string("no inputs") : "only: " + have));
  }
  return it->second;
}

std::string StageContext::ReadInput(std::string_view name) const {
  const std::filesystem::path& path = input(name);
  std::ifstream in(path, std::ios::binary);
  std::ostringstream buf;
  if (!in || !(buf << in.rdbuf())) {
    // An empty file makes operator<< set failbit without an error.
    if (in && in.peek() == std::char_traits<char>::eof()) return std::string();
    throw std::runtime_error("cannot read input '" + std::string(name) + "' (" + path.string() +
                             "): " + std::strerror(errno));
  }
  return std::move(buf).str();
}

void StageContext::WriteOutput(std::string_view bytes) const {
  std::ofstream out(output_, std::ios::binary | std::ios::trunc);
  if (!out || !out.write(bytes.data(), static_cast<std::streamsize>(bytes.size())) ||
      !out.flush()) {
    throw std::runtime_error("cannot write output " + output_.string() + ": " +
                             std::strerror(errno));
  }
}

}  // namespace stagekit
