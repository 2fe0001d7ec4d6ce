// stagekit doctor: the pitfalls of a cluster, a pipeline, a runtime_env and
// the driver's environment, found before launch.
#include <unistd.h>

#include <cstdio>
#include <iostream>

#include "cli.h"
#include "deploy/bundle.h"
#include "operate/doctor.h"
#include "stagekit/pipeline.h"
#include "stagekit/runner.h"
#include "util/outcome.h"

extern char** environ;

namespace stagekit::cli {
namespace {

namespace fs = std::filesystem;

// What every node needs of glibc and libstdc++ to run a package of the
// pipeline (stagekit's own binaries, its stage libraries, what ship bundles
// for them); "" when that cannot be told (the findings say why, if it matters).
std::string PackageFloorLine(const std::string& pipeline_file) {
  auto pipeline = LoadPipeline(pipeline_file);
  if (!pipeline.ok()) return {};
  std::vector<fs::path> search = DefaultStageDirs();
  search.insert(search.begin(), pipeline->file.parent_path());
  auto libs = ResolveLibraries(*pipeline, search);
  if (!libs.ok()) return {};
  std::vector<fs::path> files = *libs;
  files.push_back(DefaultCli());
  files.push_back(LibraryPath());
  std::error_code ec;
  if (fs::exists(LibraryDir() / "libstagekit_ray.so", ec))
    files.push_back(LibraryDir() / "libstagekit_ray.so");
  auto floor = deploy::FloorOfPackage(files);
  if (!floor.ok()) return {};
  return "a package of this pipeline needs " + floor->Describe() +
         " on every node (`getconf GNU_LIBC_VERSION` there says its glibc; the package's "
         "launcher refuses an older node with exit 19)";
}

struct DoctorCommand {
  std::string pipeline;
  std::string cluster;
  std::string runtime_env;
  std::string max_size = "100MiB";
  bool json = false;
  bool list = false;
};

Status Doctor(const DoctorCommand& cmd) {
  if (cmd.list) {
    for (const operate::Check& c : operate::DoctorChecks()) {
      std::printf("%s %-24s %-7s %s\n", c.id, c.name, c.severity, c.about);
    }
    return OkStatus();
  }
  if (cmd.pipeline.empty() && cmd.cluster.empty() && cmd.runtime_env.empty()) {
    return Status(Code::kUsage,
                  "give a PIPELINE, --cluster SPEC_OR_YAML or --runtime-env FILE to check");
  }
  operate::DoctorOptions options;
  options.pipeline = cmd.pipeline;
  options.cluster = cmd.cluster;
  options.runtime_env = cmd.runtime_env;
  auto max = ParseBytes(cmd.max_size);
  if (!max.ok()) return Status(Code::kUsage, "--max-size: " + max.status().message());
  options.max_bytes = *max;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string kv = *e;
    size_t eq = kv.find('=');
    if (eq != std::string::npos) options.env[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  auto findings = operate::RunDoctor(options);
  if (!findings.ok()) return findings.status();
  int errors = 0, warnings = 0;
  for (const operate::Finding& f : *findings) (f.severity == "error" ? errors : warnings)++;
  if (cmd.json) {
    std::cout << operate::FindingsJson(*findings).dump(2) << std::endl;
  } else {
    for (const operate::Finding& f : *findings) {
      std::cout << f.file << (f.line > 0 ? ":" + std::to_string(f.line) : "") << ": " << f.severity
                << " " << f.id << " " << f.name << ": " << f.message << "\n    fix: " << f.fix
                << "\n";
    }
    if (!cmd.pipeline.empty()) {
      if (std::string line = PackageFloorLine(cmd.pipeline); !line.empty())
        std::cerr << "stagekit doctor: " << line << "\n";
    }
    std::cerr << "stagekit doctor: " << errors << " error" << (errors == 1 ? "" : "s") << ", "
              << warnings << " warning" << (warnings == 1 ? "" : "s") << "\n";
  }
  if (errors > 0) {
    return Status(util::kChecksFailed, std::to_string(errors) + " error" +
                                           (errors == 1 ? "" : "s") +
                                           " found; fix them before launching (see above)");
  }
  return OkStatus();
}

}  // namespace

void SetDoctorCommand(CLI::App& app, Action& action) {
  auto cmd = std::make_shared<DoctorCommand>();
  CLI::App* sub = app.add_subcommand(
      "doctor",
      "Check a cluster spec or autoscaler YAML, a pipeline, a runtime_env and this environment "
      "for the mistakes that hang runs or run up bills; exits 17 on errors (`--list` shows every "
      "check)");
  sub->add_option("PIPELINE", cmd->pipeline, "Pipeline file to check");
  sub->add_option("--cluster", cmd->cluster,
                  "A stagekit cluster spec or a Ray autoscaler YAML (stage resources are checked "
                  "against its node types)");
  sub->add_option("--runtime-env", cmd->runtime_env,
                  "A runtime_env as YAML or JSON (what `ray job submit --runtime-env` takes)");
  sub->add_option("--max-size", cmd->max_size, "The package cap to check against")
      ->default_val("100MiB");
  sub->add_flag("--json", cmd->json, "Print the findings as JSON");
  sub->add_flag("--list", cmd->list, "List every check with its id and severity");
  sub->callback([cmd, &action] { action = [cmd] { return Doctor(*cmd); }; });
}

}  // namespace stagekit::cli
