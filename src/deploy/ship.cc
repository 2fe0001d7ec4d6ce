#include "deploy/ship.h"

#include <fcntl.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>
#include <limits>

#include <algorithm>
#include <fstream>
#include <functional>
#include <future>
#include <map>
#include <set>
#include <sstream>

#include "stagekit/executor.h"
#include "stagekit/pipeline.h"
#include "stagekit/runner.h"
#include "util/files.h"
#include "util/process.h"
#include "util/text.h"
#include "util/yaml.h"

namespace fs = std::filesystem;

namespace stagekit::deploy {
namespace {

std::string Generic(const fs::path& p) { return p.lexically_normal().generic_string(); }

Result<std::vector<std::shared_ptr<const PatternSet>>> ExcludeSets(const ShipOptions& options) {
  std::vector<std::shared_ptr<const PatternSet>> sets;
  if (options.default_excludes) {
    auto set = PatternSet::Compile(DefaultExcludes(), "default");
    if (!set.ok()) return set.status();
    sets.push_back(*set);
  }
  if (!options.excludes.empty()) {
    auto set = PatternSet::Compile(options.excludes, "--exclude");
    if (!set.ok()) return set.status();
    sets.push_back(*set);
  }
  return sets;
}

struct Include {
  fs::path source;   // canonical
  std::string dest;  // in the package
  bool directory = false;
};

// A foreach stage's input template ("/data/{name}.txt") pointed into the
// package. Ship maps whole folders to places, so each instance's file keeps
// its path below the folder it came from: the template's folder part is
// replaced by the place, checked against every instance's (file, place).
Result<std::string> TemplatePlace(const std::string& tmpl,
                                  const std::vector<std::pair<std::string, std::string>>& made) {
  const auto& [file, place] = made.front();
  std::size_t common = 0;  // the longest common suffix of file and place
  while (common < file.size() && common < place.size() &&
         file[file.size() - 1 - common] == place[place.size() - 1 - common]) {
    ++common;
  }
  const std::string from = file.substr(0, file.size() - common);
  const std::string to = place.substr(0, place.size() - common);
  const bool fits = tmpl.compare(0, from.size(), from) == 0 && tmpl.find('{') >= from.size();
  for (const auto& [f, p] : made) {
    if (!fits || f.compare(0, from.size(), from) != 0 || p.compare(0, to.size(), to) != 0 ||
        f.substr(from.size()) != p.substr(to.size())) {
      return Status(Code::kInputError,
                    "cannot point the input '" + tmpl +
                        "' of a foreach stage into the package: "
                        "its instances' files are not all below one shipped folder; ship their "
                        "common folder with --include DIR=PLACE");
    }
  }
  return to + tmpl.substr(from.size());
}

// A foreach stage's file inputs: each one's template pointed into the
// package where its instances' files went (an input without {names} is the
// same file for every instance).
Status RewriteForeachInputs(const Pipeline& pipeline, YAML::Node st,
                            const std::map<std::string, std::map<std::string, std::string>>& places,
                            const std::function<std::string(const std::string&)>& relative) {
  const std::string prefix = st["name"].as<std::string>("") + "[";
  std::map<std::string, std::vector<std::pair<std::string, std::string>>> made;  // by input
  for (const PipelineStage& instance : pipeline.stages) {
    if (instance.name.compare(0, prefix.size(), prefix) != 0) continue;
    auto it = places.find(instance.name);
    if (it == places.end()) continue;
    for (const auto& [input, place] : it->second) {
      made[input].emplace_back(instance.inputs.at(input).file.string(), place);
    }
  }
  YAML::Node inputs = st["inputs"];
  for (const auto& [input, files] : made) {
    YAML::Node value = inputs[input].IsMap() ? inputs[input]["file"] : inputs[input];
    const std::string tmpl =
        (pipeline.file.parent_path() / value.as<std::string>("")).lexically_normal().string();
    auto place = TemplatePlace(tmpl, files);
    if (!place.ok()) return place.status();
    if (inputs[input].IsMap()) {
      inputs[input]["file"] = relative(*place);
    } else {
      inputs[input] = relative(*place);
    }
  }
  return OkStatus();
}

// The pipeline with its libraries and file inputs pointing into the package.
Result<std::string> RewritePipeline(
    const Pipeline& pipeline, const std::string& place,
    const std::vector<std::string>& library_places,
    const std::map<std::string, std::map<std::string, std::string>>& input_places) {
  Result<YAML::Node> loaded = util::LoadYamlFile(pipeline.file, Code::kInvalidPipeline);
  if (!loaded.ok()) return loaded.status();
  YAML::Node doc = *loaded;
  const fs::path here = fs::path(place).parent_path();
  auto relative = [&](const std::string& to) {
    return Generic(fs::path(to).lexically_relative(here));
  };
  YAML::Node libs(YAML::NodeType::Sequence);
  for (const std::string& lib : library_places) libs.push_back(relative(lib));
  doc["libraries"] = libs;
  if (!doc["name"]) doc["name"] = pipeline.name;  // the default came from the original file name
  for (YAML::Node st : doc["stages"]) {
    if (st["foreach"]) {
      if (Status s = RewriteForeachInputs(pipeline, st, input_places, relative); !s.ok()) return s;
      continue;
    }
    auto it = input_places.find(st["name"].as<std::string>());
    if (it == input_places.end()) continue;
    YAML::Node inputs = st["inputs"];
    for (const auto& [input, to] : it->second) {
      if (inputs[input].IsMap()) {
        inputs[input]["file"] = relative(to);
      } else {
        inputs[input] = relative(to);
      }
    }
  }
  YAML::Emitter out;
  out << doc;
  return "# Written by `stagekit ship` from " + pipeline.file.filename().string() +
         ": libraries and inputs point into the package.\n" + out.c_str() + "\n";
}

using InputPlaces = std::map<std::string, std::map<std::string, std::string>>;

// Directory mode: the folder as it is, walked with the ignore rules.
Status AddFolder(const ShipOptions& options, const WalkOptions& walk, ShipPlan& plan) {
  std::error_code ec;
  if (!fs::is_directory(options.dir, ec)) {
    return Status(Code::kInputError, options.dir.string() + " is not a directory");
  }
  return plan.tree.AddDirectory(options.dir, "", walk, "in " + options.dir.string());
}

// The canonical tree the package mirrors, which must hold the pipeline; sets its place and name.
Result<fs::path> ShippedRoot(const ShipOptions& options, const Pipeline& pipeline, ShipPlan& plan) {
  std::error_code ec;
  fs::path root = fs::weakly_canonical(
      fs::absolute(options.root.empty() ? pipeline.file.parent_path() : options.root), ec);
  if (ec || !fs::is_directory(root, ec)) {
    return Status(Code::kUsage, "--root " + options.root.string() + " is not a directory");
  }
  const fs::path pipeline_file = fs::weakly_canonical(pipeline.file, ec);
  if (!util::IsWithin(pipeline_file, root)) {
    return Status(Code::kUsage, "the pipeline " + pipeline.file.string() +
                                    " is not inside --root " + root.string());
  }
  plan.pipeline = Generic(pipeline_file.lexically_relative(root));
  plan.name = pipeline.name;
  return root;
}

// --include: walked folders and single files, below the root or where '=' puts them.
Result<std::vector<Include>> AddIncludes(const ShipOptions& options, const fs::path& root,
                                         const WalkOptions& walk, ShipPlan& plan) {
  std::error_code ec;
  std::vector<Include> includes;
  for (const std::string& spec : options.includes) {
    auto parsed = ParseInclude(spec);
    if (!parsed.ok()) return parsed.status();
    Include inc{parsed->first, parsed->second, fs::is_directory(parsed->first, ec)};
    if (inc.dest.empty()) {
      if (!util::IsWithin(inc.source, root)) {
        return Status(Code::kUsage, "--include " + spec + " is outside the tree " + root.string() +
                                        "; say where it goes in the package: --include " + spec +
                                        "=PLACE");
      }
      inc.dest = inc.source == root ? "" : Generic(inc.source.lexically_relative(root));
    }
    const std::string rule = "--include " + spec;
    Status s = inc.directory ? plan.tree.AddDirectory(inc.source, inc.dest, walk, rule)
                             : plan.tree.AddFile(inc.source, inc.dest, rule);
    if (!s.ok()) return s;
    includes.push_back(std::move(inc));
  }
  return includes;
}

// One of stagekit's own ELF files, stripped unless --keep-debug, looking for
// libraries at `runpath` (in the package) only.
Status AddRuntimeFile(const ShipOptions& options, const fs::path& file, const std::string& place,
                      const std::string& rule, const std::string& runpath, ShipPlan& plan) {
  auto prepared = PrepareElf(file, options.strip_runtime, runpath);
  if (!prepared.ok()) return prepared.status();
  std::error_code ec;
  const bool executable =
      (fs::status(file, ec).permissions() & fs::perms::owner_exec) != fs::perms::none;
  plan.elf_sources.push_back(file);
  return plan.tree.AddContent(
      place, std::move(*prepared), executable,
      rule + " (" + file.string() + (options.strip_runtime ? ", debug info stripped)" : ")"));
}

// stagekit itself: the driver, its runtime library and the Ray bridge (workers need no debug info).
Status AddRuntime(const ShipOptions& options, ShipPlan& plan) {
  std::error_code ec;
  fs::path self = fs::read_symlink("/proc/self/exe", ec);
  fs::path runtime = stagekit::LibraryPath();
  if (self.filename() != "stagekit") self = stagekit::DefaultCli();
  if (Status s =
          AddRuntimeFile(options, self, kShipBinary, "stagekit driver", "$ORIGIN/../lib", plan);
      !s.ok()) {
    return s;
  }
  // The lean stage runner the subprocess executor starts (DefaultRunner finds
  // it beside the driver); without it the driver's own `stagekit stage` does
  // the job, at the start-up cost of the whole command line.
  const fs::path runner = self.parent_path() / "stagekit-stage";
  if (fs::exists(runner, ec)) {
    const std::string place = (fs::path(kShipBinary).parent_path() / "stagekit-stage").string();
    if (Status s = AddRuntimeFile(options, runner, place, "stage runner", "$ORIGIN/../lib", plan);
        !s.ok()) {
      return s;
    }
  }
  if (Status s = AddRuntimeFile(options, runtime,
                                std::string(kShipLibDir) + "/" + runtime.filename().string(),
                                "stagekit runtime", "$ORIGIN", plan);
      !s.ok()) {
    return s;
  }
  fs::path bridge = stagekit::LibraryDir() / "libstagekit_ray.so";
  if (!fs::exists(bridge, ec)) {
    plan.warnings.push_back(
        "this stagekit was built without the Ray bridge; the package can "
        "run the pipeline in-process or in subprocesses only");
    return OkStatus();
  }
  return AddRuntimeFile(options, bridge, std::string(kShipLibDir) + "/libstagekit_ray.so",
                        "Ray bridge", "$ORIGIN", plan);
}

// The stage libraries, in kShipStageDir; returns their places in the package.
Result<std::vector<std::string>> AddLibraries(const ShipOptions& options, ShipPlan& plan) {
  std::vector<std::string> library_places;
  for (const fs::path& lib : options.libraries) {
    std::string place = std::string(kShipStageDir) + "/" + lib.filename().string();
    // Its run path becomes the package's library folder, where what it needs is bundled.
    auto prepared = PrepareElf(lib, false, "$ORIGIN/../..");
    if (!prepared.ok()) return prepared.status();
    plan.elf_sources.push_back(lib);
    if (Status s = plan.tree.AddContent(place, std::move(*prepared), false,
                                        "stage library (" + lib.string() + ")");
        !s.ok()) {
      return s;
    }
    library_places.push_back(place);
  }
  return library_places;
}

// What the shipped ELF files need beyond every node's libraries, bundled into
// the library folder with $ORIGIN run paths; the floor of them all; and the
// launcher that checks it on the node.
Status AddBundle(ShipPlan& plan) {
  std::set<std::string> provided;
  for (const fs::path& f : plan.elf_sources) provided.insert(f.filename().string());
  provided.insert("libstagekit.so");  // the runtime, shipped under its own file name
  auto needed = LibrariesToBundle(plan.elf_sources, provided);
  if (!needed.ok()) return needed.status();
  for (const NeededLibrary& lib : *needed) {
    auto prepared = PrepareElf(lib.path, false, "$ORIGIN");
    if (!prepared.ok()) return prepared.status();
    std::string users;
    for (const std::string& by : lib.needed_by) users += (users.empty() ? "" : ", ") + by;
    const std::string rule =
        "bundled library (" + lib.path.string() + ", needed by " + users + ", not on every node)";
    if (Status s = plan.tree.AddContent(std::string(kShipLibDir) + "/" + lib.soname,
                                        std::move(*prepared), false, rule);
        !s.ok()) {
      return s;
    }
  }
  plan.bundled = std::move(needed).value();
  std::vector<fs::path> shipped = plan.elf_sources;
  for (const NeededLibrary& lib : plan.bundled) shipped.push_back(lib.path);
  auto floor = FloorOfFiles(shipped);  // ldd has run: the bundle is known
  if (!floor.ok()) return floor.status();
  plan.floor = *floor;
  if (Status s = plan.tree.AddContent(kFloorFile, FloorFileText(plan.floor), false,
                                      "the oldest glibc and libstdc++ the package runs with");
      !s.ok()) {
    return s;
  }
  return plan.tree.AddContent(kLauncher, LauncherScript(), true,
                              "launcher: checks the node against the floor, runs stagekit");
}

// An input's place: below the --include that covers it, else below the root; "" if neither does.
std::string InputPlace(const fs::path& file, const std::vector<Include>& includes,
                       const fs::path& root) {
  std::string place;
  for (const Include& inc : includes) {
    if (inc.directory ? util::IsWithin(file, inc.source) : file == inc.source) {
      place = inc.directory ? Generic(fs::path(inc.dest) / file.lexically_relative(inc.source))
                            : inc.dest;
      if (!place.empty() && place.front() == '/') place.erase(0, 1);
      break;
    }
  }
  if (place.empty() && util::IsWithin(file, root)) place = Generic(file.lexically_relative(root));
  return place;
}

// The stages' file inputs at their InputPlace; returns stage -> input -> place.
Result<InputPlaces> AddInputs(const Pipeline& pipeline, const fs::path& root,
                              const std::vector<Include>& includes, ShipPlan& plan) {
  std::error_code ec;
  InputPlaces input_places;
  for (const PipelineStage& st : pipeline.stages) {
    for (const auto& [name, ref] : st.inputs) {
      if (!ref.from_stage.empty()) continue;
      // A foreach over a stage's items names its files by items not known
      // yet: such an input is shipped as written (docs/deploy.md).
      if (!st.foreach_from.empty() && ref.file.string().find('{') != std::string::npos) continue;
      fs::path file = fs::weakly_canonical(ref.file, ec);
      const std::string place = InputPlace(file, includes, root);
      const std::string where = pipeline.file.string() + ":" + std::to_string(st.line) +
                                ": stage '" + st.name + "' input '" + name + "': ";
      if (place.empty()) {
        return Status(Code::kInputError,
                      where + ref.file.string() + " is outside the shipped tree " + root.string() +
                          " and no --include covers it; ship it with --include " +
                          ref.file.parent_path().string() + "=PLACE (or move it under the tree)");
      }
      if (!fs::is_regular_file(file, ec)) {
        return Status(Code::kInputError, where + ref.file.string() + " does not exist");
      }
      if (Status s = plan.tree.AddFile(file, place, "input '" + name + "' of stage " + st.name);
          !s.ok()) {
        return s;
      }
      input_places[st.name][name] = place;
    }
  }
  return input_places;
}

// The pipeline, rewritten to point into the package, at plan.pipeline.
Status AddRewrittenPipeline(const Pipeline& pipeline,
                            const std::vector<std::string>& library_places,
                            const InputPlaces& input_places, ShipPlan& plan) {
  auto text = RewritePipeline(pipeline, plan.pipeline, library_places, input_places);
  if (!text.ok()) return text.status();
  return plan.tree.AddContent(plan.pipeline, std::move(*text), false,
                              "pipeline (rewritten " + pipeline.file.string() + ")",
                              /*replace=*/true);
}

// Pipeline mode: the includes, stagekit, the stage libraries, the inputs and the pipeline.
Status AddPipeline(const ShipOptions& options, const WalkOptions& walk, ShipPlan& plan) {
  auto pipeline = LoadPipeline(options.pipeline);
  if (!pipeline.ok()) return pipeline.status();
  auto root = ShippedRoot(options, *pipeline, plan);
  if (!root.ok()) return root.status();
  auto includes = AddIncludes(options, *root, walk, plan);
  if (!includes.ok()) return includes.status();
  if (Status s = AddRuntime(options, plan); !s.ok()) return s;
  auto library_places = AddLibraries(options, plan);
  if (!library_places.ok()) return library_places.status();
  if (Status s = AddBundle(plan); !s.ok()) return s;
  auto input_places = AddInputs(*pipeline, *root, *includes, plan);
  if (!input_places.ok()) return input_places.status();
  return AddRewrittenPipeline(*pipeline, *library_places, *input_places, plan);
}

// The size cap, the package name (when options.hash) and the executables' places.
Status FinishPlan(const ShipOptions& options, ShipPlan& plan) {
  if (Status s = CheckSizeCap(plan.tree, options.max_bytes); !s.ok()) return s;
  if (options.hash) {
    auto name = HashTree(plan.tree, options.threads);
    if (!name.ok()) return name.status();
    plan.package = *name;
  }
  for (const auto& [path, e] : plan.tree.entries()) {
    if (!e.directory && e.executable) plan.executables.push_back(path);
  }
  return OkStatus();
}

}  // namespace

Result<std::pair<fs::path, std::string>> ParseInclude(const std::string& spec) {
  std::string src = spec, dest;
  if (size_t eq = spec.find('='); eq != std::string::npos) {
    src = spec.substr(0, eq);
    dest = Generic(spec.substr(eq + 1));
    if (dest.empty() || dest == "." || fs::path(dest).is_absolute() || dest.rfind("..", 0) == 0) {
      return Status(Code::kUsage, "--include " + spec +
                                      ": the place after '=' must be a relative path inside the "
                                      "package, such as data/corpus");
    }
  }
  std::error_code ec;
  fs::path abs = fs::weakly_canonical(fs::absolute(src), ec);
  if (ec || !fs::exists(abs, ec)) {
    return Status(Code::kInputError, "--include " + spec + ": " + src + " does not exist");
  }
  return std::make_pair(abs, dest);
}

Result<ShipPlan> PlanShip(const ShipOptions& options) {
  auto sets = ExcludeSets(options);
  if (!sets.ok()) return sets.status();
  WalkOptions walk;
  walk.excludes = *sets;
  walk.gitignore = options.gitignore;
  ShipPlan plan;
  if (Status s =
          options.dir.empty() ? AddPipeline(options, walk, plan) : AddFolder(options, walk, plan);
      !s.ok()) {
    return s;
  }
  if (Status s = FinishPlan(options, plan); !s.ok()) return s;
  return plan;
}

Status WritePackage(ShipPlan& plan, const fs::path& dir, int level, int threads) {
  std::error_code ec;
  if (plan.package.empty()) {
    // The name needs every file's hash; the zip does not. Both read the same
    // files, on different threads, and the zip gets its name at the end.
    auto hashing = std::async(std::launch::async, [&plan, threads] {
      return HashTree(plan.tree, std::max(1, threads - 1), /*keep_bytes=*/0);
    });
    const fs::path pending = dir / (".pending-" + std::to_string(::getpid()) + ".zip");
    Status written = WriteZip(plan.tree, pending, level);
    auto name = hashing.get();
    if (!written.ok() || !name.ok()) {
      fs::remove(pending, ec);
      return written.ok() ? name.status() : written;
    }
    plan.package = *name;
    fs::rename(pending, dir / plan.package, ec);
    if (ec) {
      const std::string why = ec.message();
      fs::remove(pending, ec);
      return Status(Code::kOutputError,
                    "cannot write " + (dir / plan.package).string() + ": " + why);
    }
  } else if (!fs::exists(dir / plan.package, ec)) {  // content-addressed: one there is this one
    if (Status s = WriteZip(plan.tree, dir / plan.package, level); !s.ok()) return s;
  }
  const fs::path manifest = dir / (fs::path(plan.package).stem().string() + ".manifest.json");
  Json doc = ManifestJson(plan.tree, plan.package);
  if (!plan.pipeline.empty()) {
    doc["floor"] = plan.floor.ToJson();
    Json bundled = Json::array();
    for (const NeededLibrary& lib : plan.bundled) {
      bundled.push_back({{"soname", lib.soname},
                         {"from", lib.path.string()},
                         {"needed_by", lib.needed_by},
                         {"place", std::string(kShipLibDir) + "/" + lib.soname}});
    }
    doc["bundled"] = std::move(bundled);
    doc["not_bundled"] = NodeLibraries();
  }
  return util::WriteFileAtomically(manifest, doc.dump(1) + "\n");
}

}  // namespace stagekit::deploy
