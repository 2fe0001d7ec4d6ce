// The typed run record and parity document: round trips, strict reading
// (missing, renamed and mistyped fields, newer versions, records written
// before versions), and the records the command line really writes.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <variant>

#include "analyse/report.h"
#include "analyse/run_record.h"
#include "unit/test_util.h"

namespace stagekit::analyse {

namespace {

namespace fs = std::filesystem;
using stagekit::testing::ReadFile;
using stagekit::testing::RunCli;
using stagekit::testing::Show;
using stagekit::testing::TempDir;
using stagekit::testing::WriteFile;

RunStats Stats(const std::string& node, std::uint64_t bytes) {
  RunStats s;
  s.stage = "demo.stage";
  s.executor = "ray";
  s.attempt = 2;
  s.host = "10.0.0.1";
  s.node = node;
  s.wall_s = 0.25;
  s.bytes_in = 3;
  s.bytes_out = bytes;
  s.output_digest = "sha256:0123456789abcdef";
  s.metrics = {{"rows", 12}};
  s.artifact = {{"uri", "s3://b/p/a.txt"}, {"node", node}, {"seconds", 0.5}};
  return s;
}

// A record with every optional field set: a failed Ray run with artifacts and a cost.
RunRecord FullRecord() {
  RunRecord r;
  r.pipeline = "demo";
  r.file = "/p/pipeline.yaml";
  r.executor = "ray";
  r.jobs = 4;
  r.out_dir = "/p/out";
  r.status = "failed";
  r.error = RecordError{"stage_failed", "stage 'b' (demo.stage) failed: boom"};
  r.failed_stage = "b";
  r.wall_s = 12.5;
  r.job.name = "demo-job";
  r.job.seed = 7;
  r.job.params = {{"n", 3}};
  r.data.by_node["10.0.0.1:5001"] = NodeBytes{1, 100, 100, std::uint64_t{100}};
  r.data.by_node["10.0.0.2:5001"] = NodeBytes{0, 0, 0, std::nullopt};
  r.data.outputs_fetched = 1;
  r.data.bytes_fetched = 100;
  r.data.bytes_uploaded_from_nodes = 100;
  StageRecord a;
  a.name = "a";
  a.stage = "demo.stage";
  a.state = "succeeded";
  a.output = "/p/out/a.txt";
  a.resources = {{"cpus", 1.0}, {"gpus", 0.0}, {"memory_bytes", 0}, {"custom", Json::object()}};
  a.timeout_s = 30.0;
  a.stats = Stats("10.0.0.1:5001", 100);
  a.start_s = 0.5;
  a.end_s = 1.25;
  a.slot = 0;
  StageRecord b = a;
  b.name = "b";
  b.state = "failed";
  b.stats.reset();
  b.timeout_s.reset();
  b.slot = 1;
  b.error = RecordError{"stage_failed", "boom"};
  StageRecord c = b;
  c.name = "c";
  c.state = "not_run";
  c.fetched = false;
  c.cached = true;
  c.start_s.reset();
  c.end_s.reset();
  c.slot.reset();
  c.error.reset();
  r.stages = {a, b, c};
  r.outputs = "final";
  r.started_executor = true;
  ArtifactsRecord artifacts;
  artifacts.uri = "s3://b/p";
  artifacts.from_nodes = ArtifactsRecord::FromNodes{1, 100, 0};
  artifacts.synced = false;
  artifacts.seconds = 0.75;
  artifacts.error = "access denied";
  r.artifacts = artifacts;
  CostEstimate cost;
  cost.node_types = {{"g4dn.xlarge", 2}, {"head", 1}};
  cost.usd_per_hour = 1.5;
  cost.wall_s = 12.5;
  cost.estimated_usd = 0.0052;
  cost.budget_usd = 10.0;
  r.cost = cost;
  r.executor_details = {{"address", "10.0.0.1:6379"}, {"private_head", false}, {"nodes", {1, 2}}};
  return r;
}

// The fewest fields: a run of one stage that never started.
RunRecord MinimalRecord() {
  RunRecord r;
  r.pipeline = "p";
  r.executor = "inprocess";
  r.status = "succeeded";
  StageRecord s;
  s.name = "only";
  s.stage = "x";
  s.state = "not_run";
  r.stages.push_back(s);
  return r;
}

// As a file holds it: written, then parsed.
Json Written(const Json& j) { return Json::parse(j.dump(2)); }

std::string ErrorOf(const Json& j) {
  auto r = RunRecord::FromJson(j);
  if (r.ok()) return "(read without error)";
  EXPECT_EQ(r.status().code(), Code::kInputError) << r.status().message();
  return r.status().message();
}

std::string ParityErrorOf(const Json& j) {
  auto r = ParityDocument::FromJson(j);
  if (r.ok()) return "(read without error)";
  EXPECT_EQ(r.status().code(), Code::kInputError) << r.status().message();
  return r.status().message();
}

TEST(RunRecord, FullRecordRoundTrips) {
  const Json first = FullRecord().ToJson();
  EXPECT_EQ(first["version"], 1);
  auto read = RunRecord::FromJson(Written(first));
  ASSERT_TRUE(read.ok()) << read.status().message();
  EXPECT_EQ(read->ToJson(), first);
  // The typed fields hold what was written.
  ASSERT_EQ(read->stages.size(), 3u);
  EXPECT_EQ(read->stages[0].stats->bytes_out, 100u);
  EXPECT_EQ(read->stages[0].stats->artifact["node"], "10.0.0.1:5001");
  EXPECT_EQ(read->stages[0].timeout_s, 30.0);
  EXPECT_EQ(read->stages[1].error->message, "boom");
  EXPECT_FALSE(read->stages[2].start_s.has_value());
  EXPECT_TRUE(read->stages[2].cached);
  EXPECT_FALSE(read->stages[2].fetched);
  EXPECT_EQ(read->failed_stage, "b");
  EXPECT_EQ(read->job.seed, 7u);
  EXPECT_EQ(read->data.by_node.at("10.0.0.1:5001").bytes_uploaded, 100u);
  EXPECT_FALSE(read->data.by_node.at("10.0.0.2:5001").bytes_uploaded.has_value());
  EXPECT_EQ(read->artifacts->from_nodes->bytes, 100u);
  EXPECT_EQ(read->artifacts->error, "access denied");
  EXPECT_EQ(read->cost->node_types.at("g4dn.xlarge"), 2);
  EXPECT_EQ(read->cost->budget_usd, 10.0);
  EXPECT_EQ(read->executor_details["address"], "10.0.0.1:6379");
  EXPECT_EQ(read->outputs, "final");
  EXPECT_EQ(read->started_executor, true);
  // The executor's details are written under its name.
  EXPECT_EQ(first["ray"]["address"], "10.0.0.1:6379");
}

TEST(RunRecord, MinimalRecordRoundTripsWithNullsAndNoOptionalKeys) {
  const Json first = MinimalRecord().ToJson();
  for (const char* key : {"outputs", "started_executor", "artifacts", "cost", "inprocess"}) {
    EXPECT_FALSE(first.contains(key)) << key;
  }
  EXPECT_TRUE(first["error"].is_null());
  EXPECT_TRUE(first["failed_stage"].is_null());
  for (const char* key : {"timeout_s", "stats", "start_s", "end_s", "slot", "error"}) {
    EXPECT_TRUE(first["stages"][0][key].is_null()) << key;
  }
  auto read = RunRecord::FromJson(Written(first));
  ASSERT_TRUE(read.ok()) << read.status().message();
  EXPECT_EQ(read->ToJson(), first);
  EXPECT_FALSE(read->artifacts.has_value());
  EXPECT_FALSE(read->cost.has_value());
  EXPECT_TRUE(read->executor_details.is_null());
}

TEST(RunRecord, NullableFieldsMayAlsoBeAbsent) {
  Json j = Written(FullRecord().ToJson());
  for (const char* key : {"error", "failed_stage", "outputs", "artifacts", "cost", "ray"}) {
    j.erase(key);
  }
  for (const char* key : {"timeout_s", "stats", "start_s", "end_s", "slot", "error"}) {
    j["stages"][1].erase(key);
  }
  auto read = RunRecord::FromJson(j);
  ASSERT_TRUE(read.ok()) << read.status().message();
  EXPECT_FALSE(read->error.has_value());
  EXPECT_FALSE(read->stages[1].slot.has_value());
  EXPECT_TRUE(read->executor_details.is_null());
}

TEST(RunRecord, ARecordWithoutAVersionIsVersionOne) {
  Json j = Written(FullRecord().ToJson());
  j.erase("version");
  auto read = RunRecord::FromJson(j);
  ASSERT_TRUE(read.ok()) << read.status().message();
  j["version"] = 1;
  EXPECT_EQ(read->ToJson(), j);
}

TEST(RunRecord, ANewerVersionIsRefused) {
  Json j = Written(MinimalRecord().ToJson());
  j["version"] = 2;
  EXPECT_EQ(ErrorOf(j),
            "run record: written by a newer stagekit (schema version 2; this one reads up to 1)");
  j["version"] = "1";
  EXPECT_EQ(ErrorOf(j), "run record: 'version' must be a positive integer");
  j["version"] = 0;
  EXPECT_EQ(ErrorOf(j), "run record: 'version' must be a positive integer");
}

TEST(RunRecord, AMissingOrRenamedFieldIsNamed) {
  const Json good = Written(FullRecord().ToJson());
  Json j = good;
  j.erase("wall_s");
  EXPECT_EQ(ErrorOf(j), "run record: missing required field 'wall_s'");
  j = good;
  j["stage_list"] = j["stages"];
  j.erase("stages");
  EXPECT_EQ(ErrorOf(j), "run record: missing required field 'stages'");
  j = good;
  j["stages"][2]["status"] = j["stages"][2]["state"];
  j["stages"][2].erase("state");
  EXPECT_EQ(ErrorOf(j), "run record: stages[2]: missing required field 'state'");
  j = good;
  j["data"].erase("bytes_fetched");
  EXPECT_EQ(ErrorOf(j), "run record: data: missing required field 'bytes_fetched'");
  j = good;
  j["stages"][0]["stats"].erase("output_digest");
  EXPECT_EQ(ErrorOf(j), "run record: stages[0]: stats: missing required field 'output_digest'");
  j = good;
  j["artifacts"].erase("uri");
  EXPECT_EQ(ErrorOf(j), "run record: artifacts: missing required field 'uri'");
}

TEST(RunRecord, AFieldOfTheWrongTypeIsNamed) {
  const Json good = Written(FullRecord().ToJson());
  Json j = good;
  j["stages"][2]["state"] = 3;
  EXPECT_EQ(ErrorOf(j), "run record: stages[2]: 'state' must be a string");
  j = good;
  j["stages"][0]["slot"] = "zero";
  EXPECT_EQ(ErrorOf(j), "run record: stages[0]: 'slot' must be an integer or null");
  j = good;
  j["stages"][0]["cached"] = nullptr;
  EXPECT_EQ(ErrorOf(j), "run record: stages[0]: 'cached' must be true or false, not null");
  j = good;
  j["stages"][0]["stats"]["bytes_out"] = "many";
  EXPECT_EQ(ErrorOf(j), "run record: stages[0]: stats: 'bytes_out' must be a non-negative integer");
  j = good;
  j["stages"] = Json::object();
  EXPECT_EQ(ErrorOf(j), "run record: 'stages' must be an array");
  j = good;
  j["stages"][1] = "b";
  EXPECT_EQ(ErrorOf(j), "run record: stages[1]: must be a JSON object");
  j = good;
  j["jobs"] = 2.5;
  EXPECT_EQ(ErrorOf(j), "run record: 'jobs' must be an integer");
  j = good;
  j["error"] = "boom";
  EXPECT_EQ(ErrorOf(j), "run record: 'error' must be a JSON object or null");
  j = good;
  j["data"]["by_node"]["10.0.0.1:5001"]["bytes_uploaded"] = -1;
  EXPECT_EQ(ErrorOf(j),
            "run record: data: by_node: '10.0.0.1:5001': 'bytes_uploaded' must be a non-negative "
            "integer or null");
  j = good;
  j["cost"]["node_types"]["head"] = "one";
  EXPECT_EQ(ErrorOf(j), "run record: cost: node_types: 'head' must be an integer");
  j = good;
  j["ray"] = "10.0.0.1:6379";
  EXPECT_EQ(ErrorOf(j), "run record: 'ray' must be a JSON object or null");
  j = good;
  j["job"]["seed"] = -1;
  EXPECT_EQ(ErrorOf(j), "run record: job: 'seed' must be a non-negative integer");
  EXPECT_EQ(ErrorOf(Json::array()), "run record: must be a JSON object");
}

ParityDocument Parity() {
  ParityDocument doc;
  doc.status = "mismatch";
  doc.executors = {"inprocess", "ray"};
  ParityRow same{"a",          "a.txt",      {{"inprocess", "sha256:aa"}, {"ray", "sha256:aa"}},
                 std::nullopt, std::nullopt, "identical"};
  ParityRow differs{"b", "b.txt",      {{"inprocess", "sha256:bb"}, {"ray", "sha256:cc"}},
                    17,  std::nullopt, "DIFFERS"};
  ParityRow changed{"c",
                    "c.txt",
                    {{"inprocess", "sha256:dd"}, {"ray", "sha256:dd"}},
                    std::nullopt,
                    std::string("ray"),
                    "CHANGED"};
  doc.outputs = std::vector<ParityRow>{same, differs, changed};
  RunRecord local = MinimalRecord();
  doc.runs["inprocess"] = local;
  doc.runs["ray"] = FullRecord();
  return doc;
}

TEST(ParityDocument, RoundTripsAndReadsItsRows) {
  const Json first = Parity().ToJson();
  EXPECT_EQ(first["version"], 1);
  EXPECT_EQ(first["outputs"][1]["digests"]["first_difference"], 17);
  EXPECT_EQ(first["outputs"][2]["digests"]["changed_after_run"], "ray");
  EXPECT_EQ(first["runs"]["ray"]["version"], 1);
  auto read = ParityDocument::FromJson(Written(first));
  ASSERT_TRUE(read.ok()) << read.status().message();
  EXPECT_EQ(read->ToJson(), first);
  ASSERT_EQ(read->outputs->size(), 3u);
  EXPECT_EQ((*read->outputs)[1].first_difference, 17);
  EXPECT_EQ((*read->outputs)[1].digests.size(), 2u);  // the executors' digests only
  EXPECT_EQ((*read->outputs)[2].changed_after_run, "ray");
  EXPECT_EQ(read->runs.at("ray").cost->usd_per_hour, 1.5);
}

TEST(ParityDocument, AFailedRunHasNoOutputs) {
  ParityDocument doc = Parity();
  doc.status = "failed";
  doc.outputs.reset();
  doc.runs.erase("ray");
  const Json first = doc.ToJson();
  EXPECT_FALSE(first.contains("outputs"));
  auto read = ParityDocument::FromJson(Written(first));
  ASSERT_TRUE(read.ok()) << read.status().message();
  EXPECT_FALSE(read->outputs.has_value());
  EXPECT_EQ(read->ToJson(), first);
}

TEST(ParityDocument, StrictErrorsNameTheRunAndTheField) {
  const Json good = Written(Parity().ToJson());
  Json j = good;
  j["runs"]["ray"]["stages"][0]["state"] = false;
  EXPECT_EQ(ParityErrorOf(j), "parity document: runs: 'ray': stages[0]: 'state' must be a string");
  j = good;
  j["runs"]["ray"]["version"] = 9;
  EXPECT_EQ(ParityErrorOf(j),
            "parity document: runs: 'ray': written by a newer stagekit (schema version 9; this "
            "one reads up to 1)");
  j = good;
  j["version"] = 3;
  EXPECT_EQ(ParityErrorOf(j),
            "parity document: written by a newer stagekit (schema version 3; this one reads up "
            "to 1)");
  j = good;
  j["executors"][1] = 2;
  EXPECT_EQ(ParityErrorOf(j), "parity document: executors[1] must be a string");
  j = good;
  j["outputs"][1]["digests"]["first_difference"] = "17";
  EXPECT_EQ(ParityErrorOf(j),
            "parity document: outputs[1]: digests: 'first_difference' must be an integer");
  j = good;
  j.erase("runs");
  EXPECT_EQ(ParityErrorOf(j), "parity document: missing required field 'runs'");
  j = good;
  j.erase("version");
  EXPECT_TRUE(ParityDocument::FromJson(j).ok());
}

TEST(ReportSource, LoadingNamesTheFileAndTheField) {
  TempDir tmp;
  Json j = Written(FullRecord().ToJson());
  j["stages"][2]["state"] = 3;
  WriteFile(tmp / "out/.stagekit-run.json", j.dump());
  auto loaded = LoadReportSource(tmp / "out");
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), Code::kInputError);
  EXPECT_EQ(loaded.status().message(), (tmp / "out/.stagekit-run.json").string() +
                                           ": run record: stages[2]: 'state' must be a string");
  // A renamed key no longer reads as a default.
  j = Written(FullRecord().ToJson());
  j["stage_list"] = j["stages"];
  j.erase("stages");
  WriteFile(tmp / "renamed.json", j.dump());
  loaded = LoadReportSource(tmp / "renamed.json");
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().message(),
            (tmp / "renamed.json").string() + ": run record: missing required field 'stages'");
  WriteFile(tmp / "parity.json", Parity().ToJson().dump());
  loaded = LoadReportSource(tmp / "parity.json");
  ASSERT_TRUE(loaded.ok()) << loaded.status().message();
  EXPECT_TRUE(std::holds_alternative<ParityDocument>(*loaded));
}

