// Canonical JSON and the plain-data types that cross executor boundaries.
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>
#include <stdexcept>

#include "stagekit/invoke.h"
#include "stagekit/stage.h"
#include "util/digest.h"
#include "util/files.h"
#include "util/json_fields.h"

namespace stagekit {

using util::FieldReader;

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
  auto json = util::ParseJsonWithin(json_text, "request", Code::kBadRequest);
  if (!json.ok()) return json.status();
  return FromJson(*json);
}

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
  util::Sha256Digest d = util::Sha256(material);
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

std::vector<std::pair<std::string, std::filesystem::path>> StageContext::input_list(
    std::string_view name) const {
  std::vector<std::pair<std::string, std::filesystem::path>> out;
  const std::string single(name);
  const std::string prefix = single + "[";
  for (auto it = inputs_->lower_bound(single); it != inputs_->end(); ++it) {
    const std::string& n = it->first;
    if (n == single) {
      out.emplace_back("", it->second);
    } else if (n.compare(0, prefix.size(), prefix) == 0 && n.back() == ']') {
      out.emplace_back(n.substr(prefix.size(), n.size() - prefix.size() - 1), it->second);
    } else if (n.compare(0, single.size(), single) != 0) {
      break;  // past every name that starts with `name`
    }
  }
  return out;
}

std::string StageContext::ReadInput(std::string_view name) const {
  // No size limit: a stage reads what its pipeline gives it.
  auto bytes = util::ReadFile(input(name), std::numeric_limits<std::uint64_t>::max());
  if (!bytes.ok()) {
    throw std::runtime_error("input '" + std::string(name) + "': " + bytes.status().message());
  }
  return std::move(bytes).value();
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
