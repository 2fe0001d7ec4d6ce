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

#include "stagekit/stage.h"
#include "stagekit/status.h"

namespace stagekit::analyse {

// Reads a report source: `path` is a run's output directory (its
// .stagekit-run.json) or a JSON file. kInputError when it is missing,
// unreadable, not JSON, or neither a run summary nor a parity document.
Result<Json> LoadReportSource(const std::filesystem::path& path);

// A run summary has "stages"; a parity document has "outputs" and "runs".
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
Json ChromeTrace(const Json& doc);

// One HTML page with inline CSS and inline SVG; no scripts and no external
// resources. Every string from the source is escaped.
std::string HtmlReport(const Json& doc);

// Escapes & < > " ' for HTML text and attribute values.
std::string HtmlEscape(std::string_view text);

// Writes the trace and/or the HTML report (an empty path: not wanted), each
// atomically. kOutputError when one cannot be written.
Status WriteReports(const Json& doc, const std::filesystem::path& trace,
                    const std::filesystem::path& html);

}  // namespace stagekit::analyse

#endif  // STAGEKIT_ANALYSE_REPORT_H_
