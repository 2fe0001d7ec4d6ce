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

Status AppendCostRecord(const fs::path& log, const Json& record) {
  std::error_code ec;
  if (!log.parent_path().empty()) fs::create_directories(log.parent_path(), ec);
  util::UniqueFd fd(::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
  if (!fd) {
    return Status(Code::kOutputError, "cannot write the cost log " + log.string() + ": " +
                                          std::strerror(errno) + " (set STAGEKIT_COST_LOG)");
  }
  const std::string line = record.dump() + "\n";
  ssize_t n;
  do {
    n = ::write(fd.get(), line.data(), line.size());
  } while (n < 0 && errno == EINTR);
  if (n != static_cast<ssize_t>(line.size())) {
    return Status(Code::kOutputError, "cannot write the cost log " + log.string());
  }
  return OkStatus();
}

Result<std::vector<Json>> ReadCostLog(const fs::path& log, int* bad_lines) {
  std::vector<Json> records;
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
    if (j.ok() && j->is_object()) {
      records.push_back(std::move(j).value());
    } else if (bad_lines != nullptr) {
      ++*bad_lines;
    }
  }
  return records;
}

Json SummarizeCost(const std::vector<Json>& records, const std::string& since) {
  Json by_outcome = Json::object(), by_type = Json::object(), by_pipeline = Json::object();
  double total = 0, wall = 0;
  int runs = 0, unpriced = 0;
  for (const Json& r : records) {
    const std::string start = r.value("start", "");
    if (!since.empty() && start < since) continue;  // ISO 8601 compares as text
    ++runs;
    wall += r.value("wall_s", 0.0);
    by_outcome[r.value("outcome", "unknown")] =
        by_outcome.value(r.value("outcome", "unknown"), 0) + 1;
    const Json& cost = r.contains("estimated_usd") ? r["estimated_usd"] : Json();
    if (cost.is_number()) {
      total += cost.get<double>();
    } else {
      ++unpriced;
    }
    Json& p = by_pipeline[r.value("pipeline", "?")];
    if (p.is_null()) p = Json::object();
    p["runs"] = p.value("runs", 0) + 1;
    p["estimated_usd"] =
        p.value("estimated_usd", 0.0) + (cost.is_number() ? cost.get<double>() : 0.0);
    if (r.contains("node_seconds") && r["node_seconds"].is_object()) {
      for (const auto& [type, seconds] : r["node_seconds"].items()) {
        Json& t = by_type[type];
        if (t.is_null()) t = Json::object();
        t["node_hours"] = t.value("node_hours", 0.0) + seconds.get<double>() / 3600;
      }
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
