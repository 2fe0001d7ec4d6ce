// Finding the Ray installation of the machine stagekit runs on, at run time:
// a shipped package carries no path of the machine it was built on, and each
// node of a cluster may have Ray somewhere else (a virtual environment, a
// conda prefix, a system-wide pip install).
#include <unistd.h>

#include <cstdlib>
#include <sstream>
#include <string>

#include "stagekit/ray.h"
#include "util/files.h"
#include "util/process.h"
#include "util/text.h"

namespace stagekit {
namespace {

namespace fs = std::filesystem;

constexpr std::size_t kMaxPathEntries = 4096;  // of a $PATH-like search list
constexpr std::size_t kMaxVersionFile = 1 << 16;

bool IsExecutable(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec) && ::access(p.c_str(), X_OK) == 0;
}

// The interpreter a console script such as `ray` names on its first line
// ("#!/opt/conda/bin/python3"); pip writes "#!/bin/sh" and an `exec` line when
// the interpreter's path is too long for "#!". Empty when neither is there.
fs::path ScriptInterpreter(const fs::path& script) {
  auto text = util::ReadFile(script, 4096);
  if (!text.ok() || text->rfind("#!", 0) != 0) return {};
  std::string first = text->substr(2, text->find('\n') - 2);
  first = util::Trim(first);
  const std::string name = fs::path(first).filename().string();
  if (first.find(' ') == std::string::npos && name != "sh" && name != "bash") return first;
  const std::string exec_tag = "'''exec' ";
  std::size_t at = text->find(exec_tag);
  if (at == std::string::npos) return {};
  std::string rest = text->substr(at + exec_tag.size());
  rest = rest.substr(0, rest.find(' '));
  if (rest.size() >= 2 && rest.front() == '"' && rest.back() == '"')
    rest = rest.substr(1, rest.size() - 2);
  return rest;
}

// The `ray` package of the environment whose bin directory is `bin`: looked
// up beside it first (venv and conda layouts: <prefix>/lib/pythonX.Y/site-packages),
// else asked of its Python.
fs::path RayPackageOf(const fs::path& bin, const fs::path& python) {
  std::error_code ec;
  const fs::path lib = bin.parent_path() / "lib";
  for (fs::directory_iterator it(lib, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.rfind("python3", 0) != 0) continue;
    const fs::path pkg = it->path() / "site-packages" / "ray";
    if (fs::exists(pkg / "_version.py", ec)) return pkg;
  }
  if (python.empty()) return {};
  util::ChildSpec ask;
  ask.argv = {python.string(), "-c",
              "import importlib.util as u; s = u.find_spec('ray'); "
              "print(s.submodule_search_locations[0] if s else '')"};
  ask.timeout = std::chrono::seconds(60);
  util::ChildResult r = util::RunChild(ask);
  if (!r.exited || r.exit_code != 0) return {};
  return util::Trim(r.out);
}

// "2.60.0" from Ray's _version.py (`version = "2.60.0"`); "" if it says none.
std::string VersionIn(const fs::path& package) {
  auto text = util::ReadFile(package / "_version.py", kMaxVersionFile);
  if (!text.ok()) return {};
  std::istringstream lines(*text);
  for (std::string line; std::getline(lines, line);) {
    const std::string tag = "version = \"";
    if (line.rfind(tag, 0) != 0) continue;
    std::size_t end = line.find('"', tag.size());
    if (end != std::string::npos) return line.substr(tag.size(), end - tag.size());
  }
  return {};
}

fs::path BuildBinDir() {
#ifdef STAGEKIT_RAY_BIN_DIR
  return STAGEKIT_RAY_BIN_DIR;
#else
  return {};
#endif
}

}  // namespace

std::string RayBridgeVersion() {
#ifdef STAGEKIT_RAY_VERSION
  return STAGEKIT_RAY_VERSION;
#else
  return {};
#endif
}

Result<RayInstall> FindRay(const fs::path& bin_dir, const std::string& search_path) {
  const std::string want = RayBridgeVersion();
  const std::string install =
      "install ray[default]==" + (want.empty() ? std::string("<version>") : want) +
      " and ray-cpp of the same version (bash scripts/ray.sh does, in .venv), put its `ray` on "
      "PATH or set STAGEKIT_RAY_BIN_DIR to its bin directory";
  RayInstall found;
  if (!bin_dir.empty()) {
    found.bin_dir = bin_dir;
    found.found_by = "STAGEKIT_RAY_BIN_DIR";
    if (!IsExecutable(bin_dir / "ray")) {
      return Status(Code::kRayUnavailable, "the ray executor needs Ray, but `ray` is not in '" +
                                               bin_dir.string() + "' (STAGEKIT_RAY_BIN_DIR); " +
                                               install);
    }
  } else {
    std::istringstream dirs(search_path);
    std::size_t entries = 0;
    for (std::string dir; std::getline(dirs, dir, ':');) {
      if (++entries > kMaxPathEntries) break;
      if (dir.empty() || !fs::path(dir).is_absolute()) continue;
      if (IsExecutable(fs::path(dir) / "ray")) {
        found.bin_dir = dir;
        found.found_by = "PATH";
        break;
      }
    }
    // A build's own environment (scripts/ray.sh's .venv), for a build tree
    // used where it was built; a shipped package finds Ray on PATH.
    if (found.bin_dir.empty() && !BuildBinDir().empty() && IsExecutable(BuildBinDir() / "ray")) {
      found.bin_dir = BuildBinDir();
      found.found_by = "the build's environment";
    }
    if (found.bin_dir.empty()) {
      return Status(Code::kRayUnavailable,
                    "the ray executor needs Ray, but no `ray` is on PATH; " + install);
    }
  }
  for (const char* name : {"python", "python3"}) {
    if (IsExecutable(found.bin_dir / name)) {
      found.python = found.bin_dir / name;
      break;
    }
  }
  if (found.python.empty()) found.python = ScriptInterpreter(found.bin_dir / "ray");
  found.package = RayPackageOf(found.bin_dir, found.python);
  const std::string where =
      "the Ray in '" + found.bin_dir.string() + "' (found by " + found.found_by + ")";
  std::error_code ec;
  if (found.python.empty() || !IsExecutable(found.python) || found.package.empty() ||
      !fs::exists(found.package, ec)) {
    return Status(Code::kRayUnavailable, "cannot find the Python package of " + where +
                                             " (no python beside it, or it cannot import ray); " +
                                             install);
  }
  found.version = VersionIn(found.package);
  found.api_library = found.package / "cpp" / "lib" / "libray_api.so";
  if (!want.empty() && found.version != want) {
    return Status(Code::kRayUnavailable,
                  where + " is Ray " +
                      (found.version.empty() ? "of unknown version" : found.version) +
                      ", but this stagekit's Ray bridge was built for Ray " + want +
                      "; a bridge and a Ray of different versions crash: " + install);
  }
  if (!fs::exists(found.api_library, ec)) {
    return Status(Code::kRayUnavailable, where + " has no C++ API (" + found.api_library.string() +
                                             " is missing): install ray-cpp==" + found.version +
                                             " beside it");
  }
  return found;
}

}  // namespace stagekit
