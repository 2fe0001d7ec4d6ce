#include "deploy/bundle.h"

#include <unistd.h>

#include <algorithm>
#include <limits>
#include <map>
#include <sstream>

#include "util/files.h"
#include "util/outcome.h"
#include "util/process.h"
#include "util/text.h"

namespace fs = std::filesystem;

namespace stagekit::deploy {
namespace {

constexpr std::size_t kMaxToolOutput = 16 << 20;  // of ldd's or objdump's answer

// The soname without its version suffix: "libm.so.6" -> "libm.so".
std::string Unversioned(const std::string& soname) {
  std::size_t so = soname.find(".so");
  return so == std::string::npos ? soname : soname.substr(0, so + 3);
}

util::ChildResult RunTool(const std::vector<std::string>& argv) {
  util::ChildSpec spec;
  spec.argv = argv;
  spec.cancelled = util::Interrupted;
  spec.timeout = std::chrono::seconds(120);
  spec.stdout_keep = kMaxToolOutput;
  return util::RunChild(spec);
}

// A temporary file for objcopy and patchelf to work on; removed on scope exit.
class TempCopy {
 public:
  static Result<TempCopy> Make(const fs::path& of) {
    std::error_code ec;
    const fs::path dir = fs::temp_directory_path(ec);  // $TMPDIR; an unusable one: /tmp
    std::string tmpl = ((ec ? fs::path("/tmp") : dir) / "stagekit-elf-XXXXXX").string();
    int fd = ::mkstemp(tmpl.data());
    if (fd < 0) {
      return Status(Code::kOutputError, "cannot make a temporary file to prepare " + of.string() +
                                            " for the package; check TMPDIR");
    }
    ::close(fd);
    TempCopy t;
    t.path_ = tmpl;
    return t;
  }
  TempCopy() = default;
  TempCopy(TempCopy&& o) noexcept : path_(std::exchange(o.path_, {})) {}
  TempCopy& operator=(TempCopy&&) = delete;
  ~TempCopy() {
    std::error_code ec;
    if (!path_.empty()) fs::remove(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

Status ToolFailed(const util::ChildResult& r, const std::string& what, const std::string& hint) {
  std::string why = util::Trim(util::Tail(r.err, 300));
  if (!r.spawn_status.ok()) why = r.spawn_status.message();
  return Status(Code::kInternal, what + (why.empty() ? "" : ": " + why) + "; " + hint);
}

}  // namespace

const std::vector<std::string>& NodeLibraries() {
  static const std::vector<std::string> libs = {
      "libc.so",       "libm.so",     "libdl.so",           "librt.so",
      "libpthread.so", "libutil.so",  "libresolv.so",       "libnsl.so",
      "libstdc++.so",  "libgcc_s.so", "ld-linux-x86-64.so", "ld-linux-aarch64.so",
      "linux-vdso.so", "libcuda.so",  "libnvidia-ml.so",    "libray_api.so"};
  return libs;
}

bool OnEveryNode(const std::string& soname) {
  const std::string base = Unversioned(fs::path(soname).filename().string());
  for (const std::string& lib : NodeLibraries()) {
    if (base == lib) return true;
  }
  return false;
}

Result<std::vector<NeededLibrary>> LibrariesToBundle(const std::vector<fs::path>& files,
                                                     const std::set<std::string>& provided) {
  std::vector<NeededLibrary> out;
  std::map<std::string, std::size_t> seen;  // soname -> its place in `out`
  for (const fs::path& file : files) {
    util::ChildResult r = RunTool({"ldd", file.string()});
    if (!r.spawn_status.ok() || !r.exited) {
      return ToolFailed(r, "cannot list the libraries " + file.string() + " needs with ldd",
                        "install libc-bin");
    }
    if (r.exit_code != 0) continue;  // not a dynamic ELF file: nothing to bundle
    std::istringstream lines(r.out);
    for (std::string line; std::getline(lines, line);) {
      // "\tlibzip.so.4 => /lib/x86_64-linux-gnu/libzip.so.4 (0x...)"
      std::size_t arrow = line.find(" => ");
      if (arrow == std::string::npos) continue;  // the vDSO and the loader itself
      const std::string soname = util::Trim(line.substr(0, arrow));
      std::string rest = line.substr(arrow + 4);
      if (OnEveryNode(soname) || provided.count(soname) > 0 ||
          provided.count(Unversioned(soname)) > 0) {
        continue;
      }
      const std::string by = file.filename().string();
      if (auto it = seen.find(soname); it != seen.end()) {
        std::vector<std::string>& users = out[it->second].needed_by;
        if (std::find(users.begin(), users.end(), by) == users.end()) users.push_back(by);
        continue;
      }
      if (rest.rfind("not found", 0) == 0) {
        return Status(Code::kInputError,
                      file.string() + " needs " + soname +
                          ", which this machine's dynamic loader does not find; install it or "
                          "add its folder to LD_LIBRARY_PATH, then ship again");
      }
      rest = rest.substr(0, rest.rfind(" ("));
      seen[soname] = out.size();
      out.push_back({soname, fs::path(rest), {by}});
    }
  }
  return out;
}

void Floor::Raise(const Floor& other) {
  for (auto [mine, theirs] : {std::pair{&glibc, &other.glibc}, std::pair{&glibcxx, &other.glibcxx},
                              std::pair{&cxxabi, &other.cxxabi}}) {
    if (!theirs->empty() && (mine->empty() || CompareVersions(*theirs, *mine) > 0)) *mine = *theirs;
  }
}

Json Floor::ToJson() const { return {{"glibc", glibc}, {"glibcxx", glibcxx}, {"cxxabi", cxxabi}}; }

std::string Floor::Describe() const {
  std::string out = glibc.empty() ? "" : "glibc " + glibc;
  if (!glibcxx.empty()) out += (out.empty() ? "" : " and ") + ("libstdc++ with GLIBCXX_" + glibcxx);
  return out.empty() ? "nothing of glibc or libstdc++ in particular" : out;
}

Result<Floor> FloorOfFiles(const std::vector<fs::path>& files) {
  Floor floor;
  for (const fs::path& f : files) {
    auto one = FloorOf(f);
    if (!one.ok()) return one.status();
    floor.Raise(*one);
  }
  return floor;
}

Result<Floor> FloorOfPackage(const std::vector<fs::path>& files) {
  auto needed = LibrariesToBundle(files, {"libstagekit.so"});
  if (!needed.ok()) return needed.status();
  std::vector<fs::path> all = files;
  for (const NeededLibrary& lib : *needed) all.push_back(lib.path);
  return FloorOfFiles(all);
}

int CompareVersions(const std::string& a, const std::string& b) {
  std::istringstream sa(a), sb(b);
  for (;;) {
    std::string pa, pb;
    const bool more_a = static_cast<bool>(std::getline(sa, pa, '.'));
    const bool more_b = static_cast<bool>(std::getline(sb, pb, '.'));
    if (!more_a && !more_b) return 0;
    const long na = more_a ? std::strtol(pa.c_str(), nullptr, 10) : 0;
    const long nb = more_b ? std::strtol(pb.c_str(), nullptr, 10) : 0;
    if (na != nb) return na < nb ? -1 : 1;
  }
}

Result<Floor> FloorOf(const fs::path& file) {
  util::ChildResult r = RunTool({"objdump", "-p", file.string()});
  if (!r.spawn_status.ok() || !r.exited || r.exit_code != 0) {
    return ToolFailed(r, "cannot read the symbol versions of " + file.string() + " with objdump",
                      "install binutils");
  }
  Floor floor;
  std::istringstream words(r.out);
  for (std::string w; words >> w;) {
    for (auto [tag, field] :
         {std::pair{"GLIBCXX_", &floor.glibcxx}, std::pair{"CXXABI_", &floor.cxxabi},
          std::pair{"GLIBC_", &floor.glibc}}) {
      const std::string t = tag;
      if (w.rfind(t, 0) != 0) continue;
      const std::string v = w.substr(t.size());
      if (!v.empty() && std::isdigit(static_cast<unsigned char>(v[0])) &&
          (field->empty() || CompareVersions(v, *field) > 0)) {
        *field = v;
      }
      break;
    }
  }
  return floor;
}

Result<std::string> PrepareElf(const fs::path& file, bool strip, const std::string& runpath) {
  auto tmp = TempCopy::Make(file);
  if (!tmp.ok()) return tmp.status();
  if (strip) {
    util::ChildResult r =
        RunTool({"objcopy", "--strip-debug", file.string(), tmp->path().string()});
    if (!r.spawn_status.ok() || !r.exited || r.exit_code != 0)
      return ToolFailed(r, "cannot strip debug info from " + file.string(), "install binutils");
  } else {
    std::error_code ec;
    fs::copy_file(file, tmp->path(), fs::copy_options::overwrite_existing, ec);
    if (ec) return Status(Code::kInputError, "cannot read " + file.string() + ": " + ec.message());
  }
  util::ChildResult r = RunTool({"patchelf", "--set-rpath", runpath, tmp->path().string()});
  if (!r.spawn_status.ok() || !r.exited || r.exit_code != 0) {
    return ToolFailed(r, "cannot set the run path of " + file.string() + " with patchelf",
                      "install patchelf (Debian: apt-get install patchelf)");
  }
  auto bytes = util::ReadFile(tmp->path(), std::numeric_limits<std::uint64_t>::max());
  if (!bytes.ok()) return bytes.status();
  if (bytes->empty()) return Status(Code::kInternal, "patchelf wrote nothing for " + file.string());
  return std::move(bytes).value();
}

std::string FloorFileText(const Floor& floor) {
  return "glibc " + floor.glibc + "\nglibcxx " + floor.glibcxx + "\ncxxabi " + floor.cxxabi + "\n";
}

std::string LauncherScript() {
  std::string script = R"SH(#!/bin/sh
# stagekit package launcher: checks that this node's C library and C++ runtime
# are at least what the package was built against (the floor file beside the
# package's bin folder, written by `stagekit ship`), then runs the shipped
# stagekit. Exit @TOO_OLD@ when the node is too old: the dynamic loader's own error
# would name one symbol and not what to do.
here=$(cd "$(dirname "$0")/.." && pwd)
floor="$here/floor"
older() {  # older A B: version A is older than B
  [ "$1" = "$2" ] && return 1
  first=$(printf '%s\n%s\n' "$1" "$2" | sort -t. -k1,1n -k2,2n -k3,3n -k4,4n | head -n 1)
  [ "$first" = "$1" ]
}
need() { sed -n "s/^$1 //p" "$floor" 2>/dev/null; }
glibc=$(need glibc)
have=$(getconf GNU_LIBC_VERSION 2>/dev/null | sed 's/^glibc //')
if [ -n "$glibc" ] && [ -n "$have" ] && older "$have" "$glibc"; then
  echo "stagekit: this package needs glibc $glibc or newer, but this node has glibc $have; ship it from a machine with glibc $have or older, or run it on a newer node image" >&2
  exit @TOO_OLD@
fi
glibcxx=$(need glibcxx)
if [ -n "$glibcxx" ]; then
  lib=$( (/sbin/ldconfig -p || ldconfig -p) 2>/dev/null | sed -n 's/^.*libstdc++\.so\.6 .*=> //p' | head -n 1)
  if [ -n "$lib" ] && ! grep -q "GLIBCXX_$glibcxx" "$lib" 2>/dev/null; then
    echo "stagekit: this package needs libstdc++ with GLIBCXX_$glibcxx (GCC's C++ runtime), but this node's $lib is older; ship it from a machine with an older compiler, or run it on a newer node image" >&2
    exit @TOO_OLD@
  fi
fi
exec "$here/bin/stagekit" "$@"
)SH";
  const std::string code = std::to_string(static_cast<int>(util::kNodeTooOld));
  for (std::size_t at; (at = script.find("@TOO_OLD@")) != std::string::npos;) {
    script.replace(at, 9, code);
  }
  return script;
}

}  // namespace stagekit::deploy
