// stagekit ship: stage a pipeline (or a folder) into a package Ray can unpack
// as a job's working_dir, named the way Ray names it.
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <thread>

#include "cli.h"
#include "deploy/ship.h"
#include "util/text.h"

namespace stagekit::cli {
namespace {

namespace fs = std::filesystem;

struct ShipCommand {
  std::string pipeline;
  LibraryOptions libs;
  ShipCli ship;
  std::string out = "stagekit-ship";
  std::string tree;
  bool json = false;
};

Status Ship(const ShipCommand& cmd) {
  const auto start = std::chrono::steady_clock::now();
  auto plan = PlanFromCommandLine(cmd.pipeline, cmd.libs, cmd.ship);
  if (!plan.ok()) return plan.status();
  for (const std::string& w : plan->warnings) std::cerr << "stagekit: warning: " << w << "\n";
  if (Status s = deploy::WritePackage(*plan, cmd.out, cmd.ship.level, Threads()); !s.ok()) return s;
  if (!cmd.tree.empty()) {
    if (Status s = deploy::Materialize(plan->tree, cmd.tree); !s.ok()) return s;
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const fs::path zip = fs::path(cmd.out) / plan->package;
  std::error_code ec;
  const auto zip_bytes = fs::file_size(zip, ec);
  Json summary = {
      {"package", plan->package},
      {"zip", zip.string()},
      {"manifest",
       (fs::path(cmd.out) / (fs::path(plan->package).stem().string() + ".manifest.json")).string()},
      {"files", plan->tree.file_count()},
      {"bytes", plan->tree.file_bytes()},
      {"zip_bytes", ec ? 0 : zip_bytes},
      {"excluded", plan->tree.excluded().size()},
      {"excludes", cmd.ship.Patterns()},
      {"executables", plan->executables},
      {"warnings", plan->warnings},
      {"seconds", seconds}};
  if (!plan->pipeline.empty()) {
    summary["pipeline"] = plan->pipeline;
    summary["floor"] = plan->floor.ToJson();
    summary["bundled"] = plan->bundled.size();
  }
  if (!cmd.tree.empty()) summary["tree"] = cmd.tree;
  if (cmd.json) {
    std::cout << summary.dump(2) << std::endl;
    return OkStatus();
  }
  std::cout << plan->package << "\n";
  std::cerr << "stagekit: " << plan->tree.file_count() << " files, "
            << util::HumanBytes(plan->tree.file_bytes()) << " ("
            << util::HumanBytes(ec ? 0 : zip_bytes) << " zipped), " << plan->tree.excluded().size()
            << " paths excluded, in " << static_cast<int>(seconds * 1000) << " ms\n"
            << "stagekit: wrote " << zip.string() << " and its manifest"
            << (cmd.tree.empty() ? "" : " and the tree " + cmd.tree) << "\n";
  if (!plan->pipeline.empty()) {
    std::cerr << "stagekit: " << plan->bundled.size() << " libraries bundled; every node needs "
              << plan->floor.Describe() << " (its launcher checks)\n";
  }
  return OkStatus();
}

}  // namespace

int Threads() { return static_cast<int>(std::max(1u, std::thread::hardware_concurrency())); }

std::vector<std::string> ShipCli::Patterns() const {
  std::vector<std::string> out;
  if (!no_default_excludes) out = deploy::DefaultExcludes();
  out.insert(out.end(), excludes.begin(), excludes.end());
  return out;
}

void ShipCli::AddTo(CLI::App* cmd) {
  cmd->add_option("--root", root,
                  "The tree the package mirrors: inputs below it keep their relative place "
                  "(default: the pipeline's folder)");
  cmd->add_option("--include", includes,
                  "Also ship SRC (a file or folder, walked with the ignore rules) at PLACE in the "
                  "package; inputs below SRC are rewritten to PLACE")
      ->type_name("SRC[=PLACE]")
      ->allow_extra_args(false);  // one value per flag, taken as written ("[ab]" stays)
  cmd->add_option("--exclude", excludes,
                  "Leave out paths matching PATTERN (.gitignore syntax); .gitignore and "
                  ".rayignore files are honoured too")
      ->type_name("PATTERN")
      ->allow_extra_args(false);
  cmd->add_flag("--no-default-excludes", no_default_excludes,
                "Do not leave out .git, .venv, venv, __pycache__, build, dist, node_modules and "
                "tool caches");
  cmd->add_flag("--no-gitignore", no_gitignore,
                "Ignore .gitignore files (as RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1 does for Ray)");
  cmd->add_flag("--keep-debug", keep_debug,
                "Ship stagekit's own binaries with their debug info (stripped by default: "
                "workers do not need it and it can be most of the package)");
  cmd->add_option("--max-size", max_size, "Refuse packages whose files add up to more")
      ->default_val("100MiB");
  cmd->add_option("--level", level,
                  "Deflate level of the zip: 0 stores, as Ray's own packaging does (fastest on a "
                  "LAN); 1-9 compress, worth it through a slow link such as an SSM tunnel")
      ->default_val(0)
      ->check(CLI::Range(0, 9));
}

Result<deploy::ShipPlan> PlanFromCommandLine(const std::string& pipeline,
                                             const LibraryOptions& libs, const ShipCli& cli) {
  deploy::ShipOptions options;
  if (pipeline.empty()) return Status(Code::kUsage, "name a pipeline file, or --dir DIR");
  std::error_code ec;
  if (fs::is_directory(pipeline, ec)) {
    if (!cli.root.empty() || !cli.includes.empty()) {
      return Status(Code::kUsage, "--root and --include are for pipelines; " + pipeline +
                                      " is a folder, which is shipped as it is");
    }
    options.dir = pipeline;
  } else {
    std::vector<fs::path> libraries;
    auto p = LoadPipelineWithLibraries(pipeline, libs, libraries);
    if (!p.ok()) return p.status();
    options.pipeline = pipeline;
    options.libraries = libraries;
    options.root = cli.root;
    options.includes = cli.includes;
  }
  options.excludes = cli.excludes;
  options.default_excludes = !cli.no_default_excludes;
  const char* ignore = std::getenv("RAY_RUNTIME_ENV_IGNORE_GITIGNORE");
  options.gitignore = !cli.no_gitignore && !(ignore != nullptr && std::string(ignore) == "1");
  auto max = ParseBytes(cli.max_size);
  if (!max.ok()) return Status(Code::kUsage, "--max-size: " + max.status().message());
  options.max_bytes = *max;
  options.threads = Threads();
  options.strip_runtime = !cli.keep_debug;
  options.hash = false;  // WritePackage hashes while it writes the zip
  return deploy::PlanShip(options);
}

void SetShipCommand(CLI::App& app, Action& action) {
  auto cmd = std::make_shared<ShipCommand>();
  CLI::App* sub = app.add_subcommand(
      "ship",
      "Stage a pipeline (or a folder) into a package for a Ray job's working_dir: the pipeline, "
      "its stage libraries, stagekit's runtime and driver, its inputs; named _ray_pkg_<hash>.zip "
      "as Ray names it, with a manifest");
  sub->add_option("PIPELINE", cmd->pipeline,
                  "The pipeline to ship, or a folder to package as it is (like Ray's working_dir)")
      ->required();
  cmd->libs.AddTo(sub);
  cmd->ship.AddTo(sub);
  sub->add_option("-o,--out", cmd->out, "Where the package and its manifest go")
      ->default_val("stagekit-ship");
  sub->add_option("--tree", cmd->tree, "Also write the staged tree into this new folder");
  sub->add_flag("--json", cmd->json, "Print a JSON summary");
  sub->callback([cmd, &action] { action = [cmd] { return Ship(*cmd); }; });
}

}  // namespace stagekit::cli
