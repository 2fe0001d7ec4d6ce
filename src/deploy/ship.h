// `stagekit ship`: stage what a pipeline needs on the cluster (the pipeline,
// its stage libraries, the stagekit runtime and Ray bridge, the driver binary,
// its inputs, and whatever --include adds) into a package Ray can unpack as a
// job's working_dir, with input paths rewritten to their place in the package.
#ifndef STAGEKIT_DEPLOY_SHIP_H_
#define STAGEKIT_DEPLOY_SHIP_H_

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "deploy/bundle.h"
#include "deploy/package.h"
#include "stagekit/status.h"

namespace stagekit::deploy {

// Where stagekit's own files go in a package; the layout mirrors an install
// tree, so the shipped binary finds its libraries and stage libraries.
inline constexpr const char* kShipBinary = ".stagekit/bin/stagekit";
inline constexpr const char* kShipLibDir = ".stagekit/lib";
inline constexpr const char* kShipStageDir = ".stagekit/lib/stagekit/stages";

struct ShipOptions {
  std::filesystem::path pipeline;  // pipeline mode
  std::filesystem::path dir;       // directory mode: package this folder as Ray would
  // Pipeline mode: inputs must lie below it or below an --include (default:
  // the pipeline's folder). Paths in the package are relative to it.
  std::filesystem::path root;
  std::vector<std::string> includes;  // "SRC[=DEST]": a file or folder, DEST in the package
  std::vector<std::string> excludes;  // gitwildmatch patterns
  bool default_excludes = true;
  bool gitignore = true;
  std::uint64_t max_bytes = 100ull << 20;
  // Pipeline mode: the stage libraries, resolved (LoadPipelineWithLibraries);
  // the shipped pipeline names exactly these.
  std::vector<std::filesystem::path> libraries;
  int threads = 1;
  // Ship stagekit's own binaries without debug info (objcopy --strip-debug).
  bool strip_runtime = true;
  // Hash here (the package name is known when PlanShip returns), or leave it
  // to WritePackage, which hashes on other threads while it writes the zip.
  bool hash = true;
};

struct ShipPlan {
  Tree tree;
  std::string package;   // _ray_pkg_<hash>.zip
  std::string pipeline;  // pipeline mode: the rewritten pipeline's place in the package
  std::string name;      // pipeline mode: the pipeline's name
  std::vector<std::string> executables;  // places of files with an executable bit
  std::vector<std::string> warnings;
  // Pipeline mode: the shipped ELF files (as on this machine), what was
  // bundled for them, and the floor of all of it (see deploy/bundle.h).
  std::vector<std::filesystem::path> elf_sources;
  std::vector<NeededLibrary> bundled;
  Floor floor;
};

// Everything up to the package name: the keep list, the walks, the checks
// (unshipped inputs, escaping links, size cap) and the hashes. Writes nothing.
Result<ShipPlan> PlanShip(const ShipOptions& options);

// The package (`<dir>/<package>`) and its manifest (`<dir>/<stem>.manifest.json`).
// When the plan is not hashed yet, `threads` - 1 threads hash while this one
// writes the zip under a provisional name, and plan.package is set.
Status WritePackage(ShipPlan& plan, const std::filesystem::path& dir, int level, int threads = 2);

// "SRC[=DEST]" -> absolute SRC and DEST ("" when not given).
Result<std::pair<std::filesystem::path, std::string>> ParseInclude(const std::string& spec);

}  // namespace stagekit::deploy

#endif  // STAGEKIT_DEPLOY_SHIP_H_