// ---- what the command line writes ----

// Reads a record the CLI wrote and checks that it is read back whole.
void ExpectReadBack(const Json& written, const std::string& what) {
  EXPECT_EQ(written["version"], 1) << what;
  auto read = RunRecord::FromJson(written);
  ASSERT_TRUE(read.ok()) << what << ": " << read.status().message();
  EXPECT_EQ(read->ToJson(), written) << what;
}

TEST(RunRecordCli, EveryRecordTheCliWritesIsReadBack) {
  TempDir tmp;
  WriteFile(tmp / "in.txt", "payload\n");
  WriteFile(tmp / "ok.yaml", "name: t\nlibraries: [" STAGEKIT_TEST_STAGES
                             "]\njob: {name: j, seed: 3, params: {k: 1}}\nstages:\n"
                             "  - {name: a, stage: test.copy, inputs: {in: in.txt}, output: "
                             "a.txt, timeout: 30s}\n"
                             "  - {name: b, stage: test.copy, inputs: {in: {from: a}}}\n");
  WriteFile(tmp / "bad.yaml", "name: t\nlibraries: [" STAGEKIT_TEST_STAGES
                              "]\nstages:\n"
                              "  - {name: bad, stage: test.throws}\n"
                              "  - {name: after, stage: test.copy, inputs: {in: {from: bad}}}\n");
  const std::vector<std::string> common = {"--cache-dir", (tmp / "cache").string(), "--cost-log",
                                           (tmp / "cost.jsonl").string()};
  auto run = [&](std::vector<std::string> args) {
    args.insert(args.end(), common.begin(), common.end());
    return RunCli(args, tmp.path());
  };

  // Succeeded, priced, with a budget; then the same run restored from the cache.
  auto r = run({"run", "ok.yaml", "-o", "ok", "-q", "--price", "local=2", "--budget", "5"});
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  const Json ok = Json::parse(ReadFile(tmp / "ok/.stagekit-run.json"));
  ExpectReadBack(ok, "succeeded");
  EXPECT_EQ(ok["cost"]["budget_usd"], 5.0);
  EXPECT_EQ(ok["stages"][0]["timeout_s"], 30.0);
  r = run({"run", "ok.yaml", "-o", "ok", "--resume", "--json"});
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  const Json cached = Json::parse(ReadFile(tmp / "ok/.stagekit-run.json"));
  ExpectReadBack(cached, "cached");
  EXPECT_EQ(cached["stages"][1]["cached"], true);
  ExpectReadBack(Json::parse(r.out), "cached, --json");

  // Failed: an error, a failed stage and one that never ran.
  r = run({"run", "bad.yaml", "-o", "bad", "-j", "1", "--json"});
  ASSERT_EQ(r.exit_code, 1) << Show(r);
  const Json bad = Json::parse(ReadFile(tmp / "bad/.stagekit-run.json"));
  ExpectReadBack(bad, "failed");
  EXPECT_EQ(bad["failed_stage"], "bad");
  EXPECT_EQ(bad["stages"][0]["error"]["code"], "stage_failed");
  EXPECT_TRUE(bad["stages"][1]["start_s"].is_null());
  auto report = RunCli({"report", (tmp / "bad").string(), "--html", (tmp / "bad.html").string()});
  EXPECT_EQ(report.exit_code, 0) << Show(report);

  // Parity: the document and each run in it.
  r = RunCli({"parity", "ok.yaml", "--executors", "inprocess,subprocess", "-o", "par", "--json"},
             tmp.path());
  ASSERT_EQ(r.exit_code, 0) << Show(r);
  const Json parity = Json::parse(r.out.substr(r.out.find('{')));
  EXPECT_EQ(parity["version"], 1);
  auto doc = ParityDocument::FromJson(parity);
  ASSERT_TRUE(doc.ok()) << doc.status().message();
  EXPECT_EQ(doc->ToJson(), parity);
  EXPECT_EQ(doc->status, "identical");
  EXPECT_EQ(doc->runs.size(), 2u);
}

}  // namespace
}  // namespace stagekit::analyse
