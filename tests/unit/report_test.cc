// Run reports: the Chrome trace's structure (tracks, slices, cache, retry and
// failure marks), HTML escaping, which sections appear, a 1,000-stage run,
// loading summaries, and the CLI (`run --report/--trace`, `report`).
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "analyse/report.h"
#include "unit/test_util.h"

namespace stagekit::analyse {

namespace {

namespace fs = std::filesystem;
using stagekit::testing::ReadFile;
using stagekit::testing::RunCli;
using stagekit::testing::Show;
using stagekit::testing::TempDir;
using stagekit::testing::WriteFile;

Json Stats(const std::string& stage, const std::string& executor, const std::string& host,
           const std::string& node, int attempt, std::uint64_t bytes) {
  return {{"stage", stage},
          {"executor", executor},
          {"attempt", attempt},
          {"host", host},
          {"node", node},
          {"wall_s", 0.5},
          {"bytes_in", 10},
          {"bytes_out", bytes},
          {"output_digest", "sha256:0123456789abcdef0123456789abcdef"},
          {"metrics", Json::object()}};
}

Json Entry(const std::string& name, const std::string& state, Json stats, double start, double end,
           int slot, bool cached = false) {
  return {
      {"name", name},
      {"stage", "demo.stage"},
      {"state", state},
      {"output", name + ".out"},
      {"resources", {{"cpus", 1}, {"gpus", 0}, {"memory_bytes", 0}, {"custom", Json::object()}}},
      {"timeout_s", Json()},
      {"stats", std::move(stats)},
      {"cached", cached},
      {"fetched", true},
      {"start_s", start < 0 ? Json() : Json(start)},
      {"end_s", end < 0 ? Json() : Json(end)},
      {"slot", slot < 0 ? Json() : Json(slot)},
      {"error", Json()}};
}

Json Summary(const std::string& executor, Json stages, const std::string& status = "succeeded") {
  return {{"pipeline", "demo"},
          {"file", "/p/pipeline.yaml"},
          {"executor", executor},
          {"jobs", 2},
          {"out_dir", "/p/out"},
          {"status", status},
          {"error", Json()},
          {"failed_stage", Json()},
          {"wall_s", 3.0},
          {"job", {{"name", "demo-job"}}},
          {"data",
           {{"by_node", Json::object()},
            {"outputs_fetched", 0},
            {"bytes_fetched", 0},
            {"outputs_left_on_cluster", 0},
            {"bytes_left_on_cluster", 0},
            {"bytes_uploaded_from_nodes", 0}}},
          {"stages", std::move(stages)}};
}

// A local run: two slots on host "h1", a cache hit, a failure, a stage that never ran.
Json LocalRun() {
  Json stages = Json::array();
  stages.push_back(
      Entry("a", "succeeded", Stats("demo.stage", "inprocess", "h1", "h1", 1, 100), 0.0, 1.0, 0));
  stages.push_back(
      Entry("b", "succeeded", Stats("demo.stage", "inprocess", "h1", "h1", 1, 200), 0.5, 2.0, 1));
  stages.push_back(Entry("c", "succeeded", Stats("demo.stage", "ray", "elsewhere", "n9", 1, 300),
                         1.0, 1.0, 0, /*cached=*/true));
  Json failed = Entry("d", "failed", Json(), 2.0, 2.5, 0);
  failed["error"] = {{"code", "stage_failed"}, {"message", "boom <b>"}};
  stages.push_back(failed);
  stages.push_back(Entry("e", "not_run", Json(), -1, -1, -1));
  Json run = Summary("inprocess", stages, "failed");
  run["error"] = {{"code", "stage_failed"}, {"message", "stage 'd' failed: boom <b>"}};
  run["failed_stage"] = "d";
  return run;
}

// A Ray run over two nodes; stage r2 was retried by the Ray executor.
Json RayRun() {
  Json stages = Json::array();
  stages.push_back(Entry("r1", "succeeded",
                         Stats("demo.stage", "ray", "10.0.0.1", "10.0.0.1:5001", 1, 10), 0.0, 1.0,
                         0));
  stages.push_back(Entry("r2", "succeeded",
                         Stats("demo.stage", "ray", "10.0.0.2", "10.0.0.2:5001", 2, 20), 0.1, 2.0,
                         1));
  stages.push_back(Entry("r3", "succeeded",
                         Stats("demo.stage", "ray", "10.0.0.1", "10.0.0.1:5001", 1, 30), 1.0, 1.5,
                         1));
  return Summary("ray", stages);
}

// The typed document of a fixture, read as `stagekit report` reads a file.
ReportSource Doc(const Json& json) {
  auto doc = ReportSourceFromJson(Json::parse(json.dump()));
  EXPECT_TRUE(doc.ok()) << doc.status().message();
  if (!doc.ok()) return RunRecord{};
  return std::move(doc).value();
}

std::vector<Json> Events(const Json& trace, const std::string& ph) {
  std::vector<Json> out;
  for (const Json& e : trace["traceEvents"]) {
    if (e["ph"] == ph) out.push_back(e);
  }
  return out;
}

// pid -> process name and (pid, tid) -> thread name, from the metadata events.
struct Tracks {
  std::map<int, std::string> processes;
  std::map<std::pair<int, int>, std::string> threads;
};
Tracks TracksOf(const Json& trace) {
  Tracks t;
  for (const Json& m : Events(trace, "M")) {
    if (m["name"] == "process_name") t.processes[m["pid"].get<int>()] = m["args"]["name"];
    if (m["name"] == "thread_name") {
      t.threads[{m["pid"].get<int>(), m["tid"].get<int>()}] = m["args"]["name"];
    }
  }
  return t;
}

Json SliceNamed(const Json& trace, const std::string& name) {
  for (const Json& e : Events(trace, "X")) {
    if (e["name"] == name) return e;
  }
  ADD_FAILURE() << "no slice named " << name;
  return Json::object();
}

std::size_t Count(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (std::size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) {
    ++n;
  }
  return n;
}

// The sum of data-stages over the SVG's bars: how many stages the bars draw.
std::size_t StagesDrawn(const std::string& html) {
  std::size_t n = 0;
  const std::string key = "data-stages=\"";
  for (std::size_t at = html.find(key); at != std::string::npos; at = html.find(key, at + 1)) {
    n += std::stoul(html.substr(at + key.size()));
  }
  return n;
}

// ---- trace ----

TEST(ChromeTrace, EverySliceIsOnANamedProcessAndThread) {
  const Json trace = ChromeTrace(Doc(LocalRun()));
  ASSERT_TRUE(trace["traceEvents"].is_array());
  EXPECT_EQ(trace["displayTimeUnit"], "ms");
  EXPECT_EQ(trace["otherData"]["pipeline"], "demo");
  const Tracks tracks = TracksOf(trace);
  const std::vector<Json> slices = Events(trace, "X");
  ASSERT_EQ(slices.size(), 4u);  // e never started
  for (const Json& s : slices) {
    const int pid = s["pid"], tid = s["tid"];
    EXPECT_EQ(tracks.processes.count(pid), 1u) << s.dump();
    EXPECT_EQ(tracks.threads.count({pid, tid}), 1u) << s.dump();
    EXPECT_GE(s["dur"].get<double>(), 0) << s.dump();
    for (const char* key : {"stage", "executor", "bytes", "digest", "attempt"}) {
      EXPECT_TRUE(s["args"].contains(key)) << key << " in " << s.dump();
    }
  }
  // Microseconds since the run started.
  const Json b = SliceNamed(trace, "b");
  EXPECT_DOUBLE_EQ(b["ts"].get<double>(), 0.5e6);
  EXPECT_DOUBLE_EQ(b["dur"].get<double>(), 1.5e6);
  EXPECT_EQ(b["args"]["bytes"], 200);
  // Local executors: process = host, thread = slot.
  const Json a = SliceNamed(trace, "a");
  EXPECT_EQ(a["pid"], b["pid"]);
  EXPECT_NE(a["tid"], b["tid"]);
  EXPECT_EQ(tracks.processes.at(a["pid"]), "h1 (inprocess)");
  EXPECT_EQ(tracks.threads.at({a["pid"], a["tid"]}), "slot 0");
  EXPECT_EQ(tracks.threads.at({b["pid"], b["tid"]}), "slot 1");
}

TEST(ChromeTrace, MarksCacheHitsFailuresAndNothingForStagesThatNeverRan) {
  const Json trace = ChromeTrace(Doc(LocalRun()));
  const Tracks tracks = TracksOf(trace);
  const Json c = SliceNamed(trace, "c");
  EXPECT_EQ(c["cat"], "cached");
  EXPECT_EQ(c["cname"], "good");
  EXPECT_EQ(tracks.processes.at(c["pid"]), "cache hits");
  EXPECT_GT(c["dur"].get<double>(), 0);  // tiny, still visible
  EXPECT_LE(c["dur"].get<double>(), 1);
  EXPECT_EQ(c["args"]["cached"], true);
  const Json d = SliceNamed(trace, "d");
  EXPECT_EQ(d["cat"], "failed");
  EXPECT_EQ(d["args"]["error"], "boom <b>");
  EXPECT_EQ(tracks.processes.at(d["pid"]), "h1 (inprocess)");  // failed stages have no stats
  std::set<std::string> instants;
  for (const Json& i : Events(trace, "i")) {
    instants.insert(i["name"].get<std::string>() + "|" + i["cat"].get<std::string>());
    EXPECT_EQ(i["s"], "t");
  }
  EXPECT_EQ(instants, (std::set<std::string>{"cache hit: c|cached", "failed: d|failed"}));
  for (const Json& e : trace["traceEvents"]) {
    EXPECT_EQ(e["name"].get<std::string>().find(": e"), std::string::npos) << e.dump();
    EXPECT_NE(e["name"], "e") << "stage e never started";
  }
}

TEST(ChromeTrace, RayTracksAreNodesAndRetriesAreMarked) {
  const Json trace = ChromeTrace(Doc(RayRun()));
  const Tracks tracks = TracksOf(trace);
  std::set<std::string> names;
  for (const auto& [pid, name] : tracks.processes) names.insert(name);
  EXPECT_EQ(names, (std::set<std::string>{"node 10.0.0.1:5001", "node 10.0.0.2:5001"}));
  const Json r1 = SliceNamed(trace, "r1");
  const Json r3 = SliceNamed(trace, "r3");
  EXPECT_EQ(r1["pid"], r3["pid"]);  // one node, two slots
  EXPECT_NE(r1["tid"], r3["tid"]);
  const Json r2 = SliceNamed(trace, "r2 (attempt 2)");
  EXPECT_EQ(r2["cat"], "stage,retry");
  EXPECT_EQ(r2["args"]["attempt"], 2);
  EXPECT_EQ(r2["args"]["retries"], 1);
  EXPECT_NE(r2["pid"], r1["pid"]);
  std::vector<Json> instants = Events(trace, "i");
  ASSERT_EQ(instants.size(), 1u);
  EXPECT_EQ(instants[0]["cat"], "retry");
  EXPECT_EQ(instants[0]["pid"], r2["pid"]);
  EXPECT_EQ(r1["cat"], "stage");
}

TEST(ChromeTrace, ParityGivesEachExecutorItsOwnProcesses) {
  Json doc = {{"status", "identical"},
              {"executors", {"inprocess", "ray"}},
              {"outputs", Json::array()},
              {"runs", {{"inprocess", LocalRun()}, {"ray", RayRun()}}}};
  const Json trace = ChromeTrace(Doc(doc));
  std::set<std::string> names;
  for (const auto& [pid, name] : TracksOf(trace).processes) names.insert(name);
  EXPECT_EQ(names, (std::set<std::string>{"[inprocess] h1 (inprocess)", "[inprocess] cache hits",
                                          "[ray] node 10.0.0.1:5001", "[ray] node 10.0.0.2:5001"}));
  EXPECT_EQ(Events(trace, "X").size(), 7u);
  EXPECT_EQ(trace["otherData"]["parity"], "identical");
}

// ---- HTML ----

TEST(HtmlReport, EscapesEveryUserString) {
  EXPECT_EQ(HtmlEscape("<a href=\"x\">Tom & 'Jerry'</a>"),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; &#39;Jerry&#39;&lt;/a&gt;");
  Json run = LocalRun();
  run["pipeline"] = "<script>alert('p')</script>";
  run["stages"][0]["name"] = "<img src=x onerror=alert(1)>";
  run["stages"][3]["error"]["message"] = "</td><script>alert(2)</script>";
  run["out_dir"] = "/tmp/\"quoted\"";
  const std::string html = HtmlReport(Doc(run));
  EXPECT_EQ(Count(html, "<script"), 0u);
  EXPECT_EQ(Count(html, "<img"), 0u);
  EXPECT_NE(html.find("&lt;script&gt;alert(&#39;p&#39;)&lt;/script&gt;"), std::string::npos);
  EXPECT_NE(html.find("&lt;img src=x onerror=alert(1)&gt;"), std::string::npos);
  EXPECT_NE(html.find("&lt;/td&gt;&lt;script&gt;alert(2)&lt;/script&gt;"), std::string::npos);
  EXPECT_NE(html.find("/tmp/&quot;quoted&quot;"), std::string::npos);
}

TEST(HtmlReport, IsSelfContained) {
  const std::string html = HtmlReport(Doc(LocalRun()));
  EXPECT_EQ(html.rfind("<!DOCTYPE html>", 0), 0u);
  for (const char* external : {"<script", "<link", "src=", "href=", "@import", "url("}) {
    EXPECT_EQ(Count(html, external), 0u) << external;
  }
  EXPECT_EQ(Count(html, "<style>"), 1u);
  EXPECT_EQ(Count(html, "<svg class=\"timeline\""), 1u);
}

TEST(HtmlReport, SummaryTableAndTimelineOfARun) {
  const std::string html = HtmlReport(Doc(LocalRun()));
  EXPECT_EQ(Count(html, "<tr class=\"stage"), 5u);
  EXPECT_EQ(Count(html, "<tr class=\"stage failed\""), 1u);
  EXPECT_EQ(Count(html, "<tr class=\"stage cached\""), 1u);
  EXPECT_EQ(Count(html, "<tr class=\"errrow\""), 1u);
  EXPECT_EQ(StagesDrawn(html), 4u);  // every stage that started, none that did not
  EXPECT_EQ(Count(html, "class=\"bar failed"), 1u);
  EXPECT_EQ(Count(html, "class=\"bar cached"), 1u);
  EXPECT_EQ(Count(html, "<rect class=\"lane\""), 3u);  // h1 slot 0, h1 slot 1, cache slot 0
  EXPECT_NE(html.find("id=\"run-error\""), std::string::npos);
  EXPECT_NE(html.find("<div class=\"k\">cached</div><div class=\"v\">1</div>"), std::string::npos);
  EXPECT_NE(html.find("<div class=\"k\">not run</div><div class=\"v\">1</div>"), std::string::npos);
  EXPECT_NE(html.find("0123456789ab"), std::string::npos);  // short digest
  EXPECT_EQ(Count(html, "<title>a (demo.stage)"), 1u);      // a tooltip per bar
}

TEST(HtmlReport, CostAndParitySectionsOnlyWhenPresent) {
  Json run = LocalRun();
  std::string html = HtmlReport(Doc(run));
  EXPECT_EQ(html.find("id=\"cost\""), std::string::npos);
  EXPECT_EQ(html.find("id=\"parity\""), std::string::npos);
  run["cost"] = {{"node_types", {{"g4dn.xlarge", 2}}},
                 {"usd_per_hour", 1.5},
                 {"wall_s", 3.0},
                 {"estimated_usd", 0.00125}};
  html = HtmlReport(Doc(run));
  EXPECT_NE(html.find("id=\"cost\""), std::string::npos);
  EXPECT_NE(html.find("$0.001250"), std::string::npos);
  EXPECT_NE(html.find("g4dn.xlarge \xC3\x97 2"), std::string::npos);

  Json good = RayRun();
  good.erase("cost");
  Json doc = {{"status", "mismatch"},
              {"executors", {"inprocess", "ray"}},
              {"outputs",
               {{{"stage", "r1"},
                 {"output", "r1.out"},
                 {"digests",
                  {{"inprocess", "sha256:aaaaaaaaaaaaaaaa"}, {"ray", "sha256:aaaaaaaaaaaaaaaa"}}},
                 {"result", "identical"}},
                {{"stage", "r2"},
                 {"output", "r2.out"},
                 {"digests",
                  {{"inprocess", "sha256:bbbbbbbbbbbbbbbb"},
                   {"ray", "sha256:cccccccccccccccc"},
                   {"first_difference", 17}}},
                 {"result", "DIFFERS"}}}},
              {"runs", {{"inprocess", good}, {"ray", good}}}};
  ASSERT_TRUE(IsParityDocument(doc));
  html = HtmlReport(Doc(doc));
  EXPECT_NE(html.find("id=\"parity\""), std::string::npos);
  EXPECT_EQ(html.find("id=\"cost\""), std::string::npos);
  EXPECT_EQ(Count(html, "<tr class=\"parity same\""), 1u);
  EXPECT_EQ(Count(html, "<tr class=\"parity failed\""), 1u);
  EXPECT_NE(html.find("DIFFERS at byte 17"), std::string::npos);
  EXPECT_EQ(Count(html, "<svg class=\"timeline\""), 2u);  // one per executor's run
  EXPECT_NE(html.find("id=\"run-ray-timeline\""), std::string::npos);
}

TEST(HtmlReport, AThousandStagesOnSixtyFourSlotsGetOneLanePerNode) {
  Json stages = Json::array();
  const int kStages = 1000, kSlots = 64;
  for (int i = 0; i < kStages; ++i) {
    const int slot = i % kSlots;
    const double start = (i / kSlots) * 0.01;
    const std::string node = "10.0.0." + std::to_string(slot % 4);
    stages.push_back(Entry("s" + std::to_string(i), "succeeded",
                           Stats("demo.stage", "ray", node, node + ":5001", 1, 1000), start,
                           start + 0.009, slot));
  }
  Json run = Summary("ray", stages);
  run["wall_s"] = 0.16;
  const std::string html = HtmlReport(Doc(run));
  // 64 slot lanes are too many: one lane per node, one row per stage running
  // at once there (16), 6 px each.
  EXPECT_EQ(Count(html, "<rect class=\"lane\""), 4u);
  EXPECT_EQ(Count(html, "height=\"96\"/>"), 4u);
  EXPECT_EQ(StagesDrawn(html), static_cast<std::size_t>(kStages));
  EXPECT_EQ(Count(html, "<tr class=\"stage"), static_cast<std::size_t>(kStages));
  EXPECT_NE(html.find("<details id=\"run-table\">"), std::string::npos);  // collapsed
  EXPECT_LT(html.size(), 2u << 20);
}

TEST(HtmlReport, BackToBackTinyStagesMergeIntoOneBar) {
  Json stages = Json::array();
  // One stage of 1 s on slot 0; 1,000 stages of 0.5 ms back to back on slots 1 to 8.
  stages.push_back(
      Entry("long", "succeeded", Stats("demo.stage", "inprocess", "h", "h", 1, 1), 0.0, 1.0, 0));
  for (int i = 0; i < 1000; ++i) {
    const double start = (i / 8) * 0.0005;
    stages.push_back(Entry("t" + std::to_string(i), "succeeded",
                           Stats("demo.stage", "inprocess", "h", "h", 1, 1), start, start + 0.0005,
                           1 + i % 8));
  }
  Json run = Summary("inprocess", stages);
  run["wall_s"] = 1.0;
  const std::string html = HtmlReport(Doc(run));
  EXPECT_EQ(Count(html, "<rect class=\"lane\""), 9u);
  EXPECT_EQ(StagesDrawn(html), 1001u);
  EXPECT_EQ(Count(html, "<rect class=\"bar"), 9u);  // long, and one per busy slot
  EXPECT_EQ(Count(html, "<rect class=\"bar ok merged\" data-stages=\"125\""), 8u);
  EXPECT_NE(html.find("<title>125 stages (ok), 0.000 s to 0.06"), std::string::npos);
}

TEST(HtmlReport, ManyNodesShareTheLastLane) {
  Json stages = Json::array();
  for (int i = 0; i < 100; ++i) {
    stages.push_back(Entry("s" + std::to_string(i), "succeeded",
                           Stats("demo.stage", "ray", "h", "node" + std::to_string(i), 1, 1),
                           i * 0.1, i * 0.1 + 0.1, 0));
  }
  const std::string html = HtmlReport(Doc(Summary("ray", stages)));
  EXPECT_EQ(Count(html, "<rect class=\"lane\""), 40u);
  EXPECT_NE(html.find("other nodes"), std::string::npos);
  EXPECT_EQ(StagesDrawn(html), 100u);
}

// ---- files ----

TEST(ReportFiles, LoadsARunDirectoryOrAFileAndRejectsTheRest) {
  TempDir tmp;
  WriteFile(tmp / "out/.stagekit-run.json", LocalRun().dump());
  auto from_dir = LoadReportSource(tmp / "out");
  ASSERT_TRUE(from_dir.ok()) << from_dir.status().message();
  EXPECT_EQ(std::get<RunRecord>(*from_dir).pipeline, "demo");
  EXPECT_TRUE(LoadReportSource(tmp / "out/.stagekit-run.json").ok());
  EXPECT_EQ(LoadReportSource(tmp / "missing").status().code(), Code::kInputError);
  WriteFile(tmp / "bad.json", "{not json");
  EXPECT_EQ(LoadReportSource(tmp / "bad.json").status().code(), Code::kInputError);
  WriteFile(tmp / "other.json", "{\"hello\": 1}");
  auto other = LoadReportSource(tmp / "other.json");
  EXPECT_EQ(other.status().code(), Code::kInputError);
  EXPECT_NE(other.status().message().find("neither a run summary"), std::string::npos);
}

TEST(ReportFiles, WritesBothAtomicallyAndFailsCleanly) {
  TempDir tmp;
  ASSERT_TRUE(WriteReports(Doc(LocalRun()), tmp / "t/trace.json", tmp / "h/report.html").ok());
  const Json trace = Json::parse(ReadFile(tmp / "t/trace.json"));
  EXPECT_EQ(trace, ChromeTrace(Doc(LocalRun())));
  EXPECT_EQ(ReadFile(tmp / "h/report.html"), HtmlReport(Doc(LocalRun())));
  // A parent that is a file: nothing written, no temporary left behind.
  WriteFile(tmp / "file", "x");
  Status s = WriteReports(Doc(LocalRun()), {}, tmp / "file/report.html");
  EXPECT_EQ(s.code(), Code::kOutputError);
  EXPECT_EQ(stagekit::testing::ListFiles(tmp.path()),
            (std::vector<std::string>{"file", "h/report.html", "t/trace.json"}));
}

// ---- command line ----

TEST(ReportCli, RunWritesReportsAndReportRemakesThemFromTheRecord) {
  TempDir tmp;
  const std::string pipeline = std::string(STAGEKIT_SOURCE_DIR) + "/examples/trivial/pipeline.yaml";
  auto r = RunCli({"run", pipeline, "-o", (tmp / "out").string(), "--no-cache", "-q", "--report",
                   (tmp / "run.html").string(), "--trace", (tmp / "run.json").string()});
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  const std::string html = ReadFile(tmp / "run.html");
  EXPECT_EQ(Count(html, "<tr class=\"stage"), 1u);
  EXPECT_EQ(StagesDrawn(html), 1u);
  const Json trace = Json::parse(ReadFile(tmp / "run.json"));
  ASSERT_EQ(Events(trace, "X").size(), 1u);
  EXPECT_EQ(Events(trace, "X")[0]["name"], "trivial");

  r = RunCli({"report", (tmp / "out").string(), "--html", (tmp / "again.html").string(), "--trace",
              (tmp / "again.json").string()});
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  EXPECT_EQ(ReadFile(tmp / "again.html"), html);
  EXPECT_EQ(Json::parse(ReadFile(tmp / "again.json")), trace);

  r = RunCli({"report", (tmp / "out").string()});
  EXPECT_EQ(r.exit_code, 2) << Show(r);
  EXPECT_NE(r.err.find("--html"), std::string::npos) << r.err;
  r = RunCli({"report", (tmp / "nowhere").string(), "--html", (tmp / "x.html").string()});
  EXPECT_EQ(r.exit_code, 5) << Show(r);
  EXPECT_FALSE(fs::exists(tmp / "x.html"));
}

}  // namespace
}  // namespace stagekit::analyse
