// Run reports made from the record of a run: a Chrome trace-event JSON (for
// Perfetto or chrome://tracing) and a self-contained HTML page (summary,
// per-stage table, an SVG timeline, parity and cost sections when present).
//
// Both are made from a "report source": the run summary that `stagekit run`
// writes beside its outputs (OUT/.stagekit-run.json), or the document
// `stagekit parity --json` prints (executors, outputs, runs).
#ifndef STAGEKIT_ANALYSE_REPORT_H_
#define STAGEKIT_ANALYSE_REPORT_H_

#include <filesystem>
#include <string>
#include <string_view>
#include <variant>

#include "analyse/run_record.h"
#include "stagekit/stage.h"
#include "stagekit/status.h"

namespace stagekit::analyse {

// What a report is made from: a run record or a parity document.
using ReportSource = std::variant<RunRecord, ParityDocument>;

// Reads a report source: `path` is a run's output directory (its
// .stagekit-run.json) or a JSON file. kInputError when it is missing,
// unreadable, not JSON, neither a run record nor a parity document, or not
// a valid one (the message names the file and the field, see run_record.h).
Result<ReportSource> LoadReportSource(const std::filesystem::path& path);

// The JSON of a report source, read strictly: a parity document when it has
// "runs" or "executors" (ParityDocument::FromJson), else a run record when it
// has "stages" or "pipeline" (RunRecord::FromJson); kInputError otherwise.
Result<ReportSource> ReportSourceFromJson(const Json& doc);

// Shapes only: a run summary has an array "stages"; a parity document has an
// object "runs" and an array "executors".
bool IsRunSummary(const Json& doc);
bool IsParityDocument(const Json& doc);

// Chrome trace-event JSON, object form: {"traceEvents": [...], ...}.
// One process per node (ray) or host (local executors), one thread per
// scheduler slot, one complete ("X") slice per stage attempt that started,
// timestamps in microseconds since the run started. Cache hits are slices
// of category "cached" on a "cache hits" process plus an instant event;
// slices of stages whose attempt > 1 have category "stage,retry" and an
// instant event; failed stages have category "failed" and an instant event.
// A parity document gives one group of processes per executor, prefixed
// "[executor] ".
Json ChromeTrace(const RunRecord& run);
Json ChromeTrace(const ParityDocument& doc);
Json ChromeTrace(const ReportSource& source);

// One HTML page with inline CSS and inline SVG; no scripts and no external
// resources. Every string from the source is escaped.
std::string HtmlReport(const RunRecord& run);
std::string HtmlReport(const ParityDocument& doc);
std::string HtmlReport(const ReportSource& source);

// Escapes & < > " ' for HTML text and attribute values.
std::string HtmlEscape(std::string_view text);

// Writes the trace and/or the HTML report (an empty path: not wanted), each
// atomically. kOutputError when one cannot be written.
Status WriteReports(const RunRecord& run, const std::filesystem::path& trace,
                    const std::filesystem::path& html);
Status WriteReports(const ParityDocument& doc, const std::filesystem::path& trace,
                    const std::filesystem::path& html);
Status WriteReports(const ReportSource& source, const std::filesystem::path& trace,
                    const std::filesystem::path& html);

}  // namespace stagekit::analyse

#endif  // STAGEKIT_ANALYSE_REPORT_H_
