#include "analyse/run_record.h"

#include <cstdint>
#include <string_view>
#include <utility>

#include "util/json_fields.h"

namespace stagekit::analyse {

namespace {

using util::FieldReader;

// Run records and parity documents are read strictly, as kInputError:
// "run record: stages[2]: 'state' must be a string".
FieldReader Reader(const Json& object, std::string where) {
  return FieldReader(object, std::move(where), Code::kInputError, FieldReader::Mode::kStrict);
}

template <typename T>
Json Nullable(const std::optional<T>& v) {
  return v ? Json(*v) : Json(nullptr);
}

// A message of a library FromJson, moved to `where`: "run stats: 'x' ..." -> "WHERE: 'x' ...".
Status Moved(const Status& s, std::string_view prefix, const std::string& where) {
  std::string message = s.message();
  if (message.rfind(prefix, 0) == 0) message = message.substr(prefix.size());
  return Status(Code::kInputError, where + ": " + message);
}

// Checks "version": absent is 1; newer than `supported` is refused.
Status CheckVersion(const Json& json, const std::string& what, int supported) {
  if (!json.is_object()) return Status(Code::kInputError, what + ": must be a JSON object");
  auto it = json.find("version");
  if (it == json.end()) return OkStatus();  // written before versions were recorded
  if (!FieldReader::IsInt(*it) || it->get<int>() < 1) {
    return Status(Code::kInputError, what + ": 'version' must be a positive integer");
  }
  const int version = it->get<int>();
  if (version > supported) {
    return Status(Code::kInputError, what + ": written by a newer stagekit (schema version " +
                                         std::to_string(version) + "; this one reads up to " +
                                         std::to_string(supported) + ")");
  }
  return OkStatus();
}

Json ErrorJson(const std::optional<RecordError>& e) {
  if (!e) return nullptr;
  return Json{{"code", e->code}, {"message", e->message}};
}

void ReadError(FieldReader& r, std::string_view key, std::optional<RecordError>& out) {
  if (const Json* e = r.OptObject(key)) {
    FieldReader er = Reader(*e, r.Inside(key));
    RecordError error;
    er.String("code", error.code);
    er.String("message", error.message);
    r.Take(er.status());
    if (er.ok()) out = std::move(error);
  }
}

Json StageJson(const StageRecord& s) {
  return Json{{"name", s.name},
              {"stage", s.stage},
              {"state", s.state},
              {"output", s.output},
              {"resources", s.resources},
              {"timeout_s", Nullable(s.timeout_s)},
              {"stats", s.stats ? s.stats->ToJson() : Json(nullptr)},
              {"cached", s.cached},
              {"fetched", s.fetched},
              {"start_s", Nullable(s.start_s)},
              {"end_s", Nullable(s.end_s)},
              {"slot", Nullable(s.slot)},
              {"error", ErrorJson(s.error)}};
}

Result<StageRecord> ReadStage(const Json& json, const std::string& where) {
  StageRecord s;
  FieldReader r = Reader(json, where);
  r.String("name", s.name);
  r.String("stage", s.stage);
  r.String("state", s.state);
  r.String("output", s.output);
  if (const Json* resources = r.Object("resources")) s.resources = *resources;
  r.Double("timeout_s", s.timeout_s);
  if (const Json* stats = r.OptObject("stats")) {
    auto parsed = RunStats::FromJson(*stats);
    if (parsed.ok()) {
      s.stats = std::move(parsed).value();
    } else {
      r.Take(Moved(parsed.status(), "run stats: ", r.Inside("stats")));
    }
  }
  r.Bool("cached", s.cached);
  r.Bool("fetched", s.fetched);
  r.Double("start_s", s.start_s);
  r.Double("end_s", s.end_s);
  r.Int("slot", s.slot);
  ReadError(r, "error", s.error);
  if (!r.ok()) return r.status();
  return s;
}

Json DataJson(const DataPlane& d) {
  Json by_node = Json::object();
  for (const auto& [name, n] : d.by_node) {
    Json node{{"stages", n.stages},
              {"bytes_produced", n.bytes_produced},
              {"bytes_fetched", n.bytes_fetched}};
    if (n.bytes_uploaded) node["bytes_uploaded"] = *n.bytes_uploaded;
    by_node[name] = std::move(node);
  }
  return Json{{"by_node", std::move(by_node)},
              {"outputs_fetched", d.outputs_fetched},
              {"bytes_fetched", d.bytes_fetched},
              {"outputs_left_on_cluster", d.outputs_left_on_cluster},
              {"bytes_left_on_cluster", d.bytes_left_on_cluster},
              {"bytes_uploaded_from_nodes", d.bytes_uploaded_from_nodes}};
}

void ReadData(FieldReader& r, DataPlane& d) {
  const Json* data = r.Object("data");
  if (data == nullptr) return;
  FieldReader dr = Reader(*data, r.Inside("data"));
  if (const Json* by_node = dr.Object("by_node")) {
    for (const auto& [name, node] : by_node->items()) {
      FieldReader nr = Reader(node, dr.Inside("by_node") + ": '" + name + "'");
      NodeBytes n;
      nr.UInt64("stages", n.stages);
      nr.UInt64("bytes_produced", n.bytes_produced);
      nr.UInt64("bytes_fetched", n.bytes_fetched);
      nr.UInt64("bytes_uploaded", n.bytes_uploaded);
      dr.Take(nr.status());
      if (!nr.ok()) break;
      d.by_node[name] = n;
    }
  }
  dr.UInt64("outputs_fetched", d.outputs_fetched);
  dr.UInt64("bytes_fetched", d.bytes_fetched);
  dr.UInt64("outputs_left_on_cluster", d.outputs_left_on_cluster);
  dr.UInt64("bytes_left_on_cluster", d.bytes_left_on_cluster);
  dr.UInt64("bytes_uploaded_from_nodes", d.bytes_uploaded_from_nodes);
  r.Take(dr.status());
}

Json ArtifactsJson(const ArtifactsRecord& a) {
  Json j{{"uri", a.uri}};
  if (a.from_nodes) {
    j["from_nodes"] = {{"outputs", a.from_nodes->outputs},
                       {"bytes", a.from_nodes->bytes},
                       {"failed", a.from_nodes->failed}};
  }
  if (a.synced) j["synced"] = *a.synced;
  if (a.seconds) j["seconds"] = *a.seconds;
  if (a.error) j["error"] = *a.error;
  return j;
}

void ReadArtifacts(FieldReader& r, std::optional<ArtifactsRecord>& out) {
  const Json* json = r.OptObject("artifacts");
  if (json == nullptr) return;
  FieldReader ar = Reader(*json, r.Inside("artifacts"));
  ArtifactsRecord a;
  ar.String("uri", a.uri);
  if (const Json* from = ar.OptObject("from_nodes")) {
    FieldReader fr = Reader(*from, ar.Inside("from_nodes"));
    ArtifactsRecord::FromNodes f;
    fr.UInt64("outputs", f.outputs);
    fr.UInt64("bytes", f.bytes);
    fr.UInt64("failed", f.failed);
    ar.Take(fr.status());
    a.from_nodes = f;
  }
  ar.Bool("synced", a.synced);
  ar.Double("seconds", a.seconds);
  ar.String("error", a.error);
  r.Take(ar.status());
  if (ar.ok()) out = std::move(a);
}

Json CostJson(const CostEstimate& c) {
  Json j{{"node_types", c.node_types},
         {"usd_per_hour", c.usd_per_hour},
         {"wall_s", c.wall_s},
         {"estimated_usd", c.estimated_usd}};
  if (c.budget_usd) j["budget_usd"] = *c.budget_usd;
  return j;
}

void ReadCost(FieldReader& r, std::optional<CostEstimate>& out) {
  const Json* json = r.OptObject("cost");
  if (json == nullptr) return;
  FieldReader cr = Reader(*json, r.Inside("cost"));
  CostEstimate c;
  if (const Json* types = cr.Object("node_types")) {
    FieldReader tr = Reader(*types, cr.Inside("node_types"));
    for (const auto& [type, count] : types->items()) tr.Int(type, c.node_types[type]);
    cr.Take(tr.status());
  }
  cr.Double("usd_per_hour", c.usd_per_hour);
  cr.Double("wall_s", c.wall_s);
  cr.Double("estimated_usd", c.estimated_usd);
  cr.Double("budget_usd", c.budget_usd);
  r.Take(cr.status());
  if (cr.ok()) out = std::move(c);
}

// The record's own fields: an executor of one of these names keeps its details to itself.
bool IsRecordField(const std::string& key) {
  static const char* const kFields[] = {
      "version", "pipeline", "file", "executor",         "jobs",     "out_dir",
      "status",  "error",    "job",  "failed_stage",     "wall_s",   "data",
      "stages",  "outputs",  "cost", "started_executor", "artifacts"};
  for (const char* f : kFields) {
    if (key == f) return true;
  }
  return false;
}

Result<RunRecord> ReadRunRecord(const Json& json, const std::string& where) {
  if (Status s = CheckVersion(json, where, RunRecord::kVersion); !s.ok()) return s;
  RunRecord rec;
  FieldReader r = Reader(json, where);
  r.String("pipeline", rec.pipeline);
  r.String("file", rec.file);
  r.String("executor", rec.executor);
  r.Int("jobs", rec.jobs);
  r.String("out_dir", rec.out_dir);
  r.String("status", rec.status);
  ReadError(r, "error", rec.error);
  r.String("failed_stage", rec.failed_stage);
  r.Double("wall_s", rec.wall_s);
  if (const Json* job = r.Object("job")) {
    auto parsed = JobSpec::FromJson(*job);
    if (parsed.ok()) {
      rec.job = std::move(parsed).value();
    } else {
      r.Take(Moved(parsed.status(), "job: ", r.Inside("job")));
    }
  }
  ReadData(r, rec.data);
  if (const Json* stages = r.Array("stages")) {
    rec.stages.reserve(stages->size());
    for (std::size_t i = 0; i < stages->size() && r.ok(); ++i) {
      auto stage = ReadStage((*stages)[i], where + ": stages[" + std::to_string(i) + "]");
      r.Take(stage.status());
      if (stage.ok()) rec.stages.push_back(std::move(stage).value());
    }
  }
  r.String("outputs", rec.outputs);
  r.Bool("started_executor", rec.started_executor);
  ReadArtifacts(r, rec.artifacts);
  ReadCost(r, rec.cost);
  if (r.ok() && !IsRecordField(rec.executor)) {
    if (const Json* details = r.OptObject(rec.executor)) rec.executor_details = *details;
  }
  if (!r.ok()) return r.status();
  return rec;
}

Json RowJson(const ParityRow& row) {
  Json digests = Json::object();
  for (const auto& [executor, digest] : row.digests) digests[executor] = digest;
  if (row.first_difference) digests["first_difference"] = *row.first_difference;
  if (row.changed_after_run) digests["changed_after_run"] = *row.changed_after_run;
  return Json{{"stage", row.stage},
              {"output", row.output},
              {"digests", std::move(digests)},
              {"result", row.result}};
}

Result<ParityRow> ReadRow(const Json& json, const std::string& where) {
  ParityRow row;
  FieldReader r = Reader(json, where);
  r.String("stage", row.stage);
  r.String("output", row.output);
  r.String("result", row.result);
  if (const Json* digests = r.Object("digests")) {
    FieldReader dr = Reader(*digests, r.Inside("digests"));
    for (const auto& [key, value] : digests->items()) {
      if (key == "first_difference") {
        std::int64_t first = 0;
        dr.Int64(key, first);
        row.first_difference = first;
      } else if (key == "changed_after_run") {
        std::string e;
        dr.String(key, e);
        row.changed_after_run = e;
      } else {
        dr.String(key, row.digests[key]);
      }
    }
    r.Take(dr.status());
  }
  if (!r.ok()) return r.status();
  return row;
}

}  // namespace

Json RunRecord::ToJson() const {
  Json stages_json = Json::array();
  for (const StageRecord& s : stages) stages_json.push_back(StageJson(s));
  Json j{{"version", kVersion},
         {"pipeline", pipeline},
         {"file", file},
         {"executor", executor},
         {"jobs", jobs},
         {"out_dir", out_dir},
         {"status", status},
         {"error", ErrorJson(error)},
         {"failed_stage", Nullable(failed_stage)},
         {"wall_s", wall_s},
         {"job", job.ToJson()},
         {"data", DataJson(data)},
         {"stages", std::move(stages_json)}};
  if (outputs) j["outputs"] = *outputs;
  if (started_executor) j["started_executor"] = *started_executor;
  if (artifacts) j["artifacts"] = ArtifactsJson(*artifacts);
  if (cost) j["cost"] = CostJson(*cost);
  if (!executor_details.is_null() && !IsRecordField(executor)) j[executor] = executor_details;
  return j;
}

Result<RunRecord> RunRecord::FromJson(const Json& json) {
  return ReadRunRecord(json, "run record");
}

Json ParityDocument::ToJson() const {
  Json runs_json = Json::object();
  for (const auto& [name, run] : runs) runs_json[name] = run.ToJson();
  Json j{{"version", kVersion},
         {"status", status},
         {"executors", executors},
         {"runs", std::move(runs_json)}};
  if (outputs) {
    Json rows = Json::array();
    for (const ParityRow& row : *outputs) rows.push_back(RowJson(row));
    j["outputs"] = std::move(rows);
  }
  return j;
}

Result<ParityDocument> ParityDocument::FromJson(const Json& json) {
  const std::string where = "parity document";
  if (Status s = CheckVersion(json, where, kVersion); !s.ok()) return s;
  ParityDocument doc;
  FieldReader r = Reader(json, where);
  r.String("status", doc.status);
  if (const Json* executors = r.Array("executors")) {
    for (std::size_t i = 0; i < executors->size(); ++i) {
      if (!(*executors)[i].is_string()) {
        r.Fail("executors[" + std::to_string(i) + "] must be a string");
        break;
      }
      doc.executors.push_back((*executors)[i].get<std::string>());
    }
  }
  if (const Json* outputs = r.OptArray("outputs")) {
    doc.outputs.emplace();
    for (std::size_t i = 0; i < outputs->size() && r.ok(); ++i) {
      auto row = ReadRow((*outputs)[i], where + ": outputs[" + std::to_string(i) + "]");
      r.Take(row.status());
      if (row.ok()) doc.outputs->push_back(std::move(row).value());
    }
  }
  if (const Json* runs = r.Object("runs")) {
    for (const auto& [name, run] : runs->items()) {
      if (!r.ok()) break;
      auto parsed = ReadRunRecord(run, where + ": runs: '" + name + "'");
      r.Take(parsed.status());
      if (parsed.ok()) doc.runs.emplace(name, std::move(parsed).value());
    }
  }
  if (!r.ok()) return r.status();
  return doc;
}

}  // namespace stagekit::analyse
