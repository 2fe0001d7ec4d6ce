// Where an installation's pieces are, found from libstagekit.so itself so
// that a build tree and any install prefix (lib or lib/<multiarch>) work.
#include <dlfcn.h>

#include <cstdlib>

#include "stagekit/pipeline.h"
#include "stagekit/runner.h"
#include "stagekit/version.h"

namespace stagekit {

namespace fs = std::filesystem;

fs::path LibraryPath() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&LibraryPath), &info) != 0 && info.dli_fname != nullptr) {
    return info.dli_fname;
  }
  return {};
}

fs::path LibraryDir() { return LibraryPath().parent_path(); }

namespace {
// `name` beside the current executable, or in the binary directory beside
// this library; empty when neither has it.
fs::path Installed(const char* name) {
  std::error_code ec;
  fs::path self = fs::read_symlink("/proc/self/exe", ec);
  if (!ec && self.filename() == name) return self;
  if (!ec && fs::exists(self.parent_path() / name, ec)) return self.parent_path() / name;
  for (const char* rel : {STAGEKIT_LIBDIR_TO_BINDIR, "../bin"}) {
    fs::path candidate = (LibraryDir() / rel / name).lexically_normal();
    if (fs::exists(candidate, ec)) return candidate;
  }
  return {};
}
}  // namespace

fs::path DefaultCli() {
  fs::path cli = Installed("stagekit");
  return cli.empty() ? fs::path("stagekit") : cli;  // from PATH
}

fs::path DefaultRunner() {
  fs::path lean = Installed("stagekit-stage");
  return lean.empty() ? DefaultCli() : lean;
}

std::vector<fs::path> DefaultStageDirs() {
  // Stage libraries install to <libdir>/stagekit/stages in the build tree and
  // in every install layout.
  std::error_code ec;
  fs::path dir = stagekit::LibraryDir() / "stagekit" / "stages";
  if (fs::is_directory(dir, ec)) return {dir};
  return {};
}

}  // namespace stagekit
