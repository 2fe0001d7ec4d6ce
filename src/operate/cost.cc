#include "operate/cost.h"
#include "operate/cluster.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>

#include "util/fd.h"
#include "util/files.h"
#include "util/json_fields.h"

namespace fs = std::filesystem;

namespace stagekit::operate {
namespace {

Result<double> Usd(const std::string& text, const std::string& what) {
  char* end = nullptr;
  errno = 0;
  double v = std::strtod(text.c_str(), &end);
  if (text.empty() || end == nullptr || *end != '\0' || errno != 0 || !std::isfinite(v) || v < 0) {
    return Status(Code::kUsage, what + ": '" + text + "' is not a price in USD per hour");
  }
  return v;
}

}  // namespace

Result<PriceBook> PriceBookFromSpec(const fs::path& spec) {
  // The spec's own reader checks the prices with the rest (FILE:LINE:COLUMN).
  auto parsed = LoadClusterSpec(spec);
  if (!parsed.ok()) return parsed.status();
  PriceBook book;
  auto set = [&book](const std::string& type, double usd, bool spot) {
    book.usd_per_hour[type] = usd;
    book.spot_cap[type] = spot;
  };
  book.head_type = parsed->head.instance_type;
  if (parsed->head.price_per_hour) set(book.head_type, *parsed->head.price_per_hour, false);
  for (const WorkerType& w : parsed->workers) {
    if (w.price_per_hour) set(w.instance_type, *w.price_per_hour, false);
    if (!w.spot_max_price.empty())
      set(w.instance_type, std::strtod(w.spot_max_price.c_str(), nullptr), true);
  }
  return book;
}

Status AddPrice(PriceBook& book, const std::string& spec) {
  size_t eq = spec.find('=');
  if (eq == std::string::npos || eq == 0) {
    return Status(Code::kUsage,
                  "--price " + spec + ": write TYPE=USD_PER_HOUR, e.g. g4dn.2xlarge=0.30");
  }
  auto usd = Usd(spec.substr(eq + 1), "--price " + spec);
  if (!usd.ok()) return usd.status();
  book.usd_per_hour[spec.substr(0, eq)] = *usd;
  book.spot_cap[spec.substr(0, eq)] = false;
  return OkStatus();
}

std::map<std::string, int> NodeTypes(const Json& ray_nodes, const PriceBook& book) {
  std::map<std::string, int> types;
  if (!ray_nodes.is_array() || ray_nodes.empty()) {
    types["local"] = 1;
    return types;
  }
  for (const Json& node : ray_nodes) {
    std::string type;
    const Json& res = node.contains("resources") ? node["resources"] : Json::object();
    for (const auto& [key, value] : res.items()) {
      if (key.rfind("vm:", 0) == 0) type = key.substr(3);
    }
    if (type.empty() && res.contains("node:__internal_head__")) {
      type = book.head_type.empty() ? "head" : book.head_type;
    }
    if (type.empty()) type = "unlabelled";
    ++types[type];
  }
  return types;
}

std::optional<double> BurnRate(const std::map<std::string, int>& nodes, const PriceBook& book,
                               std::string* unpriced) {
  double rate = 0;
  for (const auto& [type, count] : nodes) {
    auto it = book.usd_per_hour.find(type);
    if (it == book.usd_per_hour.end()) {
      if (type == "local" && book.usd_per_hour.empty()) continue;  // a laptop costs nothing here
      if (unpriced != nullptr) *unpriced = type;
      return std::nullopt;
    }
    rate += it->second * count;
  }
  return rate;
}

fs::path DefaultCostLog() {
  if (const char* env = std::getenv("STAGEKIT_COST_LOG"); env != nullptr && *env) return env;
  return util::UserDataDir() / "cost.jsonl";
}

Status AppendCostRecord(const fs::path& log, const CostRecord& record) {
  std::error_code ec;
  if (!log.parent_path().empty()) fs::create_directories(log.parent_path(), ec);
  util::UniqueFd fd(::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
  if (!fd) {
    return Status(Code::kOutputError, "cannot write the cost log " + log.string() + ": " +
                                          std::strerror(errno) + " (set STAGEKIT_COST_LOG)");
  }
  const std::string line = record.ToJson().dump() + "\n";
  ssize_t n;
  do {
    n = ::write(fd.get(), line.data(), line.size());
  } while (n < 0 && errno == EINTR);
  if (n != static_cast<ssize_t>(line.size())) {
    return Status(Code::kOutputError, "cannot write the cost log " + log.string());
  }
  return OkStatus();
}

Json CostRecord::ToJson() const {
  Json j = {
      {"version", kVersion},    {"command", command},
      {"pipeline", pipeline},   {"executor", executor},
      {"start", start},         {"end", end},
      {"wall_s", wall_s},       {"outcome", outcome},
      {"exit_code", exit_code}, {"estimated_usd", estimated_usd ? Json(*estimated_usd) : Json()}};
  if (command == "run") {
    j["node_types"] = node_types;
    j["node_seconds"] = node_seconds;
    j["spot_price_caps"] = spot_price_caps;
  }
  if (!unpriced_node_type.empty()) j["unpriced_node_type"] = unpriced_node_type;
  if (budget_usd) j["budget_usd"] = *budget_usd;
  if (!submission_id.empty()) j["submission_id"] = submission_id;
  if (!address.empty()) j["address"] = address;
  if (!package.empty()) j["package"] = package;
  return j;
}

namespace {

// A {name: number} object at `key` of `json` into `out`; false when it is
// something else.
template <typename T>
bool NumberMap(const Json& json, const char* key, std::map<std::string, T>& out) {
  auto it = json.find(key);
  if (it == json.end() || it->is_null()) return true;
  if (!it->is_object()) return false;
  for (const auto& [name, value] : it->items()) {
    if (!value.is_number()) return false;
    out[name] = value.template get<T>();
  }
  return true;
}

}  // namespace

Result<CostRecord> CostRecord::FromJson(const Json& json) {
  CostRecord r;
  util::FieldReader f(json, "cost record", Code::kInputError);
  int version = 1;
  f.Int("version", version);
  if (f.ok() && version > kVersion) {
    return Status(Code::kInputError, "cost record: version " + std::to_string(version) +
                                         " is newer than this stagekit reads (" +
                                         std::to_string(kVersion) + ")");
  }
  f.String("command", r.command, /*required=*/true);
  f.String("pipeline", r.pipeline);
  f.String("executor", r.executor);
  f.String("start", r.start, /*required=*/true);
  f.String("end", r.end);
  f.Double("wall_s", r.wall_s);
  f.String("outcome", r.outcome, /*required=*/true);
  f.Int("exit_code", r.exit_code);
  f.String("unpriced_node_type", r.unpriced_node_type);
  f.String("submission_id", r.submission_id);
  f.String("address", r.address);
  f.String("package", r.package);
  if (!f.ok()) return f.status();
  for (auto [key, out] :
       {std::pair<const char*, std::optional<double>*>{"estimated_usd", &r.estimated_usd},
        {"budget_usd", &r.budget_usd}}) {
    auto it = json.find(key);
    if (it == json.end() || it->is_null()) continue;
    if (!it->is_number())
      return Status(Code::kInputError,
                    std::string("cost record: '") + key + "' must be a number or null");
    *out = it->get<double>();
  }
  if (!NumberMap(json, "node_types", r.node_types) ||
      !NumberMap(json, "node_seconds", r.node_seconds) ||
      !NumberMap(json, "spot_price_caps", r.spot_price_caps)) {
    return Status(Code::kInputError,
                  "cost record: 'node_types', 'node_seconds' and 'spot_price_caps' must map "
                  "names to numbers");
  }
  return r;
}

Result<std::vector<CostRecord>> ReadCostLog(const fs::path& log, int* bad_lines) {
  std::vector<CostRecord> records;
  if (bad_lines != nullptr) *bad_lines = 0;
  std::ifstream in(log);
  if (!in) {
    std::error_code ec;
    if (!fs::exists(log, ec)) return records;  // no runs yet
    return Status(Code::kInputError, "cannot read the cost log " + log.string());
  }
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    auto j = util::ParseJsonWithin(line, "a cost record", Code::kInputError);
    auto record = j.ok() ? CostRecord::FromJson(*j) : Result<CostRecord>(j.status());
    if (record.ok()) {
      records.push_back(std::move(record).value());
    } else if (bad_lines != nullptr) {
      ++*bad_lines;
    }
  }
  return records;
}

Json SummarizeCost(const std::vector<CostRecord>& records, const std::string& since) {
  Json by_outcome = Json::object(), by_type = Json::object(), by_pipeline = Json::object();
  double total = 0, wall = 0;
  int runs = 0, unpriced = 0;
  for (const CostRecord& r : records) {
    if (!since.empty() && r.start < since) continue;  // ISO 8601 compares as text
    ++runs;
    wall += r.wall_s;
    by_outcome[r.outcome] = by_outcome.value(r.outcome, 0) + 1;
    if (r.estimated_usd) {
      total += *r.estimated_usd;
    } else {
      ++unpriced;
    }
    Json& p = by_pipeline[r.pipeline.empty() ? "?" : r.pipeline];
    if (p.is_null()) p = Json::object();
    p["runs"] = p.value("runs", 0) + 1;
    p["estimated_usd"] = p.value("estimated_usd", 0.0) + r.estimated_usd.value_or(0.0);
    for (const auto& [type, seconds] : r.node_seconds) {
      Json& t = by_type[type];
      if (t.is_null()) t = Json::object();
      t["node_hours"] = t.value("node_hours", 0.0) + seconds / 3600;
    }
  }
  return {{"runs", runs},
          {"wall_s", wall},
          {"estimated_usd", total},
          {"unpriced_runs", unpriced},
          {"by_outcome", by_outcome},
          {"by_node_type", by_type},
          {"by_pipeline", by_pipeline},
          {"since", since}};
}

}  // namespace stagekit::operate
