#include <cctype>
#include <cmath>
#include <string>

#include "stagekit/executor.h"

namespace stagekit {
namespace {

// Splits "1.5GiB" into 1.5 and "GiB"; false when there is no leading number.
bool SplitNumber(std::string_view text, double& number, std::string& unit) {
  std::string s(text);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  std::size_t pos = 0;
  try {
    number = std::stod(s, &pos);
  } catch (...) {
    return false;
  }
  unit = s.substr(pos);
  while (!unit.empty() && std::isspace(static_cast<unsigned char>(unit.front()))) unit.erase(0, 1);
  return std::isfinite(number) && number >= 0;
}

}  // namespace

Status Resources::Validate() const {
  auto check = [](const std::string& what, double v) -> Status {
    if (!std::isfinite(v) || v < 0) {
      return Status(Code::kInvalidPipeline, what + " must be a non-negative number");
    }
    if (v > 1 && std::floor(v) != v) {
      return Status(Code::kInvalidPipeline,
                    what + " = " + std::to_string(v) +
                        ": fractions are only allowed below 1 (Ray's rule); use a whole number");
    }
    return OkStatus();
  };
  if (Status s = check("cpus", cpus); !s.ok()) return s;
  if (Status s = check("gpus", gpus); !s.ok()) return s;
  for (const auto& [name, amount] : custom) {
    if (name.empty()) return Status(Code::kInvalidPipeline, "custom resource with an empty name");
    if (name == "CPU" || name == "GPU" || name == "memory") {
      return Status(Code::kInvalidPipeline,
                    "custom resource '" + name + "' is built in; use cpus, gpus or memory instead");
    }
    if (Status s = check("resource '" + name + "'", amount); !s.ok()) return s;
    if (amount == 0) {
      return Status(Code::kInvalidPipeline,
                    "resource '" + name + "' = 0 means nothing; remove it or ask for more");
    }
  }
  return OkStatus();
}

Json Resources::ToJson() const {
  Json custom_json = Json::object();
  for (const auto& [name, amount] : custom) custom_json[name] = amount;
  return Json{
      {"cpus", cpus}, {"gpus", gpus}, {"memory_bytes", memory_bytes}, {"custom", custom_json}};
}

Result<std::uint64_t> ParseBytes(std::string_view text) {
  double n = 0;
  std::string unit;
  auto bad = [&] {
    return Status(Code::kInvalidPipeline,
                  "cannot read '" + std::string(text) +
                      "' as a size; write e.g. 512MiB, 4GiB, 2GB or a number of bytes");
  };
  if (!SplitNumber(text, n, unit)) return bad();
  static const std::pair<const char*, double> kUnits[] = {{"", 1},
                                                          {"B", 1},
                                                          {"K", 1e3},
                                                          {"KB", 1e3},
                                                          {"KiB", 1024.0},
                                                          {"M", 1e6},
                                                          {"MB", 1e6},
                                                          {"MiB", 1048576.0},
                                                          {"G", 1e9},
                                                          {"GB", 1e9},
                                                          {"GiB", 1073741824.0},
                                                          {"T", 1e12},
                                                          {"TB", 1e12},
                                                          {"TiB", 1099511627776.0}};
  for (const auto& [name, factor] : kUnits) {
    if (unit == name) {
      double bytes = std::round(n * factor);
      if (bytes > 1.8e19) return bad();
      return static_cast<std::uint64_t>(bytes);
    }
  }
  return bad();
}

Result<std::chrono::milliseconds> ParseDuration(std::string_view text) {
  double n = 0;
  std::string unit;
  auto bad = [&] {
    return Status(Code::kInvalidPipeline,
                  "cannot read '" + std::string(text) +
                      "' as a duration; write e.g. 250ms, 30s, 5m, 1h or a number of seconds");
  };
  if (!SplitNumber(text, n, unit)) return bad();
  double ms = 0;
  if (unit == "ms") {
    ms = n;
  } else if (unit.empty() || unit == "s") {
    ms = n * 1e3;
  } else if (unit == "m" || unit == "min") {
    ms = n * 60e3;
  } else if (unit == "h") {
    ms = n * 3600e3;
  } else {
    return bad();
  }
  if (ms <= 0 || ms > 1e12) return bad();
  return std::chrono::milliseconds(static_cast<std::int64_t>(std::ceil(ms)));
}

}  // namespace stagekit
