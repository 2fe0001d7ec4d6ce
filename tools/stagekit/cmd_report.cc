// stagekit report RUN_DIR|SUMMARY.json: an HTML report and/or a Chrome trace
// of an earlier run, from the record it left beside its outputs; and the
// --report/--trace options that `run` and `parity` share.
#include <cstdio>

#include "analyse/report.h"
#include "cli.h"

namespace stagekit::cli {

void ReportCli::AddTo(CLI::App* cmd) {
  cmd->add_option("--report", html,
                  "Also write a self-contained HTML report of the run (summary, stage table, "
                  "timeline) to this file")
      ->type_name("FILE.html");
  cmd->add_option("--trace", trace,
                  "Also write a Chrome trace-event JSON of the run to this file (open it in "
                  "https://ui.perfetto.dev or chrome://tracing)")
      ->type_name("FILE");
}

namespace {

template <typename Doc>
Status WriteReportFiles(const std::string& html, const std::string& trace, const Doc& doc,
                        bool quiet) {
  if (html.empty() && trace.empty()) return OkStatus();
  if (Status s = analyse::WriteReports(doc, trace, html); !s.ok()) return s;
  if (!quiet) {
    if (!html.empty()) std::fprintf(stderr, "stagekit: report in %s\n", html.c_str());
    if (!trace.empty()) std::fprintf(stderr, "stagekit: trace in %s\n", trace.c_str());
  }
  return OkStatus();
}

}  // namespace

Status ReportCli::Write(const analyse::RunRecord& run, bool quiet) const {
  return WriteReportFiles(html, trace, run, quiet);
}

Status ReportCli::Write(const analyse::ParityDocument& doc, bool quiet) const {
  return WriteReportFiles(html, trace, doc, quiet);
}

namespace {

struct ReportCommand {
  std::string source;
  std::string html;
  std::string trace;
  bool quiet = false;
};

Status Report(const ReportCommand& cmd) {
  if (cmd.html.empty() && cmd.trace.empty()) {
    return Status(Code::kUsage, "nothing to write: give --html FILE.html and/or --trace FILE");
  }
  Result<analyse::ReportSource> doc = analyse::LoadReportSource(cmd.source);
  if (!doc.ok()) return doc.status();
  if (Status s = analyse::WriteReports(*doc, cmd.trace, cmd.html); !s.ok()) return s;
  if (!cmd.quiet) {
    if (!cmd.html.empty()) std::fprintf(stderr, "stagekit: report in %s\n", cmd.html.c_str());
    if (!cmd.trace.empty()) std::fprintf(stderr, "stagekit: trace in %s\n", cmd.trace.c_str());
  }
  return OkStatus();
}

}  // namespace

void SetReportCommand(CLI::App& app, Action& action) {
  auto cmd = std::make_shared<ReportCommand>();
  CLI::App* sub = app.add_subcommand(
      "report", "Make an HTML report or a Chrome trace from an earlier run's record");
  sub->add_option("SOURCE", cmd->source,
                  "A run's output directory (its .stagekit-run.json), a run summary, or the "
                  "output of `stagekit parity --json`")
      ->required();
  sub->add_option("--html", cmd->html, "Write a self-contained HTML report here")
      ->type_name("FILE.html");
  sub->add_option("--trace", cmd->trace,
                  "Write a Chrome trace-event JSON here (open it in https://ui.perfetto.dev or "
                  "chrome://tracing)")
      ->type_name("FILE");
  sub->add_flag("-q,--quiet", cmd->quiet, "Print nothing on success");
  sub->callback([cmd, &action] { action = [cmd] { return Report(*cmd); }; });
}

}  // namespace stagekit::cli
