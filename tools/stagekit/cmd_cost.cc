// stagekit cost [--since DATE]: what the recorded runs and submissions cost.
#include <cstdio>
#include <ctime>
#include <iostream>

#include "cli.h"

namespace stagekit::cli {
namespace {

struct CostCommand {
  CostCli cost;
  std::string since;
  bool json = false;
};

// Whether `text` starts with a real calendar date YYYY-MM-DD (2026-13-45 is not).
bool StartsWithDate(const std::string& text) {
  if (text.size() < 10 || text[4] != '-' || text[7] != '-') return false;
  for (int i : {0, 1, 2, 3, 5, 6, 8, 9}) {
    if (text[i] < '0' || text[i] > '9') return false;
  }
  std::tm tm{};
  tm.tm_year = std::stoi(text.substr(0, 4)) - 1900;
  tm.tm_mon = std::stoi(text.substr(5, 2)) - 1;
  tm.tm_mday = std::stoi(text.substr(8, 2));
  const std::tm asked = tm;
  ::timegm(&tm);  // normalises 2026-13-45 into 2027-02-14
  return tm.tm_year == asked.tm_year && tm.tm_mon == asked.tm_mon && tm.tm_mday == asked.tm_mday;
}

Status Cost(const CostCommand& cmd) {
  if (!cmd.since.empty() && !StartsWithDate(cmd.since)) {
    return Status(Code::kUsage, "--since " + cmd.since + ": write a date like 2026-11-01 (UTC)");
  }
  int bad = 0;
  auto records = operate::ReadCostLog(cmd.cost.Log(), &bad);
  if (!records.ok()) return records.status();
  Json summary = operate::SummarizeCost(*records, cmd.since);
  summary["log"] = cmd.cost.Log().string();
  summary["unreadable_lines"] = bad;
  if (cmd.json) {
    std::cout << summary.dump(2) << std::endl;
    return OkStatus();
  }
  std::printf(
      "%d run%s%s: %.1f h of wall time, estimated $%.2f%s\n", summary["runs"].get<int>(),
      summary["runs"] == 1 ? "" : "s", cmd.since.empty() ? "" : (" since " + cmd.since).c_str(),
      summary["wall_s"].get<double>() / 3600, summary["estimated_usd"].get<double>(),
      summary["unpriced_runs"] > 0
          ? (" (" + std::to_string(summary["unpriced_runs"].get<int>()) + " without prices)")
                .c_str()
          : "");
  for (const auto& [outcome, n] : summary["by_outcome"].items()) {
    std::printf("  %-16s %d\n", outcome.c_str(), n.get<int>());
  }
  if (!summary["by_node_type"].empty()) std::printf("node hours:\n");
  for (const auto& [type, t] : summary["by_node_type"].items()) {
    std::printf("  %-16s %.2f\n", type.c_str(), t["node_hours"].get<double>());
  }
  if (!summary["by_pipeline"].empty()) std::printf("by pipeline:\n");
  for (const auto& [name, p] : summary["by_pipeline"].items()) {
    std::printf("  %-16s %d runs, $%.2f\n", name.c_str(), p["runs"].get<int>(),
                p["estimated_usd"].get<double>());
  }
  if (bad > 0)
    std::fprintf(stderr, "stagekit: %d unreadable line(s) in %s skipped\n", bad,
                 cmd.cost.Log().c_str());
  return OkStatus();
}

}  // namespace

void CostCli::AddTo(CLI::App* cmd) {
  cmd->add_option("--cost-log", log,
                  "Where cost records go (default: $STAGEKIT_COST_LOG, else "
                  "~/.local/share/stagekit/cost.jsonl)");
  cmd->add_option("--cluster", cluster,
                  "Cluster spec whose prices cost records use (spot caps, price_per_hour)");
  cmd->add_option("--price", prices, "Price of a node type in USD per hour; repeatable")
      ->type_name("TYPE=USD")
      ->allow_extra_args(false);
}

std::filesystem::path CostCli::Log() const {
  return log.empty() ? operate::DefaultCostLog() : std::filesystem::path(log);
}

Result<operate::PriceBook> CostCli::Prices() const {
  operate::PriceBook book;
  if (!cluster.empty()) {
    auto b = operate::PriceBookFromSpec(cluster);
    if (!b.ok()) return b.status();
    book = *b;
  }
  for (const std::string& p : prices) {
    if (Status s = operate::AddPrice(book, p); !s.ok()) return s;
  }
  return book;
}

void SetCostCommand(CLI::App& app, Action& action) {
  auto cmd = std::make_shared<CostCommand>();
  CLI::App* sub = app.add_subcommand(
      "cost",
      "Sum up the cost records every run and submit leaves (runs, outcomes, node hours, "
      "estimated USD)");
  sub->add_option("--cost-log", cmd->cost.log,
                  "The cost log (default: $STAGEKIT_COST_LOG, else "
                  "~/.local/share/stagekit/cost.jsonl)");
  sub->add_option("--since", cmd->since, "Only records from this UTC date (2026-11-01) or time on");
  sub->add_flag("--json", cmd->json, "Print JSON");
  sub->callback([cmd, &action] { action = [cmd] { return Cost(*cmd); }; });
}

}  // namespace stagekit::cli
