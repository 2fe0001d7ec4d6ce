// Locations of an installation's pieces. Internal.
#ifndef STAGEKIT_SRC_PATHS_H_
#define STAGEKIT_SRC_PATHS_H_

#include <filesystem>

namespace stagekit::internal {

// The directory holding libstagekit.so.
std::filesystem::path LibraryDir();
// The stagekit binary for child processes: $STAGEKIT_RUNNER, the current
// executable when it is stagekit, the one installed beside this library, else
// `stagekit` from PATH.
std::filesystem::path DefaultRunner();

}  // namespace stagekit::internal

#endif  // STAGEKIT_SRC_PATHS_H_
