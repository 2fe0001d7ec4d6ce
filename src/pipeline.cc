#include "stagekit/pipeline.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <cerrno>
#include <cstring>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <limits>
#include <mutex>
#include <set>
#include <sstream>

#include "fanout.h"
#include "util/files.h"
#include "util/text.h"

namespace stagekit {

namespace fs = std::filesystem;

struct DynamicForeach {
  fs::path file;    // the pipeline file
  YAML::Node node;  // the stage's entry in it
};

namespace {

YAML::Mark LineMark(int line) {
  YAML::Mark mark = YAML::Mark::null_mark();
  mark.pos = 0;
  mark.line = line - 1;
  mark.column = 0;
  return mark;
}

// Why `text` is not usable as a file name or path, or "" when it is: control
// bytes (NUL among them) would make two names one on disk or mislead a
// terminal.
std::string ControlBytes(std::string_view text) {
  for (unsigned char c : text) {
    if (c < 0x20 || c == 0x7f) {
      char hex[8];
      std::snprintf(hex, sizeof hex, "0x%02x", c);
      return std::string("holds the control byte ") + hex;
    }
  }
  return "";
}

// Why the relative output path `out` cannot be an output, or "" when it can:
// every part a real name (no '', '.' or '..'), none longer than a file name
// may be, none reserved for stagekit's own files.
std::string BadOutputPath(const std::string& out) {
  if (out.empty()) return "is empty";
  if (std::string why = ControlBytes(out); !why.empty()) return why;
  if (out.front() == '/') return "is absolute";
  std::size_t start = 0;
  for (;;) {
    const std::size_t slash = out.find('/', start);
    const std::string part =
        out.substr(start, slash == std::string::npos ? std::string::npos : slash - start);
    if (part.empty())
      return slash == std::string::npos ? "ends with '/'" : "has an empty part ('//')";
    if (part == "." || part == "..") return "has a '" + part + "' part";
    if (part.size() > 255) return "has a part longer than 255 bytes";
    if (part.rfind(".stagekit", 0) == 0) {
      return "has a part starting with '.stagekit', a name stagekit keeps for its own files "
             "(the run record .stagekit-run.json, temporaries)";
    }
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  return "";
}

class Parser {
 public:
  explicit Parser(fs::path file) : file_(std::move(file)) {}

  Status Error(const YAML::Mark& mark, const std::string& message) const {
    std::string where = file_.string();
    if (!mark.is_null()) {
      where += ":" + std::to_string(mark.line + 1) + ":" + std::to_string(mark.column + 1);
    }
    return Status(Code::kInvalidPipeline, where + ": " + message);
  }
  Status Error(const YAML::Node& node, const std::string& message) const {
    return Error(node.Mark(), message);
  }

  // Checks a mapping's keys: no duplicates, none outside `allowed`.
  Status CheckKeys(const YAML::Node& map, const std::string& what,
                   std::initializer_list<std::string_view> allowed) const {
    if (!map.IsMap()) return Error(map, what + " must be a mapping");
    std::set<std::string> seen;
    for (const auto& kv : map) {
      if (!kv.first.IsScalar()) return Error(kv.first, what + ": keys must be plain names");
      std::string key = kv.first.Scalar();
      if (!seen.insert(key).second)
        return Error(kv.first, what + ": key '" + key + "' appears twice");
      if (std::find(allowed.begin(), allowed.end(), key) == allowed.end()) {
        std::string expected;
        for (std::string_view a : allowed)
          expected += (expected.empty() ? "" : ", ") + std::string(a);
        return Error(kv.first,
                     what + ": unknown key '" + key + "' (expected one of: " + expected + ")");
      }
    }
    return OkStatus();
  }

  Result<std::string> String(const YAML::Node& node, const std::string& what) const {
    if (!node.IsScalar()) return Error(node, what + " must be a string");
    return node.Scalar();
  }

  Result<double> Number(const YAML::Node& node, const std::string& what) const {
    double v = 0;
    if (!node.IsScalar() || !YAML::convert<double>::decode(node, v) || !std::isfinite(v)) {
      return Error(node, what + " must be a number");
    }
    return v;
  }

  // YAML to JSON for kwargs and params: plain scalars become null, booleans,
  // integers or floats when they read as such; quoted scalars stay strings.
  // Limits on what a pipeline's kwargs and job.params may expand to: YAML
  // aliases let a few hundred bytes name billions of values ("billion
  // laughs"), and nesting recurses.
  // One block (a stage's kwargs, the job's params) may expand to kMaxValues,
  // all of them together to kMaxTotalValues: enough for a million stages
  // with ten kwargs each, not for an alias repeated a billion times.
  static constexpr int kMaxDepth = 64;
  static constexpr std::size_t kMaxValues = 1000000;
  static constexpr std::size_t kMaxTotalValues = 10000000;

  Result<Json> ToJson(const YAML::Node& node, const std::string& what, int depth = 0) const {
    if (depth > kMaxDepth) {
      return Error(node, what + " nests deeper than " + std::to_string(kMaxDepth) + " levels");
    }
    if (depth == 0) block_values_ = 0;
    if (++block_values_ > kMaxValues) {
      return Error(node, what + " expands to more than " + std::to_string(kMaxValues) +
                             " values (YAML aliases repeated inside each other?)");
    }
    if (++values_ > kMaxTotalValues) {
      return Error(node, what + ": the pipeline's kwargs and params expand to more than " +
                             std::to_string(kMaxTotalValues) + " values in all");
    }
    switch (node.Type()) {
      case YAML::NodeType::Null:
      case YAML::NodeType::Undefined:
        return Json(nullptr);
      case YAML::NodeType::Scalar: {
        const std::string& s = node.Scalar();
        if (item_ != nullptr && s.find('{') != std::string::npos) {
          // In a foreach stage's kwargs: "{lr}" is the item's value, typed;
          // "run-{seed}" a string with the value in it.
          if (const Json* whole = fanout::WholeValue(s, *item_)) return *whole;
          auto text = fanout::Substitute(s, *item_);
          if (!text.ok()) return Error(node, what + ": " + text.status().message());
          return Json(*text);
        }
        if (node.Tag() == "!") return Json(s);  // quoted
        if (s == "~" || s == "null" || s == "Null" || s == "NULL") return Json(nullptr);
        if (s == "true" || s == "True" || s == "TRUE") return Json(true);
        if (s == "false" || s == "False" || s == "FALSE") return Json(false);
        Json number = Json::parse(s, nullptr, false);
        if (!number.is_discarded() && number.is_number()) return number;
        return Json(s);
      }
      case YAML::NodeType::Sequence: {
        Json arr = Json::array();
        for (const auto& item : node) {
          auto v = ToJson(item, what, depth + 1);
          if (!v.ok()) return v;
          arr.push_back(std::move(v).value());
        }
        return arr;
      }
      case YAML::NodeType::Map: {
        Json obj = Json::object();
        for (const auto& kv : node) {
          if (!kv.first.IsScalar()) return Error(kv.first, what + ": keys must be strings");
          if (obj.contains(kv.first.Scalar())) {
            return Error(kv.first, what + ": key '" + kv.first.Scalar() + "' appears twice");
          }
          auto v = ToJson(kv.second, what, depth + 1);
          if (!v.ok()) return v;
          obj[kv.first.Scalar()] = std::move(v).value();
        }
        return obj;
      }
    }
    return Json(nullptr);
  }

  // Parses a pipeline file: its top-level keys, the job, then the stages in dependency order.
  Result<Pipeline> Parse(std::string_view text) {
    YAML::Node loaded;
    if (Status s = LoadRoot(text, loaded); !s.ok()) return s;
    const YAML::Node root = loaded;
    Pipeline p;
    p.file = file_;
    p.name = file_.stem().string();
    if (Status s = ParseHeader(root, p); !s.ok()) return s;
    if (const YAML::Node job = root["job"]) {
      if (Status s = ParseJob(job, p.job); !s.ok()) return s;
    }
    if (p.job.name.empty()) p.job.name = p.name;
    std::vector<PipelineStage> parsed;
    if (Status s = ParseStages(root, parsed); !s.ok()) return s;
    auto ordered = TopologicalOrder(std::move(parsed));
    if (!ordered.ok()) return ordered.status();
    p.stages = std::move(ordered).value();
    return p;
  }

 private:
  // Loads the YAML text into `loaded`; rejects a syntax error, an empty file or unknown keys.
  Status LoadRoot(std::string_view text, YAML::Node& loaded) const {
    // Names, paths and kwargs travel as JSON (UTF-8) to every executor; a
    // Latin-1 byte once failed deep in a run with a JSON library message.
    if (const std::size_t bad = util::InvalidUtf8At(text); bad != std::string_view::npos) {
      char byte[8];
      std::snprintf(byte, sizeof byte, "0x%02X", static_cast<unsigned char>(text[bad]));
      return Status(Code::kInvalidPipeline,
                    file_.string() + ":" + util::LineColumn(text, bad) + ": byte " + byte +
                        " is not UTF-8; stagekit reads pipelines as UTF-8: re-encode the file "
                        "(iconv -f latin1 -t utf-8) and rename files whose names are not UTF-8");
    }
    try {
      loaded = YAML::Load(std::string(text));
    } catch (const YAML::ParserException& e) {
      return Error(e.mark, "YAML syntax error: " + e.msg);
    } catch (const YAML::Exception& e) {
      return Error(e.mark, e.msg);
    }
    const YAML::Node root = loaded;
    if (!root.IsDefined() || root.IsNull()) {
      return Error(YAML::Mark::null_mark(), "the pipeline file is empty");
    }
    return CheckKeys(root, "pipeline",
                     {"name", "description", "libraries", "job", "artifacts", "stages"});
  }

  // Reads the top-level 'name', 'libraries' and 'artifacts' into `p`.
  Status ParseHeader(const YAML::Node& root, Pipeline& p) const {
    if (root["name"]) {
      auto n = String(root["name"], "name");
      if (!n.ok()) return n.status();
      p.name = *n;
    }
    if (const YAML::Node libs = root["libraries"]) {
      if (!libs.IsSequence()) return Error(libs, "libraries must be a list of names or paths");
      for (const auto& lib : libs) {
        auto l = String(lib, "a library entry");
        if (!l.ok()) return l.status();
        p.libraries.push_back(*l);
      }
    }
    if (root["artifacts"]) {
      auto a = String(root["artifacts"], "artifacts");
      if (!a.ok()) return a.status();
      if (a->rfind("s3://", 0) != 0 || a->size() <= 5 || (*a)[5] == '/') {
        return Error(root["artifacts"],
                     "artifacts must be an S3 location such as s3://bucket/prefix");
      }
      p.artifacts = *a;
    }
    return OkStatus();
  }

  // Reads the 'job' mapping (name, seed, params) into `job_spec`.
  Status ParseJob(const YAML::Node& job, JobSpec& job_spec) const {
    if (Status s = CheckKeys(job, "job", {"name", "seed", "params"}); !s.ok()) return s;
    if (job["name"]) {
      auto n = String(job["name"], "job.name");
      if (!n.ok()) return n.status();
      job_spec.name = *n;
    }
    if (job["seed"]) {
      std::uint64_t seed = 0;
      if (!job["seed"].IsScalar() ||
          job["seed"].Scalar().find_first_not_of("0123456789") != std::string::npos ||
          !YAML::convert<std::uint64_t>::decode(job["seed"], seed)) {
        return Error(job["seed"], "job.seed must be a whole number from 0 to 2^64-1");
      }
      job_spec.seed = seed;
    }
    if (job["params"]) {
      if (!job["params"].IsMap()) return Error(job["params"], "job.params must be a mapping");
      auto params = ToJson(job["params"], "job.params");
      if (!params.ok()) return params.status();
      job_spec.params = std::move(params).value();
    }
    return OkStatus();
  }

  // Parses the 'stages' list into `parsed`, checking names, outputs and 'from' across stages.
  Status ParseStages(const YAML::Node& root, std::vector<PipelineStage>& parsed) {
    const YAML::Node stages = root["stages"];
    if (!stages || !stages.IsSequence() || stages.size() == 0) {
      return Error(stages ? stages.Mark() : root.Mark(), "'stages' must be a non-empty list");
    }
    std::map<std::string, YAML::Mark> names;
    std::map<std::string, YAML::Mark> outputs;
    auto add = [&](const YAML::Node& node, PipelineStage st) -> Status {
      if (auto [it, fresh] = names.emplace(st.name, node.Mark()); !fresh) {
        return Error(node["name"], "duplicate stage name '" + st.name +
                                       "' (first declared on line " +
                                       std::to_string(it->second.line + 1) + ")");
      }
      if (!st.foreach_from.empty()) {
        // A dynamic template: its instances' outputs are checked when made.
      } else if (auto [it, fresh] = outputs.emplace(st.output, node.Mark()); !fresh) {
        return Error(node, "stage '" + st.name + "' writes output '" + st.output +
                               "', which the stage on line " + std::to_string(it->second.line + 1) +
                               " already writes; give it another 'output'" +
                               (node["foreach"] ? " (with a {name} of its foreach in it)" : ""));
      }
      parsed.push_back(std::move(st));
      return OkStatus();
    };
    for (const auto& node : stages) {
      if (node.IsMap() && node["foreach"] && node["foreach"].IsMap() && node["foreach"]["from"]) {
        if (Status s = ParseDynamicStage(node, add); !s.ok()) return s;
        continue;
      }
      if (node.IsMap() && node["foreach"]) {
        if (Status s = ParseForeachStage(node, add); !s.ok()) return s;
        continue;
      }
      auto st = ParseStage(node);
      if (!st.ok()) return st.status();
      if (Status s = add(node, std::move(st).value()); !s.ok()) return s;
    }
    if (Status s = CheckNestedOutputs(outputs); !s.ok()) return s;
    if (Status s = ExpandCollects(parsed, names); !s.ok()) return s;
    return CheckInputSources(parsed, names);
  }

  // A stage with `foreach`: one instance per item, named NAME[KEY], its
  // {name}s in output, inputs and kwargs replaced by the item's values; the
  // default output is NAME/KEY.out.
  Status ParseForeachStage(const YAML::Node& node,
                           const std::function<Status(const YAML::Node&, PipelineStage)>& add) {
    const std::string base = node["name"] ? node["name"].as<std::string>("") : "";
    const std::string where = "stage '" + base + "'";
    fanout::Reader reader{
        [this](const YAML::Mark& mark, const std::string& message) { return Error(mark, message); },
        [this](const YAML::Node& n, const std::string& what) { return ToJson(n, what); }};
    auto items = fanout::Items(node["foreach"], file_.parent_path(), where, reader);
    if (!items.ok()) return items.status();
    for (const fanout::Item& item : *items) {
      auto st = Instance(node, item);
      if (!st.ok()) return st.status();
      if (Status s = add(node, std::move(st).value()); !s.ok()) return s;
    }
    return OkStatus();
  }

 public:
  // The instance NAME[KEY] of foreach stage `node` for `item`.
  Result<PipelineStage> Instance(const YAML::Node& node, const fanout::Item& item) {
    item_ = &item;
    auto st = ParseStage(node);
    item_ = nullptr;
    if (!st.ok()) return st.status();
    const std::string base = st->name;
    st->name += "[" + item.key + "]";
    if (!node["output"]) {
      st->output = base + "/" + item.key + ".out";
      if (std::string why = BadOutputPath(st->output); !why.empty()) {
        return Error(node["name"], "stage '" + base + "': the default output '" + st->output +
                                       "' " + why + "; give it an 'output'");
      }
    }
    return st;
  }

 private:
  // A stage with `foreach: {from: STAGE}`: one template NAME[*], checked as
  // far as it can be without its items; the scheduler makes the instances
  // from STAGE's item list (ExpandDynamicStage).
  Status ParseDynamicStage(const YAML::Node& node,
                           const std::function<Status(const YAML::Node&, PipelineStage)>& add) {
    const YAML::Node foreach = node["foreach"];
    if (Status s = CheckKeys(foreach, "foreach", {"from"}); !s.ok()) return s;
    auto from = String(foreach["from"], "foreach: from");
    if (!from.ok()) return from.status();
    auto st = ParseStage(node);
    if (!st.ok()) return st.status();
    const std::string where = "stage '" + st->name + "'";
    if (from->empty()) return Error(foreach["from"], where + ": foreach: from names no stage");
    for (const auto& [input, ref] : st->inputs) {
      if (ref.from_stage.find('{') != std::string::npos) {
        return Error(node["inputs"], where + ": input '" + input +
                                         "': in a foreach over a stage's items, 'from' cannot "
                                         "use {names} (the stages it reads must be known "
                                         "before the items are)");
      }
    }
    auto dynamic = std::make_shared<DynamicForeach>();
    dynamic->file = file_;
    dynamic->node = node;
    st->foreach_from = *from;
    st->dynamic = std::move(dynamic);
    st->name += "[*]";
    st->output.clear();
    templates_.insert(st->name);
    return add(node, std::move(st).value());
  }

  // A text of a foreach stage with its {name}s replaced; as it is elsewhere.
  Result<std::string> Substituted(const std::string& text, const YAML::Node& at,
                                  const std::string& what) const {
    if (item_ == nullptr) return text;
    auto out = fanout::Substitute(text, *item_);
    if (!out.ok()) return Error(at, what + ": " + out.status().message());
    return out;
  }

  // Inputs {from: "map[*]"} (or "map[a*]"): one input NAME[KEY] per instance
  // of foreach stage "map" whose key matches, from that instance. In key
  // order, as a stage's inputs always are (StageContext::input_list).
  Status ExpandCollects(std::vector<PipelineStage>& parsed,
                        const std::map<std::string, YAML::Mark>& names) const {
    for (PipelineStage& st : parsed) {
      std::map<std::string, InputRef> inputs;
      for (auto& [input, ref] : st.inputs) {
        const std::string& from = ref.from_stage;
        const std::size_t open = from.find('[');
        if (from.find('*') == std::string::npos || open == std::string::npos ||
            from.back() != ']') {
          if (!inputs.emplace(input, ref).second) return DuplicateInput(st, input);
          continue;
        }
        const std::string base = from.substr(0, open + 1);  // "map["
        const std::string keys = from.substr(open + 1, from.size() - open - 2);
        if (templates_.count(base + "*]") != 0) {
          // A dynamic foreach: its instances are made at run time.
          InputRef pending;
          pending.from_stage = base + "*]";
          pending.collect = keys;
          if (!inputs.emplace(input, std::move(pending)).second) return DuplicateInput(st, input);
          continue;
        }
        std::size_t matched = 0;
        for (auto it = names.lower_bound(base); it != names.end(); ++it) {
          const std::string& name = it->first;
          if (name.compare(0, base.size(), base) != 0) break;
          if (name.back() != ']') continue;
          const std::string key = name.substr(base.size(), name.size() - base.size() - 1);
          if (key.find('[') != std::string::npos || !util::WildMatch(keys, key)) continue;
          InputRef one;
          one.from_stage = name;
          if (!inputs.emplace(input + "[" + key + "]", std::move(one)).second) {
            return DuplicateInput(st, input + "[" + key + "]");
          }
          ++matched;
        }
        if (matched == 0) {
          return Error(LineMark(st.line), "stage '" + st.name + "': input '" + input +
                                              "' collects from '" + from +
                                              "', which matches no stage instance; a foreach "
                                              "stage's instances are NAME[KEY]");
        }
      }
      st.inputs = std::move(inputs);
    }
    return OkStatus();
  }

  Status DuplicateInput(const PipelineStage& st, const std::string& input) const {
    return Error(LineMark(st.line), "stage '" + st.name + "': input '" + input +
                                        "' is given twice (once by a collect)");
  }

  // A dynamic template's producer is a stage (not itself, not another
  // template); its name is no other stage's base name.
  Status CheckDynamic(const PipelineStage& st,
                      const std::map<std::string, YAML::Mark>& names) const {
    if (st.foreach_from.empty()) return OkStatus();
    const std::string where = "stage '" + st.name.substr(0, st.name.size() - 3) + "'";
    const std::string base = st.name.substr(0, st.name.size() - 2);  // "map["
    for (auto it = names.lower_bound(base); it != names.end(); ++it) {
      if (it->first.compare(0, base.size(), base) != 0) break;
      if (it->first != st.name) {
        return Error(LineMark(st.line), where + ": another stage's instances are named like " +
                                            "its own ('" + it->first + "'); rename one of the two");
      }
    }
    if (st.foreach_from == st.name || st.foreach_from + "[*]" == st.name) {
      return Error(LineMark(st.line), where + ": foreach: from names the stage itself");
    }
    if (templates_.count(st.foreach_from) != 0 ||
        templates_.count(st.foreach_from.substr(0, st.foreach_from.find('[')) + "[*]") != 0) {
      return Error(LineMark(st.line),
                   where + ": foreach: from names '" + st.foreach_from +
                       "', itself a foreach over a stage's items; read the items of a stage "
                       "that collects its instances instead");
    }
    if (names.count(st.foreach_from) == 0) {
      return Error(LineMark(st.line), where + ": foreach: from names unknown stage '" +
                                          st.foreach_from + "' (the stage whose output is the " +
                                          "item list)");
    }
    return OkStatus();
  }

  // An output that is a folder of another ("d" and "d/e") cannot be both.
  Status CheckNestedOutputs(const std::map<std::string, YAML::Mark>& outputs) const {
    for (auto it = outputs.begin(); it != outputs.end(); ++it) {
      const std::string dir = it->first + "/";
      auto next = outputs.lower_bound(dir);
      if (next != outputs.end() && next->first.compare(0, dir.size(), dir) == 0) {
        return Error(next->second, "output '" + next->first + "' lies inside output '" + it->first +
                                       "' (line " + std::to_string(it->second.line + 1) +
                                       "), which is a file; rename one of them");
      }
    }
    return OkStatus();
  }

  // Checks that every input's 'from' names a stage of the pipeline.
  Status CheckInputSources(const std::vector<PipelineStage>& parsed,
                           const std::map<std::string, YAML::Mark>& names) const {
    for (const PipelineStage& st : parsed) {
      if (Status s = CheckDynamic(st, names); !s.ok()) return s;
      for (const auto& [input, ref] : st.inputs) {
        if (!ref.from_stage.empty() && names.count(ref.from_stage) == 0) {
          if (templates_.count(ref.from_stage.substr(0, ref.from_stage.find('[')) + "[*]") != 0) {
            return Error(LineMark(st.line),
                         "stage '" + st.name + "': input '" + input + "' comes from '" +
                             ref.from_stage + "', an instance of a foreach over a stage's items: " +
                             "its instances are known only at run time; collect them ('" +
                             ref.from_stage.substr(0, ref.from_stage.find('[')) + "[*]')");
          }
          auto fanned = names.lower_bound(ref.from_stage + "[");
          if (fanned != names.end() && fanned->first.rfind(ref.from_stage + "[", 0) == 0) {
            return Error(LineMark(st.line), "stage '" + st.name + "': input '" + input +
                                                "' comes from '" + ref.from_stage +
                                                "', a foreach stage: name one instance ('" +
                                                fanned->first + "') or collect them all ('" +
                                                ref.from_stage + "[*]')");
          }
          return Error(LineMark(st.line), "stage '" + st.name + "': input '" + input +
                                              "' comes from unknown stage '" + ref.from_stage +
                                              "'");
        }
      }
    }
    return OkStatus();
  }

  // Parses one entry of 'stages', key by key, into a PipelineStage.
  Result<PipelineStage> ParseStage(const YAML::Node& node) {
    if (Status s = CheckKeys(node, "stage",
                             {"name", "stage", "inputs", "output", "kwargs", "resources", "timeout",
                              "keep", "foreach"});
        !s.ok()) {
      return s;
    }
    PipelineStage st;
    st.line = node.Mark().line + 1;
    if (Status s = ParseStageName(node, st); !s.ok()) return s;
    std::string where = "stage '" + st.name + "'";
    if (!node["stage"]) return Error(node, where + ": missing 'stage' (the registered stage name)");
    auto reg = String(node["stage"], where + ": 'stage'");
    if (!reg.ok()) return reg.status();
    st.stage = *reg;

    if (const YAML::Node inputs = node["inputs"]) {
      if (Status s = ParseInputs(inputs, where, st); !s.ok()) return s;
    }
    if (Status s = ParseOutput(node, where, st); !s.ok()) return s;
    if (node["kwargs"]) {
      if (!node["kwargs"].IsMap())
        return Error(node["kwargs"], where + ": kwargs must be a mapping");
      auto kw = ToJson(node["kwargs"], where + ": kwargs");
      if (!kw.ok()) return kw.status();
      st.kwargs = std::move(kw).value();
    }
    if (const YAML::Node res = node["resources"]) {
      if (Status s = ParseResources(res, where, st.options.resources); !s.ok()) return s;
    }
    if (Status s = ParseKeepAndTimeout(node, where, st); !s.ok()) return s;
    return st;
  }

  // Reads the stage's required 'name': 1 to 200 of [A-Za-z0-9_.-], not '.' or '..'.
  Status ParseStageName(const YAML::Node& node, PipelineStage& st) const {
    if (!node["name"]) return Error(node, "stage: missing 'name'");
    auto name = String(node["name"], "stage name");
    if (!name.ok()) return name.status();
    st.name = *name;
    if (st.name.empty() || st.name == "." || st.name == ".." || st.name.size() > 200 ||
        st.name.find_first_not_of("abcdefghijklmnopqrstuvwxyz"
                                  "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") != std::string::npos) {
      std::string shown = ControlBytes(st.name).empty() ? st.name : "(with control bytes)";
      if (shown.size() > 80) shown = shown.substr(0, 80) + "...";
      return Error(node["name"], "stage name '" + shown +
                                     "' must be 1 to 200 letters, digits, '_', '.', '-', and "
                                     "not '.' or '..'");
    }
    return OkStatus();
  }

  // Reads the 'inputs' mapping (name to file or {from: STAGE}) into st.inputs.
  Status ParseInputs(const YAML::Node& inputs, const std::string& where, PipelineStage& st) const {
    if (!inputs.IsMap()) return Error(inputs, where + ": inputs must be a mapping of name to file");
    std::set<std::string> seen;
    for (const auto& kv : inputs) {
      std::string in = kv.first.Scalar();
      if (std::string why = ControlBytes(in); !why.empty() || in.empty()) {
        return Error(kv.first, where + ": an input name " + (in.empty() ? "is empty" : why));
      }
      if (!seen.insert(in).second)
        return Error(kv.first, where + ": input '" + in + "' appears twice");
      InputRef ref;
      if (Status s = ParseInputRef(kv.second, in, where, st.name, ref); !s.ok()) return s;
      st.inputs.emplace(in, std::move(ref));
    }
    return OkStatus();
  }

  // Reads input `in`'s value `v` (a path, {from: STAGE} or {file: PATH}) into `ref`.
  Status ParseInputRef(const YAML::Node& v, const std::string& in, const std::string& where,
                       const std::string& stage_name, InputRef& ref) const {
    if (v.IsScalar()) {
      auto file = Substituted(v.Scalar(), v, where + ": input '" + in + "'");
      if (!file.ok()) return file.status();
      ref.file = *file;
    } else if (v.IsMap()) {
      if (Status s = CheckKeys(v, where + " input '" + in + "'", {"from", "file"}); !s.ok())
        return s;
      if (v["from"] && v["file"])
        return Error(v, where + ": input '" + in + "' has both 'from' and 'file'");
      if (v["from"]) {
        auto from = String(v["from"], where + ": 'from'");
        if (!from.ok()) return from.status();
        from = Substituted(*from, v["from"], where + ": 'from'");
        if (!from.ok()) return from.status();
        ref.from_stage = *from;
        if (ref.from_stage == stage_name) {
          return Error(v["from"],
                       where + ": input '" + in + "' comes from the stage itself (a cycle)");
        }
      } else if (v["file"]) {
        auto file = String(v["file"], where + ": 'file'");
        if (!file.ok()) return file.status();
        file = Substituted(*file, v["file"], where + ": 'file'");
        if (!file.ok()) return file.status();
        ref.file = *file;
      } else {
        return Error(v, where + ": input '" + in + "' needs 'from' or 'file'");
      }
    } else {
      return Error(v, where + ": input '" + in + "' must be a path or {from: STAGE}");
    }
    if (ref.from_stage.empty()) {
      if (ref.file.empty()) return Error(v, where + ": input '" + in + "' has an empty path");
      if (std::string why = ControlBytes(ref.file.string()); !why.empty()) {
        return Error(v, where + ": the path of input '" + in + "' " + why);
      }
      ref.file = (file_.parent_path() / ref.file).lexically_normal();
    }
    return OkStatus();
  }

  // Sets st.output from 'output', or to the default NAME.out, rejecting a bad path.
  Status ParseOutput(const YAML::Node& node, const std::string& where, PipelineStage& st) const {
    st.output = st.name + ".out";
    if (!node["output"]) {
      if (std::string why = BadOutputPath(st.output); !why.empty()) {
        return Error(node["name"], where + ": its default output '" + st.output + "' " + why +
                                       "; rename the stage or give it an 'output'");
      }
    } else {
      auto out = String(node["output"], where + ": output");
      if (!out.ok()) return out.status();
      out = Substituted(*out, node["output"], where + ": output");
      if (!out.ok()) return out.status();
      if (std::string why = BadOutputPath(*out); !why.empty()) {
        std::string shown = ControlBytes(*out).empty() ? *out : "(with control bytes)";
        if (shown.size() > 80) shown = shown.substr(0, 80) + "...";
        return Error(node["output"], where + ": output '" + shown + "' " + why +
                                         "; give a relative file name inside the output "
                                         "directory, such as 'parts/a.bin'");
      }
      st.output = *out;
    }
    return OkStatus();
  }

  // Reads the 'resources' mapping (cpus, gpus, memory, custom) into `r` and validates it.
  Status ParseResources(const YAML::Node& res, const std::string& where, Resources& r) const {
    if (Status s = CheckKeys(res, where + ": resources", {"cpus", "gpus", "memory", "custom"});
        !s.ok()) {
      return s;
    }
    if (res["cpus"]) {
      auto v = Number(res["cpus"], where + ": cpus");
      if (!v.ok()) return v.status();
      r.cpus = *v;
    }
    if (res["gpus"]) {
      auto v = Number(res["gpus"], where + ": gpus");
      if (!v.ok()) return v.status();
      r.gpus = *v;
    }
    if (res["memory"]) {
      auto v = ParseBytes(res["memory"].IsScalar() ? res["memory"].Scalar() : "");
      if (!v.ok()) return Error(res["memory"], where + ": memory: " + v.status().message());
      r.memory_bytes = *v;
    }
    if (const YAML::Node custom = res["custom"]) {
      if (!custom.IsMap()) return Error(custom, where + ": custom resources must be a mapping");
      for (const auto& kv : custom) {
        auto v = Number(kv.second, where + ": resource '" + kv.first.Scalar() + "'");
        if (!v.ok()) return v.status();
        if (!r.custom.emplace(kv.first.Scalar(), *v).second) {
          return Error(kv.first, where + ": resource '" + kv.first.Scalar() + "' appears twice");
        }
      }
    }
    if (Status s = r.Validate(); !s.ok()) return Error(res, where + ": " + s.message());
    return OkStatus();
  }

  // Reads the optional 'keep' (true or false) and 'timeout' (a duration) into `st`.
  Status ParseKeepAndTimeout(const YAML::Node& node, const std::string& where,
                             PipelineStage& st) const {
    if (const YAML::Node keep = node["keep"]) {
      const std::string v = keep.IsScalar() ? keep.Scalar() : "";
      if (v == "true") {
        st.keep = true;
      } else if (v == "false") {
        st.keep = false;
      } else {
        return Error(keep, where + ": keep must be true or false");
      }
    }
    if (node["timeout"]) {
      auto t = ParseDuration(node["timeout"].IsScalar() ? node["timeout"].Scalar() : "");
      if (!t.ok()) return Error(node["timeout"], where + ": timeout: " + t.status().message());
      st.options.timeout = *t;
    }
    return OkStatus();
  }

  // Kahn's algorithm, keeping declaration order among ready stages; on a
  // cycle, walks it to name every stage on it.
  Result<std::vector<PipelineStage>> TopologicalOrder(std::vector<PipelineStage> stages) {
    std::map<std::string, std::size_t> index;
    for (std::size_t i = 0; i < stages.size(); ++i) index[stages[i].name] = i;
    std::vector<std::vector<std::size_t>> users(stages.size());
    std::vector<std::size_t> indegree(stages.size(), 0);
    for (std::size_t i = 0; i < stages.size(); ++i) {
      std::set<std::size_t> deps;
      for (const auto& [in, ref] : stages[i].inputs) {
        if (!ref.from_stage.empty()) deps.insert(index.at(ref.from_stage));
      }
      if (!stages[i].foreach_from.empty()) deps.insert(index.at(stages[i].foreach_from));
      for (std::size_t d : deps) users[d].push_back(i);
      indegree[i] = deps.size();
    }
    std::set<std::size_t> ready;
    for (std::size_t i = 0; i < stages.size(); ++i) {
      if (indegree[i] == 0) ready.insert(i);
    }
    std::vector<std::size_t> order;
    while (!ready.empty()) {
      std::size_t i = *ready.begin();
      ready.erase(ready.begin());
      order.push_back(i);
      for (std::size_t u : users[i]) {
        if (--indegree[u] == 0) ready.insert(u);
      }
    }
    if (order.size() != stages.size()) {
      // Every stage left has an unfinished dependency; follow them until one repeats.
      std::size_t at = 0;
      while (indegree[at] == 0) ++at;
      std::vector<std::size_t> path;
      std::map<std::size_t, std::size_t> pos;
      while (pos.count(at) == 0) {
        pos[at] = path.size();
        path.push_back(at);
        std::vector<std::string> ups;
        for (const auto& [in, ref] : stages[at].inputs) ups.push_back(ref.from_stage);
        ups.push_back(stages[at].foreach_from);
        for (const std::string& up : ups) {
          if (!up.empty() && indegree[index.at(up)] != 0) {
            at = index.at(up);
            break;
          }
        }
      }
      std::string cycle;
      for (std::size_t k = path.size(); k-- > pos[at];) cycle += stages[path[k]].name + " -> ";
      cycle += stages[path.back()].name;
      return Error(LineMark(stages[at].line),
                   "dependency cycle: " + cycle + "; a stage cannot depend on its own output");
    }
    std::vector<PipelineStage> out;
    out.reserve(stages.size());
    for (std::size_t i : order) out.push_back(std::move(stages[i]));
    return out;
  }

  fs::path file_;
  const fanout::Item* item_ = nullptr;    // the foreach item of the stage being read
  std::set<std::string> templates_;       // dynamic foreach stages, NAME[*]
  mutable std::size_t values_ = 0;        // values ToJson made so far (kMaxTotalValues)
  mutable std::size_t block_values_ = 0;  // ... in the current block (kMaxValues)
};

}  // namespace

const PipelineStage* Pipeline::Find(std::string_view stage_name) const {
  for (const PipelineStage& s : stages) {
    if (s.name == stage_name) return &s;
  }
  return nullptr;
}

bool Pipeline::dynamic() const {
  return std::any_of(stages.begin(), stages.end(),
                     [](const PipelineStage& s) { return !s.foreach_from.empty(); });
}

Result<std::vector<PipelineStage>> ExpandDynamicStage(const PipelineStage& tmpl,
                                                      const fs::path& items_file) {
  if (!tmpl.dynamic) {
    return Status(Code::kInternal, "stage '" + tmpl.name + "' is not a foreach over items");
  }
  const std::string list = items_file.string();
  const std::string made =
      " (the item list stage '" + tmpl.foreach_from + "' made for '" + tmpl.name + "')";
  auto text = util::ReadFile(items_file, kMaxItemListBytes);
  if (!text.ok()) return Status(text.status().code(), text.status().message() + made);
  if (const std::size_t bad = util::InvalidUtf8At(*text); bad != std::string_view::npos) {
    return Status(Code::kInvalidPipeline,
                  list + ":" + util::LineColumn(*text, bad) + ": the text is not UTF-8" + made);
  }
  std::vector<std::size_t> lines;
  auto items = fanout::JsonLinesItems(*text, lines);
  if (!items.ok()) {
    return Status(Code::kInvalidPipeline, list + ":" + items.status().message() + made);
  }
  // yaml-cpp nodes are not safe to read from two threads (parity runs
  // executors side by side).
  static std::mutex yaml_mu;
  std::lock_guard<std::mutex> lock(yaml_mu);
  Parser parser(tmpl.dynamic->file);
  std::vector<PipelineStage> out;
  out.reserve(items->size());
  std::map<std::string, std::size_t> outputs;
  for (std::size_t k = 0; k < items->size(); ++k) {
    const std::string item_at = " (for the item on line " + std::to_string(lines[k]) + " of " +
                                list + ", made by stage '" + tmpl.foreach_from + "')";
    auto st = parser.Instance(tmpl.dynamic->node, (*items)[k]);
    if (!st.ok()) return Status(st.status().code(), st.status().message() + item_at);
    // Its placement, timeout and keep are the template's, with what the
    // command line changed (--resources 'count[*]:...', --timeout); what
    // it reads from stages is the template's (collects resolved).
    st->options = tmpl.options;
    st->keep = tmpl.keep;
    for (auto it = st->inputs.begin(); it != st->inputs.end();) {
      it = it->second.from_stage.empty() ? std::next(it) : st->inputs.erase(it);
    }
    for (const auto& [name, ref] : tmpl.inputs) {
      if (!ref.from_stage.empty()) st->inputs[name] = ref;
    }
    if (auto [it, fresh] = outputs.emplace(st->output, k); !fresh) {
      return Status(Code::kInvalidPipeline,
                    list + ":" + std::to_string(lines[k]) + ": instances '" + out[it->second].name +
                        "' and '" + st->name + "' would both write '" + st->output +
                        "'; put a {name} of the items in the stage's output" + made);
    }
    out.push_back(std::move(st).value());
  }
  return out;
}

std::vector<std::pair<std::string, std::string>> PointCollects(
    PipelineStage& st, const std::string& tmpl, const std::vector<std::string>& instances) {
  std::vector<std::pair<std::string, std::string>> added;
  const std::size_t base = tmpl.size() - 2;  // "map[" of "map[*]"
  for (auto it = st.inputs.begin(); it != st.inputs.end();) {
    if (it->second.collect.empty() || it->second.from_stage != tmpl) {
      ++it;
      continue;
    }
    const std::string input = it->first;
    const std::string filter = it->second.collect;
    it = st.inputs.erase(it);
    for (const std::string& name : instances) {
      const std::string key = name.substr(base, name.size() - base - 1);
      if (!util::WildMatch(filter, key)) continue;
      InputRef one;
      one.from_stage = name;
      st.inputs.emplace(input + "[" + key + "]", std::move(one));
      added.emplace_back(input + "[" + key + "]", name);
    }
  }
  return added;
}

Result<Pipeline> ParsePipeline(std::string_view yaml_text, const fs::path& file) {
  std::error_code ec;
  fs::path abs = fs::absolute(file, ec).lexically_normal();
  return Parser(ec ? file : abs).Parse(yaml_text);
}

Result<Pipeline> LoadPipeline(const fs::path& file) {
  // Its path goes into run records and packages (JSON) and anchors its inputs'.
  std::error_code aec;
  if (util::InvalidUtf8At(fs::absolute(file, aec).native()) != std::string_view::npos) {
    return Status(Code::kInputError, "the pipeline file '" + file.string() +
                                         "' has a path that is not UTF-8 (here or in its folder); "
                                         "rename it, or move it to a folder whose path is UTF-8");
  }
  // O_NONBLOCK: a FIFO must not hang the open; only regular files are read,
  // and only up to kMaxPipelineBytes (a pipeline named /dev/zero ends here).
  const int fd = ::open(file.c_str(), O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
  if (fd < 0) {
    return Status(Code::kInputError,
                  "cannot read pipeline file '" + file.string() + "': " + std::strerror(errno));
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    return Status(Code::kInputError,
                  "cannot read pipeline file '" + file.string() +
                      "': " + (S_ISDIR(st.st_mode) ? "is a directory" : "is not a regular file"));
  }
  if (static_cast<std::uint64_t>(st.st_size) > kMaxPipelineBytes) {
    return Status(Code::kInvalidPipeline, file.string() + " is " + std::to_string(st.st_size) +
                                              " bytes; a pipeline file may be at most " +
                                              std::to_string(kMaxPipelineBytes >> 20) + " MiB");
  }
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  std::string text;
  char buf[1 << 16];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      return Status(Code::kInputError,
                    "cannot read pipeline file '" + file.string() + "': " + std::strerror(errno));
    }
    if (n == 0) break;
    text.append(buf, static_cast<std::size_t>(n));
    if (text.size() > kMaxPipelineBytes) {
      return Status(Code::kInvalidPipeline, file.string() + " grew past " +
                                                std::to_string(kMaxPipelineBytes >> 20) +
                                                " MiB while being read");
    }
  }
  return ParsePipeline(text, file);
}

Result<std::vector<fs::path>> ResolveLibraries(const Pipeline& pipeline,
                                               const std::vector<fs::path>& search_dirs) {
  std::vector<fs::path> out;
  std::error_code ec;
  for (const std::string& entry : pipeline.libraries) {
    bool is_path = entry.find('/') != std::string::npos ||
                   (entry.size() > 3 && entry.compare(entry.size() - 3, 3, ".so") == 0);
    if (is_path) {
      fs::path p = (pipeline.file.parent_path() / entry).lexically_normal();
      if (!fs::exists(p, ec)) {
        return Status(Code::kLibraryError, pipeline.file.string() + ": stage library '" + entry +
                                               "' not found at " + p.string());
      }
      out.push_back(p);
      continue;
    }
    std::optional<fs::path> found;
    std::string looked;
    for (const fs::path& dir : search_dirs) {
      for (const std::string& name : {"lib" + entry + ".so", entry + ".so"}) {
        fs::path candidate = dir / name;
        if (fs::exists(candidate, ec)) {
          found = candidate;
          break;
        }
      }
      if (found) break;
      looked += (looked.empty() ? "" : ", ") + dir.string();
    }
    if (!found) {
      return Status(
          Code::kLibraryError,
          pipeline.file.string() + ": stage library '" + entry + "' (lib" + entry +
              ".so) not found in: " + (looked.empty() ? "(no search directories)" : looked) +
              "; add its directory with --stage-path or STAGEKIT_STAGE_PATH");
    }
    out.push_back(*found);
  }
  return out;
}

Status ApplyResourceOverride(Pipeline& pipeline, std::string_view spec) {
  auto usage = [&](const std::string& why) {
    return Status(Code::kUsage, "--resources '" + std::string(spec) + "': " + why +
                                    "; write STAGE:KEY=VALUE[,KEY=VALUE...], e.g. "
                                    "'train:gpus=1,vm:g4dn.2xlarge=1', 'sample[*]:cpus=2' or "
                                    "'*:cpus=2'");
  };
  // The stage ends at the first ':' after its instance key, if it has one.
  std::size_t from = 0;
  const std::size_t bracket = spec.find('[');
  if (bracket != std::string_view::npos && bracket < spec.find(':')) {
    from = spec.find(']', bracket);
    if (from == std::string_view::npos) return usage("'[' without ']' in the stage name");
  }
  std::size_t colon = spec.find(':', from);
  if (colon == std::string_view::npos || colon == 0) return usage("no stage name before ':'");
  std::string target(spec.substr(0, colon));
  // A name, or a pattern where '*' matches any run ('*' alone: every stage).
  auto targeted = [&](const PipelineStage& st) {
    return target.find('*') == std::string::npos ? st.name == target
                                                 : util::WildMatch(target, st.name);
  };
  if (std::none_of(pipeline.stages.begin(), pipeline.stages.end(), targeted)) {
    return usage("the pipeline has no stage '" + target + "'");
  }
  std::string list(spec.substr(colon + 1));
  if (list.empty()) return usage("nothing to set");
  std::vector<std::pair<std::string, std::string>> settings;
  std::stringstream ss(list);
  for (std::string item; std::getline(ss, item, ',');) {
    std::size_t eq = item.rfind('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == item.size())
      return usage("'" + item + "' is not KEY=VALUE");
    settings.emplace_back(item.substr(0, eq), item.substr(eq + 1));
  }
  for (PipelineStage& st : pipeline.stages) {
    if (!targeted(st)) continue;
    Resources r = st.options.resources;
    for (const auto& [key, value] : settings) {
      if (key == "memory") {
        auto bytes = ParseBytes(value);
        if (!bytes.ok()) return usage(bytes.status().message());
        r.memory_bytes = *bytes;
        continue;
      }
      double amount = 0;
      try {
        std::size_t used = 0;
        amount = std::stod(value, &used);
        if (used != value.size()) throw std::invalid_argument(value);
      } catch (...) {
        return usage("'" + value + "' is not a number");
      }
      if (key == "cpus") {
        r.cpus = amount;
      } else if (key == "gpus") {
        r.gpus = amount;
      } else if (amount == 0) {
        r.custom.erase(key);
      } else {
        r.custom[key] = amount;
      }
    }
    if (Status s = r.Validate(); !s.ok()) return usage("stage '" + st.name + "': " + s.message());
    st.options.resources = r;
  }
  return OkStatus();
}

Status CheckStagesRegistered(const Pipeline& pipeline, const Registry& registry) {
  for (const PipelineStage& st : pipeline.stages) {
    if (registry.Find(st.stage) != nullptr) continue;
    std::string message = pipeline.file.string() + ":" + std::to_string(st.line) + ": stage '" +
                          st.name + "' uses unknown stage '" + st.stage + "'";
    std::vector<std::string> close = registry.Suggest(st.stage);
    if (!close.empty()) {
      message += "; did you mean ";
      for (std::size_t i = 0; i < close.size(); ++i) message += (i ? ", '" : "'") + close[i] + "'";
      message += "?";
    } else {
      message += "; is its library listed under 'libraries' or given with --stages?";
    }
    return Status(Code::kUnknownStage, message);
  }
  return OkStatus();
}

}  // namespace stagekit
