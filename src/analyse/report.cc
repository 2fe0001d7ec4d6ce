#include "analyse/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <vector>

#include "deploy/package.h"
#include "stagekit/version.h"
#include "util/files.h"
#include "util/json_fields.h"
#include "util/text.h"

namespace stagekit::analyse {

namespace fs = std::filesystem;

namespace {

// Lookups in what an executor says about itself (RunRecord::executor_details),
// which only the executor defines: a missing or mistyped field reads as the default.
std::string Str(const Json& j, const char* key, const std::string& def = "") {
  if (!j.is_object()) return def;
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : def;
}
bool Bool(const Json& j, const char* key) {
  if (!j.is_object()) return false;
  auto it = j.find(key);
  return it != j.end() && it->is_boolean() && it->get<bool>();
}
const Json& Obj(const Json& j, const char* key) {
  static const Json kNull;
  if (!j.is_object()) return kNull;
  auto it = j.find(key);
  return it != j.end() ? *it : kNull;
}

std::string Format(const char* fmt, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, v);
  return buf;
}

// "0.042 s", "12.3 s", "4m 05s".
std::string Seconds(double s) {
  if (s < 0) return "";
  if (s < 10) return Format("%.3f s", s);
  if (s < 120) return Format("%.1f s", s);
  const long total = std::lround(s);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%ldm %02lds", total / 60, total % 60);
  return buf;
}

// "sha256:<64 hex>" -> the first 12 hex digits.
std::string ShortDigest(const std::string& digest) {
  const std::size_t colon = digest.find(':');
  return digest.substr(colon == std::string::npos ? 0 : colon + 1, 12);
}

bool IsLocalExecutor(const std::string& executor) { return executor != "ray"; }

// ---- what a run summary says about each stage -----------------------------

struct StageView {
  std::string name, stage, state, executor, host, node, digest, error;
  bool cached = false;
  bool started = false;
  bool has_stats = false;
  double start = 0, end = 0, wall = 0;
  int slot = -1;
  int attempt = 1;
  std::uint64_t bytes_in = 0, bytes_out = 0;
  Json metrics;
  std::string process;  // the trace process / timeline lane group
};

const char* kCacheProcess = "cache hits";

std::vector<StageView> Stages(const RunRecord& run) {
  std::vector<StageView> out;
  out.reserve(run.stages.size());
  const std::string& run_executor = run.executor;
  for (const StageRecord& s : run.stages) {
    StageView v;
    v.name = s.name;
    v.stage = s.stage;
    v.state = s.state;
    v.cached = s.cached;
    v.started = s.start_s.has_value();
    v.start = s.start_s.value_or(0);
    v.end = s.end_s.value_or(v.start);
    if (v.end < v.start) v.end = v.start;
    v.slot = s.slot.value_or(-1);
    v.has_stats = s.stats.has_value();
    if (s.stats) {
      const RunStats& st = *s.stats;
      v.executor = st.executor;
      v.host = st.host;
      v.node = st.node;
      v.digest = st.output_digest;
      v.wall = st.wall_s;
      v.attempt = st.attempt;
      v.bytes_in = st.bytes_in;
      v.bytes_out = st.bytes_out;
      v.metrics = st.metrics;
    } else {
      // Stages without stats: failed ones ran on the run's executor; others never ran.
      v.executor = v.state == "failed" ? run_executor : "";
      v.wall = v.end - v.start;
    }
    if (s.error) v.error = s.error->message;
    out.push_back(std::move(v));
  }
  // Where each stage ran. Stages without stats (failed ones) ran on this
  // machine for the local executors: the host most stages report.
  std::map<std::string, int> hosts;
  for (const StageView& v : out) {
    if (!v.cached && !v.host.empty()) ++hosts[v.host];
  }
  std::string local_host = "this machine";
  int best = 0;
  for (const auto& [h, n] : hosts) {
    if (n > best) best = n, local_host = h;
  }
  for (StageView& v : out) {
    if (v.cached) {
      v.process = kCacheProcess;
    } else if (!IsLocalExecutor(run_executor)) {
      v.process = "node " + (v.node.empty() ? (v.host.empty() ? "unknown" : v.host) : v.node);
    } else {
      v.process = (v.host.empty() ? local_host : v.host) + " (" + run_executor + ")";
    }
  }
  return out;
}

struct Counts {
  std::size_t total = 0, ran = 0, cached = 0, failed = 0, not_run = 0, other = 0;
  std::uint64_t bytes_out = 0, cached_bytes = 0;
};

Counts Count(const std::vector<StageView>& stages) {
  Counts c;
  for (const StageView& v : stages) {
    ++c.total;
    if (v.state == "succeeded") {
      if (v.cached) {
        ++c.cached;
        c.cached_bytes += v.bytes_out;
      } else {
        ++c.ran;
      }
      c.bytes_out += v.bytes_out;
    } else if (v.state == "failed") {
      ++c.failed;
    } else if (v.state == "not_run" || v.state == "pending") {
      ++c.not_run;
    } else {
      ++c.other;
    }
  }
  return c;
}

// ---- Chrome trace ---------------------------------------------------------

// The trace threads of a run: for each process, the slots its started stages ran on.
std::map<std::string, std::set<int>> ThreadsByProcess(const std::vector<StageView>& stages) {
  std::map<std::string, std::set<int>> threads;
  for (const StageView& v : stages) {
    if (v.started) threads[v.process].insert(v.slot);
  }
  return threads;
}

// Processes sorted by name, the cache last.
std::vector<std::string> ProcessOrder(const std::map<std::string, std::set<int>>& threads) {
  std::vector<std::string> order;
  for (const auto& [p, slots] : threads) {
    if (p != kCacheProcess) order.push_back(p);
  }
  if (threads.count(kCacheProcess) != 0) order.push_back(kCacheProcess);
  return order;
}

// Metadata events that name and order one process and its threads (slots).
void AddProcessMetadata(const std::string& name, int pid, const std::set<int>& slots,
                        Json& events) {
  events.push_back({{"ph", "M"},
                    {"name", "process_name"},
                    {"pid", pid},
                    {"tid", 0},
                    {"args", {{"name", name}}}});
  events.push_back({{"ph", "M"},
                    {"name", "process_sort_index"},
                    {"pid", pid},
                    {"tid", 0},
                    {"args", {{"sort_index", pid}}}});
  for (int slot : slots) {
    const int tid = slot + 1;
    events.push_back(
        {{"ph", "M"},
         {"name", "thread_name"},
         {"pid", pid},
         {"tid", tid},
         {"args", {{"name", slot < 0 ? std::string("no slot") : "slot " + std::to_string(slot)}}}});
    events.push_back({{"ph", "M"},
                      {"name", "thread_sort_index"},
                      {"pid", pid},
                      {"tid", tid},
                      {"args", {{"sort_index", tid}}}});
  }
}

// Gives each process a pid, in order, and adds its metadata events; returns the pids.
std::map<std::string, int> AddProcesses(const std::vector<StageView>& stages,
                                        const std::string& prefix, int& next_pid, Json& events) {
  std::map<std::string, std::set<int>> threads = ThreadsByProcess(stages);
  std::map<std::string, int> pids;
  for (const std::string& p : ProcessOrder(threads)) {
    const int pid = next_pid++;
    pids[p] = pid;
    AddProcessMetadata(prefix + p, pid, threads[p], events);
  }
  return pids;
}

// The category of a stage's slice: stage, cached or failed, with ",retry" for a retried one.
std::string SliceCategory(const StageView& v) {
  std::string cat = "stage";
  if (v.cached) cat = "cached";
  if (v.state == "failed") cat = "failed";
  if (v.attempt > 1) cat += ",retry";
  return cat;
}

// The args of a stage's slice: its stats, and its retries, error and metrics where it has them.
Json SliceArgs(const StageView& v) {
  Json args = {{"stage", v.stage},     {"state", v.state},   {"executor", v.executor},
               {"attempt", v.attempt}, {"cached", v.cached}, {"bytes_in", v.bytes_in},
               {"bytes", v.bytes_out}, {"digest", v.digest}, {"host", v.host},
               {"node", v.node},       {"wall_s", v.wall},   {"slot", v.slot}};
  if (v.attempt > 1) args["retries"] = v.attempt - 1;
  if (v.state == "failed") args["error"] = v.error;
  if (v.metrics.is_object() && !v.metrics.empty()) args["metrics"] = v.metrics;
  return args;
}

// The complete ("X") event of one started stage, coloured for the legacy viewer.
Json StageSlice(const StageView& v, int pid) {
  const bool failed = v.state == "failed";
  const bool retried = v.attempt > 1;
  double dur = (v.end - v.start) * 1e6;
  if (v.cached && dur <= 0) dur = 1e-3;  // 1 ns: a slice, and still an instant
  const std::string name =
      retried ? v.name + " (attempt " + std::to_string(v.attempt) + ")" : v.name;
  Json slice = {{"ph", "X"},  {"name", name},        {"cat", SliceCategory(v)},
                {"pid", pid}, {"tid", v.slot + 1},   {"ts", v.start * 1e6},
                {"dur", dur}, {"args", SliceArgs(v)}};
  // Colours of the legacy viewer; Perfetto colours by name.
  if (failed) {
    slice["cname"] = "terrible";
  } else if (v.cached) {
    slice["cname"] = "good";
  } else if (retried) {
    slice["cname"] = "yellow";
  }
  return slice;
}

// An instant ("i") event on a stage's thread, e.g. its cache hit.
Json StageInstant(const StageView& v, int pid, const std::string& what, const std::string& cat,
                  double at) {
  return {{"ph", "i"},
          {"s", "t"},
          {"name", what + ": " + v.name},
          {"cat", cat},
          {"pid", pid},
          {"tid", v.slot + 1},
          {"ts", at},
          {"args", {{"stage", v.stage}, {"attempt", v.attempt}}}};
}

// The events of one started stage: its slice, then instants for a cache hit, retry or failure.
void AddStageEvents(const StageView& v, int pid, Json& events) {
  const double ts = v.start * 1e6;
  events.push_back(StageSlice(v, pid));
  if (v.cached) events.push_back(StageInstant(v, pid, "cache hit", "cached", ts));
  if (v.attempt > 1) {
    events.push_back(
        StageInstant(v, pid, "retried (attempt " + std::to_string(v.attempt) + ")", "retry", ts));
  }
  if (v.state == "failed") events.push_back(StageInstant(v, pid, "failed", "failed", v.end * 1e6));
}

// Adds a run's trace events: a process per node (or host), a thread per slot, a slice per stage.
void AddRunEvents(const RunRecord& run, const std::string& prefix, int& next_pid, Json& events) {
  const std::vector<StageView> stages = Stages(run);
  std::map<std::string, int> pids = AddProcesses(stages, prefix, next_pid, events);
  for (const StageView& v : stages) {
    if (v.started) AddStageEvents(v, pids[v.process], events);
  }
}

Json RunInfo(const RunRecord& run) {
  return {{"pipeline", run.pipeline},
          {"executor", run.executor},
          {"status", run.status},
          {"wall_s", run.wall_s},
          {"jobs", static_cast<double>(run.jobs)},  // a number, as traces always had it
          {"out_dir", run.out_dir}};
}

// ---- HTML -----------------------------------------------------------------

constexpr const char* kCss = R"(
:root{--ok:#3b73c8;--cached:#2e9d57;--failed:#d23c3c;--retry:#e8950f;--muted:#5f6b77;--line:#e3e7ec}
*{box-sizing:border-box}
body{font:14px/1.45 "DejaVu Sans",system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1c2430;background:#fff}
main{max-width:1240px;margin:0 auto;padding:24px 28px 40px}
h1{font-size:22px;margin:0 0 2px}
h2{font-size:17px;margin:30px 0 10px;padding-bottom:4px;border-bottom:1px solid var(--line)}
h3{font-size:15px;margin:18px 0 8px}
.sub{color:var(--muted);margin:0 0 16px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}
.card{border:1px solid var(--line);border-radius:8px;padding:8px 14px;min-width:112px;background:#fafbfc}
.card .k{font-size:11px;color:var(--muted);text-transform:uppercase;letter-spacing:.05em}
.card .v{font-size:19px;font-weight:600;white-space:nowrap}
.card.ok .v{color:#1f7a3a}.card.bad .v{color:#b42318}
table{border-collapse:collapse;font-size:13px;width:100%}
th,td{border-bottom:1px solid var(--line);padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f5f8;font-weight:600;white-space:nowrap}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.kv{width:auto}table.kv th{background:none;color:var(--muted);font-weight:normal}
code{font:12px "DejaVu Sans Mono",ui-monospace,Menlo,monospace}
.st-succeeded{color:#1f7a3a}.st-failed{color:#b42318;font-weight:600}.st-not_run,.st-pending{color:#8a939c}
tr.failed td{background:#fdf3f2}tr.cached td{background:#f3faf5}
tr.errrow td{color:#8c1d13;font:12px "DejaVu Sans Mono",monospace;white-space:pre-wrap;background:#fdf3f2}
.badge{display:inline-block;padding:0 8px;border-radius:10px;font-size:12px;font-weight:600}
.badge.ok{background:#e2f3e7;color:#1f7a3a}.badge.bad{background:#fde6e3;color:#b42318}
.err{background:#fdf3f2;border:1px solid #f2c4be;border-radius:8px;padding:10px 14px;white-space:pre-wrap;font:12px "DejaVu Sans Mono",monospace;color:#8c1d13}
.legend{display:flex;gap:16px;font-size:12px;color:var(--muted);margin:4px 0 6px}
.sw{display:inline-block;width:12px;height:12px;border-radius:2px;vertical-align:-2px;margin-right:5px}
.sw.ok{background:var(--ok)}.sw.cached{background:var(--cached)}.sw.failed{background:var(--failed)}
.sw.retry{background:#fff;border:2px solid var(--retry)}.sw.merged{background:repeating-linear-gradient(90deg,var(--ok) 0 3px,#9db9e4 3px 5px)}
details>summary{cursor:pointer;color:#2a5db0;margin:6px 0}
.note{color:var(--muted);font-size:12px}
svg.timeline{display:block;width:100%;height:auto;border:1px solid var(--line);border-radius:6px;background:#fff}
svg .lane{fill:#f6f8fa}svg .grid{stroke:#e1e5ea}svg .axis{fill:#5f6b77;font-size:11px}
svg .label{fill:#33404d;font-size:11px}
svg .bar.ok{fill:var(--ok)}svg .bar.cached{fill:var(--cached)}svg .bar.failed{fill:var(--failed)}
svg .bar{stroke:#fff;stroke-width:1}svg .bar.merged{fill-opacity:.75}svg .bar.retry{stroke:var(--retry);stroke-width:2}
svg .bar.thin{stroke:none}svg .bar.thin.retry{stroke:var(--retry);stroke-width:1}
svg text{font-family:"DejaVu Sans",system-ui,sans-serif}
footer{margin-top:36px;color:var(--muted);font-size:12px}
)";

std::string Card(const std::string& key, const std::string& value, const char* cls = "") {
  return "<div class=\"card " + std::string(cls) + "\"><div class=\"k\">" + HtmlEscape(key) +
         "</div><div class=\"v\">" + HtmlEscape(value) + "</div></div>";
}

std::string KvRow(const std::string& key, const std::string& value_html) {
  return "<tr><th>" + HtmlEscape(key) + "</th><td>" + value_html + "</td></tr>\n";
}

const char* BarClass(const StageView& v) {
  if (v.state == "failed") return "failed";
  if (v.cached) return "cached";
  return "ok";
}

std::string BarTitle(const StageView& v) {
  std::string t = v.name + " (" + v.stage + ")\n" + v.state;
  if (v.cached) t += ", cache hit";
  if (v.attempt > 1) t += ", attempt " + std::to_string(v.attempt);
  t += "\n" + Format("%.3f", v.start) + " s to " + Format("%.3f", v.end) + " s (" +
       Seconds(v.end - v.start) + ")";
  if (!v.executor.empty()) t += "\n" + v.executor + " on " + (v.node.empty() ? v.host : v.node);
  if (v.state == "succeeded") t += "\n" + util::HumanBytes(v.bytes_out) + " out";
  if (!v.error.empty()) t += "\n" + v.error.substr(0, 300);
  return t;
}

// The SVG timeline. Lanes are (process, slot) pairs, one row each; when that
// would be more than kMaxLanes lanes, lanes are processes (nodes) instead,
// each with as many rows as stages ran on it at once (bars packed into the
// first free row), and at most kMaxLanes of them. Bars too narrow to see on
// their own are merged with their neighbours into one bar.
constexpr std::size_t kMaxLanes = 40;

struct Lane {
  std::string label;
  std::vector<const StageView*> bars;  // in start order
  std::vector<int> row;                // each bar's row
  int rows = 1;
  double y = 0, h = 0;
};

// The stages that started, in start order; widens span to the last one's end.
std::vector<const StageView*> StartedStages(const std::vector<StageView>& stages, double& span) {
  std::vector<const StageView*> started;
  for (const StageView& v : stages) {
    if (!v.started) continue;
    started.push_back(&v);
    span = std::max(span, v.end);
  }
  std::stable_sort(started.begin(), started.end(),
                   [](const StageView* a, const StageView* b) { return a->start < b->start; });
  return started;
}

// A lane's sort key: (process rank, process, slot); the rank puts the cache last.
using LaneKey = std::tuple<int, std::string, int>;

// Where a process's lanes sort: 1 for the cache (last), 0 for the others.
int ProcessRank(const std::string& p) { return p == kCacheProcess ? 1 : 0; }

// The lanes of a timeline, which lane each key maps to, and how they were chosen.
struct LaneLayout {
  std::vector<Lane> lanes;
  std::map<LaneKey, std::size_t> lane_of;  // slot 0 in the keys when lanes are processes
  bool by_slot = true;
  std::string note;  // why lanes are processes, when they are
};

// One lane per (process, slot) pair, one row each.
void AddSlotLanes(const std::set<LaneKey>& slot_lanes, LaneLayout& layout) {
  for (const LaneKey& k : slot_lanes) {
    layout.lane_of[k] = layout.lanes.size();
    const int slot = std::get<2>(k);
    layout.lanes.push_back(
        {std::get<1>(k) + (slot < 0 ? "" : " \xC2\xB7 slot " + std::to_string(slot)),
         {},
         {},
         1,
         0,
         0});
  }
}

// One lane per process, at most kMaxLanes, the last shared by the rest; sets the note.
void AddProcessLanes(const std::set<std::pair<int, std::string>>& process_lanes,
                     std::size_t slot_lane_count, LaneLayout& layout) {
  std::vector<Lane>& lanes = layout.lanes;
  std::string more;
  for (const auto& [rank, p] : process_lanes) {
    if (lanes.size() + 1 == kMaxLanes && process_lanes.size() > kMaxLanes) {
      more = "; " + std::to_string(process_lanes.size() - lanes.size()) +
             " more nodes share the last lane";
      lanes.push_back({"other nodes", {}, {}, 1, 0, 0});
      break;
    }
    layout.lane_of[{rank, p, 0}] = lanes.size();
    lanes.push_back({p, {}, {}, 1, 0, 0});
  }
  layout.note = std::to_string(slot_lane_count) +
                " node and slot pairs: one lane per node, one row per stage running at once" + more;
}

// Lanes in a stable order (processes by name, the cache last, slots by number), with their bars.
LaneLayout MakeLanes(const std::vector<const StageView*>& started) {
  std::set<LaneKey> slot_lanes;
  std::set<std::pair<int, std::string>> process_lanes;
  for (const StageView* v : started) {
    slot_lanes.insert({ProcessRank(v->process), v->process, v->slot});
    process_lanes.insert({ProcessRank(v->process), v->process});
  }
  LaneLayout layout;
  layout.by_slot = slot_lanes.size() <= kMaxLanes;
  if (layout.by_slot) {
    AddSlotLanes(slot_lanes, layout);
  } else {
    AddProcessLanes(process_lanes, slot_lanes.size(), layout);
  }
  // Each bar to its lane; stages of nodes past the last lane to the last lane.
  for (const StageView* v : started) {
    auto it =
        layout.lane_of.find({ProcessRank(v->process), v->process, layout.by_slot ? v->slot : 0});
    std::vector<Lane>& lanes = layout.lanes;
    lanes[it != layout.lane_of.end() ? it->second : lanes.size() - 1].bars.push_back(v);
  }
  return layout;
}

// Geometry of the SVG, in pixels.
constexpr double kWidth = 1180, kLabelW = 210, kRight = 16, kTop = 26, kRowH = 20, kGap = 4;
constexpr double kMaxLaneH = 160;
constexpr double kPlotW = kWidth - kLabelW - kRight;
constexpr double kTiny = 3;  // px: narrower bars merge with their neighbours

// Maps seconds into the run onto x in the SVG.
struct TimeScale {
  double span;
  double operator()(double s) const { return kLabelW + s / span * kPlotW; }
};

// Packs each lane's bars into rows and stacks the lanes; returns the SVG's height.
double PlaceLanes(std::vector<Lane>& lanes, bool by_slot, const TimeScale& x_of) {
  double y = kTop;
  for (Lane& lane : lanes) {
    // First free row for each bar (a bar ending within half a pixel of the
    // next one's start frees its row).
    // A slot runs one stage at a time: its lane is one row.
    std::vector<double> row_end;
    for (const StageView* v : lane.bars) {
      std::size_t r = 0;
      while (!by_slot && r < row_end.size() && row_end[r] > x_of(v->start) + 0.5) ++r;
      if (r == row_end.size()) row_end.push_back(0);
      row_end[r] = std::max(row_end[r], x_of(v->end));
      lane.row.push_back(static_cast<int>(r));
    }
    lane.rows = std::max<int>(1, static_cast<int>(row_end.size()));
    lane.y = y;
    lane.h = lane.rows == 1 ? kRowH : std::min(kMaxLaneH, std::max(kRowH, lane.rows * 6.0));
    y += lane.h + kGap;
  }
  return y + 2;
}

// The lanes' backgrounds and labels (cut to 34 bytes, the whole label in a tooltip).
void WriteLanes(std::ostream& svg, const std::vector<Lane>& lanes) {
  for (const Lane& lane : lanes) {
    std::string label = lane.label;
    if (label.size() > 34) label = label.substr(0, 33) + "\xE2\x80\xA6";
    svg << "<rect class=\"lane\" x=\"" << kLabelW << "\" y=\"" << lane.y << "\" width=\"" << kPlotW
        << "\" height=\"" << lane.h << "\"/><text class=\"label\" x=\"" << kLabelW - 6 << "\" y=\""
        << lane.y + std::min(lane.h, kRowH) - 6 << "\" text-anchor=\"end\"><title>"
        << HtmlEscape(lane.label) << "</title>" << HtmlEscape(label) << "</text>\n";
  }
}

// Axis: about eight ticks at 1, 2 or 5 times a power of ten seconds, with grid lines.
void WriteAxis(std::ostream& svg, double span, double height, const TimeScale& x_of) {
  const double raw = span / 8;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    if (m * mag >= raw) {
      step = m * mag;
      break;
    }
  }
  const int decimals = step >= 1 ? 0 : static_cast<int>(std::ceil(-std::log10(step) - 1e-9));
  for (int k = 0;; ++k) {
    const double t = k * step;
    if (t > span * 1.0001) break;
    const double x = x_of(t);
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.*f s", decimals, t);
    svg << "<line class=\"grid\" x1=\"" << x << "\" y1=\"" << kTop - 4 << "\" x2=\"" << x
        << "\" y2=\"" << height - 4 << "\"/><text class=\"axis tick\" x=\"" << x
        << "\" y=\"14\" text-anchor=\"" << (k == 0 ? "start" : "middle") << "\">" << buf
        << "</text>\n";
  }
}

// The end of the group of short bars of one kind from bars[b]; widens x1 and end to cover it.
std::size_t GroupEnd(const std::vector<const StageView*>& bars, std::size_t b,
                     const TimeScale& x_of, double& x1, double& end) {
  const std::string cls = BarClass(*bars[b]);
  // A bar of the same kind joins the group when it and the whole group
  // are too narrow to see, and they touch.
  const bool tiny = x1 - x_of(bars[b]->start) < kTiny;
  std::size_t e = b + 1;
  while (tiny && e < bars.size() && BarClass(*bars[e]) == cls) {
    const double nx0 = x_of(bars[e]->start), nx1 = x_of(bars[e]->end);
    if (nx1 - nx0 >= kTiny || nx0 > x1 + 1.5) break;
    x1 = std::max(x1, nx1);
    end = std::max(end, bars[e]->end);
    ++e;
  }
  return e;
}

// The tooltip of bars[b, e): one stage's details, or the count, span and first 20 names.
std::string GroupTitle(const std::vector<const StageView*>& bars, std::size_t b, std::size_t e,
                       const std::string& cls, double end) {
  if (e - b == 1) return BarTitle(*bars[b]);
  std::string title = std::to_string(e - b) + " stages (" + cls + "), " +
                      Format("%.3f", bars[b]->start) + " s to " + Format("%.3f", end) + " s:";
  for (std::size_t k = b; k < e && k < b + 20; ++k) title += "\n" + bars[k]->name;
  if (e - b > 20) title += "\n\xE2\x80\xA6";
  return title;
}

// One row's bars in start order, short neighbours of one kind merged into one bar.
void WriteRowBars(std::ostream& svg, const std::vector<const StageView*>& bars, double bar_y,
                  double bar_h, const TimeScale& x_of) {
  std::size_t b = 0;
  while (b < bars.size()) {
    const StageView& first = *bars[b];
    const std::string cls = BarClass(first);
    const double x0 = x_of(first.start);
    double x1 = x_of(first.end), end = first.end;
    const std::size_t e = GroupEnd(bars, b, x_of, x1, end);
    const bool retry = std::any_of(bars.begin() + static_cast<std::ptrdiff_t>(b),
                                   bars.begin() + static_cast<std::ptrdiff_t>(e),
                                   [](const StageView* v) { return v->attempt > 1; });
    // Failures and cache hits stay visible however short.
    const double min_w = cls == "failed" ? 6.0 : cls == "cached" ? 3.0 : 1.5;
    const double w = std::max(x1 - x0, min_w);
    svg << "<rect class=\"bar " << cls << (e - b > 1 ? " merged" : "") << (retry ? " retry" : "")
        << (bar_h < 8 ? " thin" : "") << "\" data-stages=\"" << e - b << "\" x=\"" << x0
        << "\" y=\"" << bar_y << "\" width=\"" << w << "\" height=\"" << bar_h << "\" rx=\""
        << (bar_h >= 8 ? 2 : 0) << "\"><title>" << HtmlEscape(GroupTitle(bars, b, e, cls, end))
        << "</title></rect>\n";
    b = e;
  }
}

// A lane's bars, row by row.
void WriteLaneBars(std::ostream& svg, const Lane& lane, const TimeScale& x_of) {
  const double row_h = lane.h / lane.rows;
  for (int r = 0; r < lane.rows; ++r) {
    std::vector<const StageView*> bars;
    for (std::size_t i = 0; i < lane.bars.size(); ++i) {
      if (lane.row[i] == r) bars.push_back(lane.bars[i]);
    }
    const double bar_y = lane.y + r * row_h + (lane.rows == 1 ? 2 : row_h * 0.1);
    const double bar_h = lane.rows == 1 ? kRowH - 4 : std::max(1.0, row_h * 0.8);
    WriteRowBars(svg, bars, bar_y, bar_h, x_of);
  }
}

// The whole SVG: lanes, axis, then bars.
std::string TimelineSvg(const std::vector<Lane>& lanes, double span, double height,
                        const TimeScale& x_of) {
  std::ostringstream svg;
  svg << "<svg class=\"timeline\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 " << kWidth
      << ' ' << height << "\" width=\"" << kWidth << "\" height=\"" << height
      << "\" role=\"img\" aria-label=\"Timeline of the stages\">\n";
  WriteLanes(svg, lanes);
  WriteAxis(svg, span, height, x_of);
  for (const Lane& lane : lanes) WriteLaneBars(svg, lane, x_of);
  svg << "</svg>\n";
  return svg.str();
}

// The timeline section: the legend, the SVG and, when lanes are nodes, a note saying so.
std::string Timeline(const std::vector<StageView>& stages, double wall) {
  double span = wall;
  const std::vector<const StageView*> started = StartedStages(stages, span);
  if (started.empty()) return "<p class=\"note\">No stage started: nothing to draw.</p>\n";
  if (span <= 0) span = 1e-3;
  LaneLayout layout = MakeLanes(started);
  const TimeScale x_of{span};
  const double height = PlaceLanes(layout.lanes, layout.by_slot, x_of);
  std::string html =
      "<div class=\"legend\"><span><span class=\"sw ok\"></span>ran</span>"
      "<span><span class=\"sw cached\"></span>cache hit</span>"
      "<span><span class=\"sw failed\"></span>failed</span>"
      "<span><span class=\"sw retry\"></span>retried (attempt &gt; 1)</span>"
      "<span><span class=\"sw merged\"></span>short stages merged</span></div>\n";
  html += TimelineSvg(layout.lanes, span, height, x_of);
  if (!layout.note.empty()) html += "<p class=\"note\">" + HtmlEscape(layout.note) + ".</p>\n";
  return html;
}

std::string StageTable(const std::vector<StageView>& stages, const std::string& id) {
  std::ostringstream t;
  constexpr std::size_t kOpenUpTo = 100;
  t << "<details id=\"" << HtmlEscape(id) << "\"" << (stages.size() <= kOpenUpTo ? " open" : "")
    << "><summary>" << stages.size() << " stage" << (stages.size() == 1 ? "" : "s")
    << (stages.size() > kOpenUpTo ? " (click to show the table)" : "") << "</summary>\n";
  t << "<table class=\"stages\"><thead><tr><th class=\"num\">#</th><th>name</th><th>stage</th>"
       "<th>state</th><th>cached</th><th>executor</th><th>node</th><th class=\"num\">attempt</th>"
       "<th class=\"num\">start</th><th class=\"num\">wall</th><th class=\"num\">bytes out</th>"
       "<th>digest</th></tr></thead>\n<tbody>\n";
  for (std::size_t i = 0; i < stages.size(); ++i) {
    const StageView& v = stages[i];
    const bool ran = v.state == "succeeded";
    std::string cls = "stage";
    if (v.state == "failed") cls += " failed";
    if (v.cached) cls += " cached";
    t << "<tr class=\"" << cls << "\"><td class=\"num\">" << i + 1 << "</td><td>"
      << HtmlEscape(v.name) << "</td><td><code>" << HtmlEscape(v.stage)
      << "</code></td><td class=\"st-" << HtmlEscape(v.state) << "\">" << HtmlEscape(v.state)
      << "</td><td>" << (v.cached ? "yes" : "") << "</td><td>" << HtmlEscape(v.executor)
      << "</td><td>" << HtmlEscape(v.node.empty() ? v.host : v.node) << "</td><td class=\"num\">"
      << (v.has_stats ? std::to_string(v.attempt) : "") << "</td><td class=\"num\">"
      << (v.started ? Format("%.3f", v.start) : "") << "</td><td class=\"num\">"
      << (v.started ? Seconds(v.end - v.start) : "") << "</td><td class=\"num\">"
      << (ran ? util::HumanBytes(v.bytes_out) : "") << "</td><td><code title=\""
      << HtmlEscape(v.digest) << "\">" << HtmlEscape(ShortDigest(v.digest))
      << "</code></td></tr>\n";
    if (!v.error.empty()) {
      t << "<tr class=\"errrow\"><td></td><td colspan=\"11\">" << HtmlEscape(v.error)
        << "</td></tr>\n";
    }
  }
  t << "</tbody></table></details>\n";
  return t.str();
}

std::string CostSection(const CostEstimate& cost) {
  std::string h = "<section id=\"cost\"><h2>Cost</h2>\n<table class=\"kv\">\n";
  std::string list;
  for (const auto& [type, count] : cost.node_types) {
    list += (list.empty() ? "" : ", ") + HtmlEscape(type) + " \xC3\x97 " + std::to_string(count);
  }
  h += KvRow("node types", list);
  h += KvRow("price", Format("$%.4f per hour", cost.usd_per_hour));
  h += KvRow("priced time", HtmlEscape(Seconds(cost.wall_s)));
  h += KvRow("estimated cost", "<b>" + Format("$%.6f", cost.estimated_usd) + "</b>");
  if (cost.budget_usd) h += KvRow("budget", Format("$%.2f", *cost.budget_usd));
  h += "</table>\n<p class=\"note\">Node prices times the run's wall time; spot workers are priced "
       "at their cap.</p></section>\n";
  return h;
}

// Summary cards, details, the error, the timeline and the stage table of one run.
std::string RunBody(const RunRecord& run, const std::string& id) {
  const std::vector<StageView> stages = Stages(run);
  const Counts c = Count(stages);
  const std::string& status = run.status;
  std::string h =
      "<section id=\"" + HtmlEscape(id) + "-summary\" class=\"summary\">\n<div class=\"cards\">";
  h += Card("status", status, status == "succeeded" ? "ok" : "bad");
  h += Card("executor", run.executor);
  h += Card("wall time", Seconds(run.wall_s));
  h += Card("stages", std::to_string(c.total));
  h += Card("ran", std::to_string(c.ran));
  h += Card("cached", std::to_string(c.cached));
  h += Card("failed", std::to_string(c.failed), c.failed > 0 ? "bad" : "");
  h += Card("not run", std::to_string(c.not_run + c.other));
  h += Card("bytes out", util::HumanBytes(c.bytes_out));
  h += "</div>\n<table class=\"kv\">\n";
  h += KvRow("pipeline", HtmlEscape(run.pipeline));
  h += KvRow("file", "<code>" + HtmlEscape(run.file) + "</code>");
  h += KvRow("outputs", "<code>" + HtmlEscape(run.out_dir) + "</code>");
  h += KvRow("jobs", std::to_string(run.jobs));
  if (!run.job.name.empty()) h += KvRow("job", HtmlEscape(run.job.name));
  if (c.cached > 0) {
    h += KvRow("restored from cache", HtmlEscape(std::to_string(c.cached) + " stages, " +
                                                 util::HumanBytes(c.cached_bytes)));
  }
  const Json& ray = run.executor_details;
  if (run.executor == "ray" && ray.is_object()) {
    const Json& nodes = Obj(ray, "nodes");
    h += KvRow("ray cluster", "<code>" + HtmlEscape(Str(ray, "address")) + "</code>, " +
                                  std::to_string(nodes.is_array() ? nodes.size() : 0) + " node(s)" +
                                  (Bool(ray, "private_head") ? ", private head" : ""));
  }
  if (run.artifacts) {
    h += KvRow("artifacts",
               "<code>" + HtmlEscape(run.artifacts->uri) + "</code>" +
                   (run.artifacts->synced.value_or(false) ? " (synced)" : " (not synced)"));
  }
  h += "</table>\n";
  if (run.error) {
    std::string text = run.error->message;
    const std::string failed = run.failed_stage.value_or("");
    if (!failed.empty() && text.find("'" + failed + "'") == std::string::npos) {
      text = "stage " + failed + ": " + text;
    }
    h += "<div class=\"err\" id=\"" + HtmlEscape(id) + "-error\">" + HtmlEscape(run.error->code) +
         ": " + HtmlEscape(text) + "</div>\n";
  }
  h += "</section>\n";
  h += "<section id=\"" + HtmlEscape(id) + "-timeline\"><h3>Timeline</h3>\n" +
       Timeline(stages, run.wall_s) + "</section>\n";
  h += "<section id=\"" + HtmlEscape(id) + "-stages\"><h3>Stages</h3>\n" +
       StageTable(stages, id + "-table") + "</section>\n";
  return h;
}

std::string ParitySection(const ParityDocument& doc) {
  const std::vector<std::string>& executors = doc.executors;
  std::size_t identical = 0, total = 0;
  std::ostringstream rows;
  if (doc.outputs) {
    for (const ParityRow& row : *doc.outputs) {
      ++total;
      const bool same = row.result == "identical";
      identical += same ? 1 : 0;
      rows << "<tr class=\"parity " << (same ? "same" : "failed") << "\"><td>"
           << HtmlEscape(row.stage) << "</td><td><code>" << HtmlEscape(row.output)
           << "</code></td>";
      for (const std::string& e : executors) {
        auto it = row.digests.find(e);
        const std::string d = it != row.digests.end() ? it->second : "";
        rows << "<td><code title=\"" << HtmlEscape(d) << "\">" << HtmlEscape(ShortDigest(d))
             << "</code></td>";
      }
      rows << "<td class=\"" << (same ? "st-succeeded" : "st-failed") << "\">"
           << HtmlEscape(row.result);
      if (row.first_difference) rows << " at byte " << *row.first_difference;
      rows << "</td></tr>\n";
    }
  }
  std::string joined;
  for (const std::string& e : executors) joined += (joined.empty() ? "" : ", ") + e;
  std::string h = "<section id=\"parity\"><h2>Parity</h2>\n<div class=\"cards\">";
  const std::string& status = doc.status;
  h += Card("parity", status, status == "identical" ? "ok" : "bad");
  h += Card("executors", std::to_string(executors.size()));
  h += Card("outputs", std::to_string(total));
  h += Card("identical", std::to_string(identical));
  h += Card("differ", std::to_string(total - identical), total > identical ? "bad" : "");
  h += "</div>\n";
  if (total == 0) {
    h += "<p class=\"note\">No outputs were compared: a run failed before the comparison.</p>\n";
  } else {
    h += "<p class=\"note\">Digests (first 12 hex digits of the SHA-256) of every output under " +
         HtmlEscape(joined) +
         ".</p>\n<table class=\"parity\"><thead><tr><th>stage</th><th>output</th>";
    for (const std::string& e : executors) h += "<th>" + HtmlEscape(e) + "</th>";
    h += "<th>result</th></tr></thead>\n<tbody>\n" + rows.str() + "</tbody></table>\n";
  }
  h += "</section>\n";
  return h;
}

std::string Page(const std::string& title, const std::string& subtitle, const std::string& body) {
  return "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
         "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
         "<meta name=\"generator\" content=\"stagekit " STAGEKIT_VERSION "\">\n<title>" +
         HtmlEscape(title) + "</title>\n<style>" + kCss +
         "</style>\n</head>\n<body>\n<main>\n<h1>" + HtmlEscape(title) +
         "</h1>\n<p class=\"sub\">" + HtmlEscape(subtitle) + "</p>\n" + body +
         "<footer>Made by stagekit " STAGEKIT_VERSION
         " from the run's record. Open the trace (<code>--trace</code>) in Perfetto or "
         "chrome://tracing for every detail.</footer>\n</main>\n</body>\n</html>\n";
}

}  // namespace

std::string HtmlEscape(std::string_view text) {
  std::string out;
  out.reserve(text.size() + text.size() / 8);
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

bool IsRunSummary(const Json& doc) {
  return doc.is_object() && doc.contains("stages") && doc["stages"].is_array();
}

bool IsParityDocument(const Json& doc) {
  return doc.is_object() && doc.contains("runs") && doc["runs"].is_object() &&
         doc.contains("executors") && doc["executors"].is_array();
}

Result<ReportSource> ReportSourceFromJson(const Json& doc) {
  if (doc.is_object() && (doc.contains("runs") || doc.contains("executors"))) {
    auto parity = ParityDocument::FromJson(doc);
    if (!parity.ok()) return parity.status();
    return ReportSource(std::move(parity).value());
  }
  if (doc.is_object() && (doc.contains("stages") || doc.contains("pipeline"))) {
    auto run = RunRecord::FromJson(doc);
    if (!run.ok()) return run.status();
    return ReportSource(std::move(run).value());
  }
  return Status(Code::kInputError,
                "neither a run summary (.stagekit-run.json) nor `stagekit parity --json` output");
}

Result<ReportSource> LoadReportSource(const fs::path& path) {
  std::error_code ec;
  fs::path file = path;
  if (fs::is_directory(path, ec)) file = path / ".stagekit-run.json";
  if (!fs::exists(file, ec)) {
    return Status(Code::kInputError, file.string() +
                                         " does not exist; give a run's output directory (with its "
                                         ".stagekit-run.json) or a summary JSON file");
  }
  // A run record of 100,000 stages is about 100 MB: 1 GiB is far past any.
  util::JsonLimits limits;
  limits.max_bytes = std::size_t{1} << 30;
  const auto size = fs::file_size(file, ec);
  if (!ec && size > limits.max_bytes) {
    return Status(Code::kInputError, file.string() + " is " + std::to_string(size) +
                                         " bytes; a run record is read up to 1 GiB");
  }
  auto text = util::ReadFile(file, limits.max_bytes);
  if (!text.ok()) return text.status();
  auto parsed = util::ParseJsonWithin(*text, file.string(), Code::kInputError, limits);
  if (!parsed.ok()) return parsed.status();
  auto source = ReportSourceFromJson(*parsed);
  if (!source.ok()) {
    // "FILE is neither ..." / "FILE: run record: stages[2]: 'state' must be a string".
    const std::string& why = source.status().message();
    return Status(Code::kInputError,
                  file.string() + (why.rfind("neither ", 0) == 0 ? " is " : ": ") + why);
  }
  return source;
}

Json ChromeTrace(const RunRecord& run) {
  Json events = Json::array();
  int next_pid = 1;
  AddRunEvents(run, "", next_pid, events);
  Json other = RunInfo(run);
  other["generator"] = "stagekit " STAGEKIT_VERSION;
  return Json{{"traceEvents", std::move(events)}, {"displayTimeUnit", "ms"}, {"otherData", other}};
}

Json ChromeTrace(const ParityDocument& doc) {
  Json events = Json::array();
  int next_pid = 1;
  Json runs = Json::object();
  for (const std::string& e : doc.executors) {
    auto it = doc.runs.find(e);
    if (it == doc.runs.end()) continue;
    AddRunEvents(it->second, "[" + e + "] ", next_pid, events);
    runs[e] = RunInfo(it->second);
  }
  Json other = {{"parity", doc.status}, {"runs", runs}};
  other["generator"] = "stagekit " STAGEKIT_VERSION;
  return Json{{"traceEvents", std::move(events)}, {"displayTimeUnit", "ms"}, {"otherData", other}};
}

Json ChromeTrace(const ReportSource& source) {
  return std::visit([](const auto& doc) { return ChromeTrace(doc); }, source);
}

std::string HtmlReport(const ParityDocument& doc) {
  std::string pipeline;
  std::string body = ParitySection(doc);
  for (const std::string& name : doc.executors) {
    auto it = doc.runs.find(name);
    if (it == doc.runs.end()) continue;
    const RunRecord& run = it->second;
    if (pipeline.empty()) pipeline = run.pipeline;
    body += "<section id=\"run-" + HtmlEscape(name) + "\"><h2>Run: " + HtmlEscape(name) +
            "</h2>\n" + RunBody(run, "run-" + name) + "</section>\n";
  }
  return Page("stagekit parity: " + pipeline, "Outputs compared across executors; " + doc.status,
              body);
}

std::string HtmlReport(const RunRecord& run) {
  std::string body = "<h2>Summary</h2>\n" + RunBody(run, "run");
  if (run.cost) body += CostSection(*run.cost);
  return Page("stagekit run: " + run.pipeline, run.executor + " executor, " + run.status, body);
}

std::string HtmlReport(const ReportSource& source) {
  return std::visit([](const auto& doc) { return HtmlReport(doc); }, source);
}

namespace {

template <typename Doc>
Status WriteReportsOf(const Doc& doc, const fs::path& trace, const fs::path& html) {
  auto write = [](const fs::path& path, const std::string& text) -> Status {
    std::error_code ec;
    if (!path.parent_path().empty()) fs::create_directories(path.parent_path(), ec);
    return util::WriteFileAtomically(path, text);
  };
  if (!trace.empty()) {
    if (Status s = write(
            trace, ChromeTrace(doc).dump(-1, ' ', false, Json::error_handler_t::replace) + "\n");
        !s.ok())
      return s;
  }
  if (!html.empty()) {
    if (Status s = write(html, HtmlReport(doc)); !s.ok()) return s;
  }
  return OkStatus();
}

}  // namespace

Status WriteReports(const RunRecord& run, const fs::path& trace, const fs::path& html) {
  return WriteReportsOf(run, trace, html);
}

Status WriteReports(const ParityDocument& doc, const fs::path& trace, const fs::path& html) {
  return WriteReportsOf(doc, trace, html);
}

Status WriteReports(const ReportSource& source, const fs::path& trace, const fs::path& html) {
  return std::visit([&](const auto& doc) { return WriteReportsOf(doc, trace, html); }, source);
}

}  // namespace stagekit::analyse
