// Cost records: one JSON line per `run` and `submit` (start, end, outcome,
// executor, node types, spot price caps, node time per type, an estimated
// cost), appended to a log that `stagekit cost` sums up. The estimate is an
// upper bound for spot workers: it prices them at their cap.
#ifndef STAGEKIT_OPERATE_COST_H_
#define STAGEKIT_OPERATE_COST_H_

#include <chrono>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "stagekit/stage.h"
#include "stagekit/status.h"

namespace stagekit::operate {

// USD per hour by instance type, and which of them are spot price caps.
struct PriceBook {
  std::map<std::string, double> usd_per_hour;
  std::map<std::string, bool> spot_cap;
  std::string head_type;  // the head's instance type, when known
  bool empty() const { return usd_per_hour.empty(); }
};

// Prices from a cluster spec (workers' spot_max_price; the head's and
// on-demand workers' price_per_hour when given).
Result<PriceBook> PriceBookFromSpec(const std::filesystem::path& spec);
// "TYPE=USD" (per hour); "local" prices the machine a local run uses.
Status AddPrice(PriceBook& book, const std::string& spec);

// How many nodes of each type a run used: from the Ray nodes' resources
// ("vm:<type>" names the type; the head is the head's type or "head"), or
// {"local": 1} for a run on this machine.
std::map<std::string, int> NodeTypes(const Json& ray_nodes, const PriceBook& book);

// USD per hour for these nodes; nullopt when a type has no price.
std::optional<double> BurnRate(const std::map<std::string, int>& nodes, const PriceBook& book,
                               std::string* unpriced = nullptr);

// One line of the cost log: what `run` and `submit` append and `stagekit
// cost` sums. Written with "version": kVersion; a line without a version is
// version 1 (written before versions were recorded); a line of a newer
// version, or with a field of the wrong type, is not read (FromJson says which
// field, kInputError) and `stagekit cost` counts it as skipped.
struct CostRecord {
  static constexpr int kVersion = 1;
  std::string command;  // "run" or "submit"
  std::string pipeline;
  std::string executor;    // "inprocess", "ray", "ray job (ray)", ...
  std::string start, end;  // UTC, "2026-06-01T12:00:00Z"
  double wall_s = 0;
  std::string outcome;  // "succeeded", "submitted", or the failure's code name
  int exit_code = 0;
  std::map<std::string, int> node_types;          // run: nodes by type
  std::map<std::string, double> node_seconds;     // run: node time by type
  std::map<std::string, double> spot_price_caps;  // run: USD/hour caps of spot types used
  std::optional<double> estimated_usd;            // none when a type had no price
  std::string unpriced_node_type;                 // run: the type without a price
  std::optional<double> budget_usd;               // run: --budget
  std::string submission_id, address, package;    // submit

  Json ToJson() const;
  static Result<CostRecord> FromJson(const Json& json);
};

// $STAGEKIT_COST_LOG, else $XDG_DATA_HOME/stagekit/cost.jsonl, else
// ~/.local/share/stagekit/cost.jsonl.
std::filesystem::path DefaultCostLog();

// Appends one record as one line with a single write (O_APPEND), so
// concurrent runs never interleave.
Status AppendCostRecord(const std::filesystem::path& log, const CostRecord& record);

// The records in the log, oldest first; lines that do not parse or are not
// records (CostRecord::FromJson) are skipped and counted in `bad_lines`.
Result<std::vector<CostRecord>> ReadCostLog(const std::filesystem::path& log,
                                            int* bad_lines = nullptr);

// Totals over records that started at or after `since` (ISO date or time; "" for all).
Json SummarizeCost(const std::vector<CostRecord>& records, const std::string& since);

}  // namespace stagekit::operate

#endif  // STAGEKIT_OPERATE_COST_H_
