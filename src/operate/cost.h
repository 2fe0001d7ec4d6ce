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

// $STAGEKIT_COST_LOG, else $XDG_DATA_HOME/stagekit/cost.jsonl, else
// ~/.local/share/stagekit/cost.jsonl.
std::filesystem::path DefaultCostLog();

// Appends one record as one line with a single write (O_APPEND), so
// concurrent runs never interleave.
Status AppendCostRecord(const std::filesystem::path& log, const Json& record);

// The records in the log, oldest first; lines that do not parse are skipped
// and counted in `bad_lines`.
Result<std::vector<Json>> ReadCostLog(const std::filesystem::path& log, int* bad_lines = nullptr);

// Totals over records that started at or after `since` (ISO date or time; "" for all).
Json SummarizeCost(const std::vector<Json>& records, const std::string& since);

}  // namespace stagekit::operate

#endif  // STAGEKIT_OPERATE_COST_H_
