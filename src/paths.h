// Locations of an installation's pieces. Internal.
#ifndef STAGEKIT_SRC_PATHS_H_
#define STAGEKIT_SRC_PATHS_H_

#include <filesystem>

namespace stagekit::internal {

// The directory holding libstagekit.so, and the file it was loaded from (by
// its soname, libstagekit.so.N, when the loader found it through a binary).
std::filesystem::path LibraryDir();
std::filesystem::path LibraryPath();
// The stagekit binary for child processes: $STAGEKIT_RUNNER, the current
// executable when it is stagekit, the one installed beside this library, else
// `stagekit` from PATH.
std::filesystem::path DefaultRunner();

}  // namespace stagekit::internal

#endif  // STAGEKIT_SRC_PATHS_H_
