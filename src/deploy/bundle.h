// A package that runs on any Linux node: the shared libraries its binaries
// and stage libraries need beyond what every node has are bundled into it,
// every shipped ELF file looks for libraries only inside the package ($ORIGIN
// run paths, set with patchelf), and the oldest C library and libstdc++ it
// can run with (its floor) is recorded and checked by a launcher before
// anything is loaded on the node.
#ifndef STAGEKIT_DEPLOY_BUNDLE_H_
#define STAGEKIT_DEPLOY_BUNDLE_H_

#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "stagekit/stage.h"
#include "stagekit/status.h"

namespace stagekit::deploy {

// Libraries never bundled. Those every Linux node has, as the manylinux
// policy (PEP 600) lists them: glibc's own (libc, libm, libdl, librt,
// libpthread, libutil, libresolv, libnsl, the loader), libstdc++ and libgcc_s;
// the GPU driver's (libcuda, libnvidia-ml), which must match the node's
// kernel module; and Ray's libray_api.so, which comes from the node's Ray.
bool OnEveryNode(const std::string& soname);
// The allowlist above, for messages and docs.
const std::vector<std::string>& NodeLibraries();

struct NeededLibrary {
  std::string soname;          // what the ELF files ask for: "libzip.so.4"
  std::filesystem::path path;  // where this machine's loader found it
  // The shipped files that load it, directly or through another library.
  std::vector<std::string> needed_by;
};

// The libraries `files` load, directly or through each other, as this
// machine's dynamic loader resolves them (ldd), less OnEveryNode ones and
// `provided` (sonames the package ships itself, or their unversioned form:
// "libstagekit.so" stands for every libstagekit.so.N), in a stable order.
// kInputError naming the file and library when one is not found here.
Result<std::vector<NeededLibrary>> LibrariesToBundle(
    const std::vector<std::filesystem::path>& files, const std::set<std::string>& provided);

// The newest symbol versions a set of ELF files asks of glibc (GLIBC_2.34),
// libstdc++ (GLIBCXX_3.4.30) and its ABI (CXXABI_1.3.13): the node must
// have at least these. Versions are "" when nothing asks.
struct Floor {
  std::string glibc, glibcxx, cxxabi;
  void Raise(const Floor& other);
  Json ToJson() const;
  // "glibc 2.34 and libstdc++ with GLIBCXX_3.4.30" (what is known of it).
  std::string Describe() const;
};
// Reads `file`'s version references (objdump -p).
Result<Floor> FloorOf(const std::filesystem::path& file);
// The floor of all of `files`.
Result<Floor> FloorOfFiles(const std::vector<std::filesystem::path>& files);
// The floor of `files` and of every library they would bring along (as
// LibrariesToBundle finds them): what a package of them needs of a node.
Result<Floor> FloorOfPackage(const std::vector<std::filesystem::path>& files);

// <0, 0, >0 as dotted version `a` is older than, the same as or newer than `b`.
int CompareVersions(const std::string& a, const std::string& b);

// `file`'s bytes as the package ships them: debug info stripped when
// `strip` (objcopy), and its run path set to `runpath` (patchelf), so
// that it finds libraries in the package and nowhere on the build machine.
Result<std::string> PrepareElf(const std::filesystem::path& file, bool strip,
                               const std::string& runpath);

// The package's entry point: a POSIX shell script that compares the node's
// glibc and libstdc++ with `floor` and, when the node is too old, exits 19
// (util::kNodeTooOld)
// with one line naming both versions (rather than the dynamic loader's
// error); else it runs the shipped stagekit with its arguments. It reads the
// floor from the file beside it (kFloorFile), so it is the same everywhere.
std::string LauncherScript();
// The floor as the launcher reads it: "glibc 2.34\nglibcxx 3.4.30\ncxxabi 1.3.13\n".
std::string FloorFileText(const Floor& floor);

inline constexpr const char* kLauncher = ".stagekit/bin/stagekit-launch";
inline constexpr const char* kFloorFile = ".stagekit/floor";

}  // namespace stagekit::deploy

#endif  // STAGEKIT_DEPLOY_BUNDLE_H_
