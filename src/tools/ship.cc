#include "tools/ship.h"

#include <fcntl.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <fstream>
#include <future>
#include <map>
#include <sstream>

#include "paths.h"
#include "process.h"
#include "stagekit/pipeline.h"

namespace fs = std::filesystem;

namespace stagekit::tools {
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

// The pipeline with its libraries and file inputs pointing into the package.
Result<std::string> RewritePipeline(
    const Pipeline& pipeline, const std::string& place,
    const std::vector<std::string>& library_places,
    const std::map<std::string, std::map<std::string, std::string>>& input_places) {
  YAML::Node doc;
  try {
    doc = YAML::LoadFile(pipeline.file.string());
  } catch (const YAML::Exception& e) {
    return Status(Code::kInvalidPipeline, pipeline.file.string() + ": " + e.what());
  }
  const fs::path here = fs::path(place).parent_path();
  auto relative = [&](const std::string& to) {
    return Generic(fs::path(to).lexically_relative(here));
  };
  YAML::Node libs(YAML::NodeType::Sequence);
  for (const std::string& lib : library_places) libs.push_back(relative(lib));
  doc["libraries"] = libs;
  if (!doc["name"]) doc["name"] = pipeline.name;  // the default came from the original file name
  for (YAML::Node st : doc["stages"]) {
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

// The bytes of `file` without debug sections (`objcopy --strip-debug`).
Result<std::string> StripDebug(const fs::path& file) {
  std::string tmpl = (fs::temp_directory_path() / "stagekit-strip-XXXXXX").string();
  int fd = ::mkstemp(tmpl.data());
  if (fd < 0)
    return Status(Code::kOutputError, "cannot make a temporary file to strip " + file.string());
  ::close(fd);
  internal::ChildSpec spec;
  spec.argv = {"objcopy", "--strip-debug", file.string(), tmpl};
  internal::ChildResult r = internal::RunChild(spec);
  std::string bytes;
  Status status;
  if (!r.spawn_status.ok() || !r.exited || r.exit_code != 0) {
    status = Status(Code::kInternal, "cannot strip debug info with objcopy (install binutils)");
  } else {
    std::ifstream in(tmpl, std::ios::binary);
    std::stringstream buf;
    buf << in.rdbuf();
    bytes = buf.str();
    if (!in || bytes.empty())
      status = Status(Code::kInternal, "objcopy wrote nothing for " + file.string());
  }
  std::error_code ec;
  fs::remove(tmpl, ec);
  if (!status.ok()) return status;
  return bytes;
}

}  // namespace

std::string ShellQuote(const std::string& word) {
  if (!word.empty() && word.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                              "0123456789_-./=:,@%+") == std::string::npos) {
    return word;
  }
  std::string out = "'";
  for (char c : word) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

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
  ShipPlan plan;
  auto sets = ExcludeSets(options);
  if (!sets.ok()) return sets.status();
  WalkOptions walk;
  walk.excludes = *sets;
  walk.gitignore = options.gitignore;
  std::error_code ec;

  if (!options.dir.empty()) {
    if (!fs::is_directory(options.dir, ec)) {
      return Status(Code::kInputError, options.dir.string() + " is not a directory");
    }
    if (Status s = plan.tree.AddDirectory(options.dir, "", walk, "in " + options.dir.string());
        !s.ok()) {
      return s;
    }
  } else {
    auto pipeline = LoadPipeline(options.pipeline);
    if (!pipeline.ok()) return pipeline.status();
    fs::path root = fs::weakly_canonical(
        fs::absolute(options.root.empty() ? pipeline->file.parent_path() : options.root), ec);
    if (ec || !fs::is_directory(root, ec)) {
      return Status(Code::kUsage, "--root " + options.root.string() + " is not a directory");
    }
    const fs::path pipeline_file = fs::weakly_canonical(pipeline->file, ec);
    if (!IsWithin(pipeline_file, root)) {
      return Status(Code::kUsage, "the pipeline " + pipeline->file.string() +
                                      " is not inside --root " + root.string());
    }
    plan.pipeline = Generic(pipeline_file.lexically_relative(root));
    plan.name = pipeline->name;

    // --include: walked folders and single files, at their place below the
    // root or where '=' puts them.
    std::vector<Include> includes;
    for (const std::string& spec : options.includes) {
      auto parsed = ParseInclude(spec);
      if (!parsed.ok()) return parsed.status();
      Include inc{parsed->first, parsed->second, fs::is_directory(parsed->first, ec)};
      if (inc.dest.empty()) {
        if (!IsWithin(inc.source, root)) {
          return Status(Code::kUsage,
                        "--include " + spec + " is outside the tree " + root.string() +
                            "; say where it goes in the package: --include " + spec + "=PLACE");
        }
        inc.dest = inc.source == root ? "" : Generic(inc.source.lexically_relative(root));
      }
      const std::string rule = "--include " + spec;
      Status s = inc.directory ? plan.tree.AddDirectory(inc.source, inc.dest, walk, rule)
                               : plan.tree.AddFile(inc.source, inc.dest, rule);
      if (!s.ok()) return s;
      includes.push_back(std::move(inc));
    }

    // stagekit itself: the driver, its runtime library and the Ray bridge,
    // without their debug info unless asked (workers do not need it, and it
    // is most of their size in a RelWithDebInfo build).
    auto add_runtime = [&](const fs::path& file, const std::string& place,
                           const std::string& rule) -> Status {
      if (!options.strip_runtime) return plan.tree.AddFile(file, place, rule);
      auto stripped = StripDebug(file);
      if (!stripped.ok()) {
        plan.warnings.push_back(stripped.status().message() + "; shipping " + file.string() +
                                " with its debug info");
        return plan.tree.AddFile(file, place, rule);
      }
      const bool executable =
          (fs::status(file, ec).permissions() & fs::perms::owner_exec) != fs::perms::none;
      return plan.tree.AddContent(place, std::move(*stripped), executable,
                                  rule + " (" + file.string() + ", debug info stripped)");
    };
    fs::path self = fs::read_symlink("/proc/self/exe", ec);
    fs::path runtime = internal::LibraryPath();
    if (self.filename() != "stagekit") self = internal::DefaultCli();
    if (Status s = add_runtime(self, kShipBinary, "stagekit driver"); !s.ok()) return s;
    if (Status s =
            add_runtime(runtime, std::string(kShipLibDir) + "/" + runtime.filename().string(),
                        "stagekit runtime");
        !s.ok()) {
      return s;
    }
    fs::path bridge = internal::LibraryDir() / "libstagekit_ray.so";
    if (fs::exists(bridge, ec)) {
      if (Status s =
              add_runtime(bridge, std::string(kShipLibDir) + "/libstagekit_ray.so", "Ray bridge");
          !s.ok()) {
        return s;
      }
    } else {
      plan.warnings.push_back(
          "this stagekit was built without the Ray bridge; the package can "
          "run the pipeline in-process or in subprocesses only");
    }

    std::vector<std::string> library_places;
    for (const fs::path& lib : options.libraries) {
      std::string place = std::string(kShipStageDir) + "/" + lib.filename().string();
      if (Status s = plan.tree.AddFile(lib, place, "stage library"); !s.ok()) return s;
      library_places.push_back(place);
    }

    // Inputs: their place below an --include, else below the root.
    std::map<std::string, std::map<std::string, std::string>> input_places;
    for (const PipelineStage& st : pipeline->stages) {
      for (const auto& [name, ref] : st.inputs) {
        if (!ref.from_stage.empty()) continue;
        fs::path file = fs::weakly_canonical(ref.file, ec);
        std::string place;
        for (const Include& inc : includes) {
          if (inc.directory ? IsWithin(file, inc.source) : file == inc.source) {
            place = inc.directory
                        ? Generic(fs::path(inc.dest) / file.lexically_relative(inc.source))
                        : inc.dest;
            if (!place.empty() && place.front() == '/') place.erase(0, 1);
            break;
          }
        }
        if (place.empty() && IsWithin(file, root)) place = Generic(file.lexically_relative(root));
        const std::string where = pipeline->file.string() + ":" + std::to_string(st.line) +
                                  ": stage '" + st.name + "' input '" + name + "': ";
        if (place.empty()) {
          return Status(Code::kInputError,
                        where + ref.file.string() + " is outside the shipped tree " +
                            root.string() + " and no --include covers it; ship it with --include " +
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
    auto text = RewritePipeline(*pipeline, plan.pipeline, library_places, input_places);
    if (!text.ok()) return text.status();
    if (Status s = plan.tree.AddContent(plan.pipeline, std::move(*text), false,
                                        "pipeline (rewritten " + pipeline->file.string() + ")",
                                        /*replace=*/true);
        !s.ok()) {
      return s;
    }
  }

  if (Status s = CheckSizeCap(plan.tree, options.max_bytes); !s.ok()) return s;
  if (options.hash) {
    auto name = HashTree(plan.tree, options.threads);
    if (!name.ok()) return name.status();
    plan.package = *name;
  }
  for (const auto& [path, e] : plan.tree.entries()) {
    if (!e.directory && e.executable) plan.executables.push_back(path);
  }
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
  return WriteFileAtomically(manifest, ManifestJson(plan.tree, plan.package).dump(1) + "\n");
}

}  // namespace stagekit::tools
